"""The Gemini API key and the google-genai client."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ecliptic.config import Settings
from ecliptic.gemini.errors import GeminiKeyUnavailable

if TYPE_CHECKING:
    from google import genai

logger = logging.getLogger(__name__)

# JSON secrets may name the key with any of these fields; a plain-text secret is the key.
_SECRET_KEY_FIELDS = ("apiKey", "api_key", "GEMINI_API_KEY")


def resolve_api_key(settings: Settings) -> str | None:
    """Return the Gemini API key from the settings, else from Secrets Manager, else None.

    The secret contains the key as plain text or as JSON `{"apiKey": "..."}`. The key is never
    logged.

    Raises
    ------
    GeminiKeyUnavailable
        The secret cannot be read or contains no key.
    """
    if settings.gemini_api_key:
        return settings.gemini_api_key
    if not settings.gemini_api_key_secret_arn:
        return None

    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        secret = parameters.get_secret(settings.gemini_api_key_secret_arn)
    except GetParameterError as error:
        raise GeminiKeyUnavailable(
            "the Gemini API key secret could not be read", detail=str(error)
        ) from error
    if isinstance(secret, bytes):
        secret = secret.decode("utf-8", errors="replace")
    key = _key_from_secret(str(secret or ""))
    if not key:
        raise GeminiKeyUnavailable("the Gemini API key secret contains no key")
    return key


def _key_from_secret(secret: str) -> str | None:
    text = secret.strip()
    if not text.startswith("{"):
        return text or None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    for field in _SECRET_KEY_FIELDS:
        value = data.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def make_client(api_key: str, settings: Settings) -> genai.Client:
    """Create a Gemini Developer API client; `gemini_base_url` replaces the endpoint when set.

    The client does no retries of its own: `ecliptic.gemini.retry` retries with a time budget.
    """
    from google import genai
    from google.genai import types

    options = None
    if settings.gemini_base_url:
        options = types.HttpOptions(base_url=settings.gemini_base_url)
    return genai.Client(vertexai=False, api_key=api_key, http_options=options)
