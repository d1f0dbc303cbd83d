"""What a Responses request must satisfy beyond its field types (CreateResponse in the OpenAPI contract). API layer.

Each rule is a 400 naming the field, raised before anything is billed or sent upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

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


MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # the contract's Metadata schema
_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "an array"}


def check_metadata(metadata: Mapping[str, object] | None) -> None:
    """Metadata: at most 16 pairs, keys of at most 64 characters, string values of at most 512."""
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        _bad_metadata(f"it has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            _bad_metadata(f"the key '{key[:20]}...' has {len(key)} characters; keys have at most {MAX_METADATA_KEY}")
        if not isinstance(value, str):
            kind = "null" if value is None else _JSON_TYPES.get(type(value), "not a string")
            _bad_metadata(f"the value of '{key}' is {kind}; values are strings")
        if len(value) > MAX_METADATA_VALUE:
            _bad_metadata(f"the value of '{key}' has {len(value)} characters; values have at most {MAX_METADATA_VALUE}")


def _bad_metadata(reason: str) -> NoReturn:
    raise InvalidRequest(f"Invalid value for 'metadata': {reason}.", param="metadata", code="invalid_value")


def check_tool_choice(function: str | None, required: bool, tools: Sequence[str]) -> None:
    """tool_choice names one of `tools` (`function`), or is "required" (`required`) with tools to choose from.

    OpenAI answers an unknown name with a 400 ("Tool choice 'x' not found in 'tools' parameter", reported in
    openai/openai-agents-python#1303); behind the gateway each provider refused or ignored it in its own way."""
    if function is not None and function not in tools:
        offered = ", ".join(f"'{name}'" for name in tools) if tools else "no functions"
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': the function '{function}' is not in 'tools' (which has {offered}). "
            "Name one of them, or add the function to 'tools'.",
            param="tool_choice",
            code="invalid_value",
        )
    if required and not tools:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'required' needs at least one function in 'tools'.",
            param="tool_choice",
            code="invalid_value",
        )
