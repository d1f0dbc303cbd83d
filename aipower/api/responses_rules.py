"""What a Responses request must satisfy beyond its field types (CreateResponse in the OpenAPI contract). API layer.

Each rule is a 400 naming the field, raised before anything is billed or sent upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

from aipower.errors import InvalidRequest


def check_input(value: str | Sequence[object], previous_response_id: str | None) -> None:
    """An empty `input` ("" or []) is a 400 unless previous_response_id supplies the conversation.

    The contract sets no minimum (InputParam has no minItems; `input` is even optional in CreateResponse), so an empty
    input is not malformed as such. With previous_response_id the stored chain is the conversation and the model
    answers it as it stands, e.g. to go on after a response cut by max_output_tokens: that stays valid, and "" then
    adds no empty user turn (providers such as Anthropic refuse empty text). Without it, every provider would get
    an empty conversation and answer with a 400 of its own wording, after the call was held and routed.
    """
    if value or previous_response_id is not None:
        return
    kind = "an empty string" if isinstance(value, str) else "an empty list"
    raise InvalidRequest(
        f"Invalid value for 'input': {kind}, so there is nothing for the model to answer. Send text or at least one "
        "input item, or give previous_response_id to continue a stored conversation.",
        param="input",
        code="invalid_value" if isinstance(value, str) else "empty_array",
    )
