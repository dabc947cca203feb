"""Base64 JSON codec for the x402 headers.

x402 carries JSON in base64 header values (`PAYMENT-REQUIRED`, `X-PAYMENT`,
`PAYMENT-SIGNATURE`, `X-PAYMENT-RESPONSE`, `PAYMENT-RESPONSE`). The specification uses
standard base64 with padding. Clients in the wild also send the URL-safe alphabet or drop
the padding, so decoding accepts both alphabets, with or without padding, and rejects
everything else instead of skipping unknown characters.

This module imports only the standard library, because the 402 path uses it on every
unpaid request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

# Maximum length of an encoded header value, in characters. An exact-EVM payment is about
# 1.5 KB encoded, so 8 KiB leaves room for extensions while bounding the work per request.
MAX_HEADER_CHARS = 8 * 1024

_STANDARD_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL_SAFE_BASE64 = re.compile(r"[A-Za-z0-9\-_]*={0,2}")
_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


class HeaderDecodeError(ValueError):
    """A header value that is not base64-encoded JSON within the size cap."""


def encode_json_header(value: Any) -> str:
    """Encode `value` as compact JSON in standard, padded base64."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode_base64(text: str, *, max_chars: int = MAX_HEADER_CHARS) -> bytes:
    """Decode standard or URL-safe base64, with or without padding.

    Raises
    ------
    HeaderDecodeError
        When `text` is longer than `max_chars`, mixes the two alphabets, contains any other
        character (whitespace included), has a length no padding can fix, or is not in the
        canonical form that an encoder produces (non-zero unused bits).
    """
    if len(text) > max_chars:
        raise HeaderDecodeError(f"header value is longer than {max_chars} characters")
    if not text:
        raise HeaderDecodeError("header value is empty")

    if _STANDARD_BASE64.fullmatch(text):
        standard = text
    elif _URL_SAFE_BASE64.fullmatch(text):
        standard = text.translate(_URL_SAFE_TO_STANDARD)
    else:
        raise HeaderDecodeError("header value is not base64 (standard or URL-safe alphabet)")

    unpadded = standard.rstrip("=")
    if len(unpadded) % 4 == 1:
        raise HeaderDecodeError("header value has an invalid base64 length")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    if len(standard) != len(unpadded) and standard != padded:
        raise HeaderDecodeError("header value has wrong base64 padding")

    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise HeaderDecodeError("header value is not valid base64") from exc

    # Two encodings differing only in the unused low bits decode to the same bytes. Accept
    # only the canonical one so that a header has one spelling.
    if base64.b64encode(raw).decode("ascii") != padded:
        raise HeaderDecodeError("header value is not canonical base64")
    return raw


def decode_json_header(text: str, *, max_chars: int = MAX_HEADER_CHARS) -> dict[str, Any]:
    """Decode a base64 header value that carries a JSON object.

    Duplicate keys, `NaN` and `Infinity` are rejected, so that every JSON parser reads the
    same object from the header.

    Raises
    ------
    HeaderDecodeError
        When the value is not base64 (see `decode_base64`), not UTF-8, not JSON, or not a
        JSON object.
    """
    raw = decode_base64(text, max_chars=max_chars)
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise HeaderDecodeError("header value does not decode to UTF-8 text") from exc
    except ValueError as exc:  # json.JSONDecodeError and the hooks' errors
        raise HeaderDecodeError(f"header value does not decode to JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise HeaderDecodeError("header value decodes to JSON that is not an object")
    return value


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
