"""Parse JSON request bodies into pydantic models, with errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ecliptic.errors import InvalidRequest

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_json_body(body: str | bytes | None, model: type[ModelT], empty_hint: str) -> ModelT:
    """Validate a JSON object body as `model`.

    Raises
    ------
    InvalidRequest
        The body is empty (the message adds `empty_hint`), not JSON, not an object, or a field
        is missing or out of range; `field` names the first field at fault.
    """
    if not body:
        raise InvalidRequest(f"The request body is empty; {empty_hint}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}.") from error
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise invalid_request_from(error) from error


def invalid_request_from(error: ValidationError) -> InvalidRequest:
    """Turn the first pydantic error into an InvalidRequest naming its field path."""
    first = error.errors()[0]
    location = field_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Field `{location}`: {message}.", field=location)


def field_path(location: tuple[Any, ...]) -> str:
    """Format a pydantic error location as `videos[0].url`."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"
