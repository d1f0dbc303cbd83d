"""Pydantic validation errors turned into one OpenAI-style 400 with a `param` path. API layer."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from aipower.errors import InvalidRequest

_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def invalid_request(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object "
            "(check quoting, commas and the Content-Type).",
            code="invalid_json",
        )
    param = param_path(error["loc"])
    if not param:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_request_body")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        param = f"{param}.{ctx.get('discriminator', '').strip(chr(39))}"  # the field at fault, e.g. messages[0].role
        return InvalidRequest(
            f"Invalid value for '{param}': {ctx.get('tag')!r}. Supported values are: {ctx.get('expected_tags')}.",
            param=param,
            code="invalid_value",
        )
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param, code="invalid_value")


def param_path(loc: tuple[int | str, ...]) -> str:
    """`('messages', 0, 'user', 'content', 'str')` -> `messages[0].content` (union branch names dropped)."""
    path = ""
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif _is_branch(item) or (isinstance(previous, int) and _is_tag(item)):
            pass
        else:
            path += f".{item}" if path else item
        previous = item
    return path


def _is_branch(item: str) -> bool:
    return item in _TYPE_NAMES or "[" in item or item[:1].isupper()


def _is_tag(item: str) -> bool:
    return item in {"system", "developer", "user", "assistant", "tool", "text", "image_url"}


def require_finite(value: Any, param: str) -> None:
    """A value kept as JSON (a field forwarded as it came, a tool's parameter schema): the parser lets NaN and
    Infinity through, which JSON has no number for, and they would reach the provider as null. 400 instead."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(
            f"Invalid value for '{param}': NaN and Infinity are not JSON numbers.", param=param, code="invalid_value"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            require_finite(item, f"{param}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            require_finite(item, f"{param}[{index}]")
