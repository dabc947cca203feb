"""The OpenAPI document of the API and the Swagger UI page that renders it.

Powertools generates the paths, path parameters and responses from the routes in
`functions/api/app.py`, using the `responses` declared here. It cannot see what the
handlers read by hand: the request bodies (JSON, or multipart parsed by `ecliptic.forms`),
the query string of `GET /jobs` and the payment headers. `openapi_document` adds those, with
their schemas and examples.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import BaseModel

from ecliptic.api_models import (
    AUDIO_ASSET_EXAMPLE,
    JOB_ID_EXAMPLE,
    VIDEO_ASSET_EXAMPLE,
    AssetView,
    ErrorBody,
    JobList,
    JobView,
    PaymentChallenge,
)
from ecliptic.ids import ASSET_ID_PATTERN, JOB_ID_PATTERN
from ecliptic.models import (
    DURATION_MAX_SECONDS,
    DURATION_MIN_SECONDS,
    PROMPT_MAX_CHARS,
    USERNAME_MAX_CHARS,
    MontageAccepted,
    MontageRequest,
    OutputFormat,
)
from ecliptic.uploads import UploadRequest, UploadTicket

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

TITLE = "Ecliptic"
# The version of the API contract, not of the package.
API_VERSION = "1.0.0"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
SWAGGER_UI_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.28.0"

DESCRIPTION = """\
Beat-synced video montages, paid per request with [x402](https://www.x402.org/).

`POST /montages` without a payment returns `402` with the payment terms in three forms:
the x402 version 1 body, the `PAYMENT-REQUIRED` header (version 2, base64 JSON) and a
`WWW-Authenticate: x402 ...` challenge. Sign the payment with an x402 client and send the
same request again with `X-PAYMENT` (version 1) or `PAYMENT-SIGNATURE` (version 2). The
response is `202` with the job id. Then poll `GET /jobs/{jobId}` until `status` is
`succeeded` or `failed`.

Every error response except `402` has the body `{"error": {"code", "message", "field"}}`.
`field` names the request field at fault when there is one.
"""

TAGS = [
    {"name": "montages", "description": "Paid montage requests"},
    {"name": "jobs", "description": "Job status, progress and output"},
    {"name": "assets", "description": "Uploads and staged media"},
    {"name": "documentation", "description": "This document and its viewer"},
]

JobId = Annotated[
    str,
    Path(
        description="Job id from the 202 body of `POST /montages`. An unknown or malformed "
        "id gets 404.",
        pattern=JOB_ID_PATTERN.pattern,
        examples=[JOB_ID_EXAMPLE],
    ),
]
AssetId = Annotated[
    str,
    Path(
        description="Asset id from `POST /montages` or `POST /uploads`. An unknown or "
        "malformed id gets 404.",
        pattern=ASSET_ID_PATTERN.pattern,
        examples=[VIDEO_ASSET_EXAMPLE],
    ),
]


# ----- responses ------------------------------------------------------------------------

_RETRY_AFTER = {
    "description": "seconds to wait before sending the same request again",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def _json(
    description: str,
    model: type[BaseModel],
    headers: dict[str, Any] | None = None,
    examples: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content: dict[str, Any] = {"model": model}
    if examples:
        content["examples"] = examples
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": content},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, code: str, message: str, field: str | None = None) -> dict:
    detail = {"code": code, "message": message}
    if field:
        detail["field"] = field
    return _json(description, ErrorBody, examples={code: {"value": {"error": detail}}})


_NOT_FOUND_JOB = _error(
    "No job has this id.",
    "not_found",
    f"Job {JOB_ID_EXAMPLE} does not exist.",
    "jobId",
)
_NOT_FOUND_ASSET = _error(
    "No asset has this id.",
    "not_found",
    f"Asset {VIDEO_ASSET_EXAMPLE} does not exist.",
    "assetId",
)

CREATE_MONTAGE_RESPONSES: dict[int, Any] = {
    202: _json(
        "Paid and queued. A repeat of the same request with the same payment returns the "
        "same job.",
        MontageAccepted,
        headers={
            "PAYMENT-RESPONSE": {
                "description": "x402 version 2 settlement result, base64 JSON "
                "`{success, transaction, network, payer}`; sent when paid with "
                "`PAYMENT-SIGNATURE`",
                "schema": {"type": "string"},
            },
            "X-PAYMENT-RESPONSE": {
                "description": "the same result for a payment sent with `X-PAYMENT` "
                "(x402 version 1)",
                "schema": {"type": "string"},
            },
        },
        examples={
            "accepted": {
                "value": {
                    "jobId": JOB_ID_EXAMPLE,
                    "audioAssetId": AUDIO_ASSET_EXAMPLE,
                    "videoAssetIds": [VIDEO_ASSET_EXAMPLE],
                    "status": "queued",
                }
            }
        },
    ),
    400: _error(
        "The body is malformed, a field is out of range, an asset is not usable or a file "
        "is not media.",
        "invalid_request",
        "Field `videos`: List should have at least 1 item after validation, not 0.",
        "videos",
    ),
    402: _json(
        "Payment required: no payment was sent, or it was rejected (`reason` says why). The "
        "body is the x402 version 1 challenge, so `error` is a string here.",
        PaymentChallenge,
        headers={
            "PAYMENT-REQUIRED": {
                "description": "x402 version 2 challenge, base64 JSON "
                "`{x402Version: 2, error, resource, accepts}`",
                "required": True,
                "schema": {"type": "string"},
            },
            "WWW-Authenticate": {
                "description": 'RFC 9110 challenge: `x402 realm="<url>", scheme="exact", '
                'network="eip155:8453", asset="0x...", payTo="0x...", amount="20000"`',
                "required": True,
                "schema": {"type": "string", "pattern": "^x402 "},
            },
        },
        examples={
            "payment_required": {
                "value": {
                    "x402Version": 1,
                    "error": "This request needs a payment: send a PAYMENT-SIGNATURE "
                    "(x402 version 2) or X-PAYMENT (x402 version 1) header.",
                    "accepts": [
                        {
                            "scheme": "exact",
                            "network": "base",
                            "maxAmountRequired": "20000",
                            "resource": "https://api.example.com/montages",
                            "description": "One beat-synced video montage",
                            "mimeType": "application/json",
                            "payTo": "0xFdeAE251395004654FBd741824D08Df95315Ed6c",
                            "maxTimeoutSeconds": 60,
                            "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
                            "extra": {"name": "USD Coin", "version": "2"},
                        }
                    ],
                    "reason": "payment_required",
                }
            }
        },
    ),
    404: _error(
        "An `assetId` in the body does not exist.",
        "not_found",
        f"Asset {AUDIO_ASSET_EXAMPLE} in `audio` does not exist.",
        "audio.assetId",
    ),
    409: {
        **_error(
            "The payment was used for a different body (`payment_reused`), or another request "
            "with it is still running (`payment_in_progress`, with Retry-After).",
            "payment_reused",
            "This payment was already used for a different request body; sign a new payment "
            "for this one.",
        ),
        "headers": {"Retry-After": _RETRY_AFTER},
    },
    413: _error(
        "The body is larger than the API accepts; send large files by URL or through "
        "`POST /uploads`.",
        "payload_too_large",
        "The request body is 5000000 bytes; bodies are limited to 4500000 bytes.",
    ),
    503: {
        **_error(
            "The settlement is not confirmed yet, or a dependency failed. Send the same "
            "request with the same payment again after Retry-After seconds; a payment is "
            "settled at most once.",
            "settlement_pending",
            "Settlement of this payment is not confirmed yet. Retry the same request with the "
            "same payment in a few seconds; do not sign a new payment.",
        ),
        "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
    },
}

GET_JOB_RESPONSES: dict[int, Any] = {
    200: _json("The job.", JobView),
    404: _NOT_FOUND_JOB,
}

LIST_JOBS_RESPONSES: dict[int, Any] = {
    200: _json("A page of jobs, newest first.", JobList),
    400: _error(
        "`limit`, `cursor` or `username` is invalid.",
        "invalid_request",
        "`limit` must be a whole number from 1 to 100.",
        "limit",
    ),
}

CREATE_UPLOAD_RESPONSES: dict[int, Any] = {
    201: _json(
        "PUT the file to `uploadUrl` with exactly `headers` before `expiresAt`.",
        UploadTicket,
        examples={
            "video": {
                "value": {
                    "assetId": VIDEO_ASSET_EXAMPLE,
                    "uploadUrl": "https://0123456789abcdef0123456789abcdef.r2."
                    "cloudflarestorage.com/ecliptic-media/uploads/...",
                    "method": "PUT",
                    "headers": {"Content-Type": "video/mp4"},
                    "expiresAt": "2026-12-04T21:00:00Z",
                    "maxBytes": 524288000,
                }
            }
        },
    ),
    400: _error(
        "A field is missing or invalid, `size` is over the cap for the kind, or the type "
        "is not media of that kind.",
        "invalid_request",
        "`size` is 600000000 bytes; video files may be at most 524288000 bytes.",
        "size",
    ),
    413: _error(
        "The body is larger than the API accepts.",
        "payload_too_large",
        "The request body is 5000000 bytes; bodies are limited to 4500000 bytes.",
    ),
}

GET_ASSET_RESPONSES: dict[int, Any] = {
    200: _json("The asset.", AssetView),
    404: _NOT_FOUND_ASSET,
}

OPENAPI_RESPONSES: dict[int, Any] = {
    200: {
        "description": "This document (OpenAPI 3.1).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}

DOCS_RESPONSES: dict[int, Any] = {
    200: {
        "description": "Swagger UI for this document. The page loads Swagger UI from a CDN.",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


# ----- what Powertools cannot see -------------------------------------------------------

_MONTAGE_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["audio", "videos"],
    "properties": {
        "audio": {
            "type": "string",
            "format": "binary",
            "description": "The song: a file (`audio/*` or `video/*`), or a JSON media "
            'descriptor such as `{"url": "https://..."}` or `{"assetId": "aud_..."}`.',
        },
        "videos": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "format": "binary"},
            "description": "The clips, in order: repeat the field. Each is a file "
            "(`video/*` or GIF) or a JSON media descriptor.",
        },
        "prompt": {"type": "string", "maxLength": PROMPT_MAX_CHARS},
        "username": {"type": "string", "maxLength": USERNAME_MAX_CHARS},
        "format": {"type": "string", "enum": [item.value for item in OutputFormat]},
        "durationSeconds": {
            "type": "number",
            "minimum": DURATION_MIN_SECONDS,
            "maximum": DURATION_MAX_SECONDS,
        },
        "callbackUrl": {"type": "string", "maxLength": 2048},
    },
}

_MONTAGE_EXAMPLES = {
    "urls": {
        "summary": "Media by URL",
        "value": {
            "audio": {"url": "https://cdn.example.com/song.mp3"},
            "videos": [
                {"url": "https://cdn.example.com/clip-1.mp4"},
                {"url": "https://cdn.example.com/clip-2.mov"},
            ],
            "prompt": "Dreamy sunrise over the city skyline.",
            "username": "daydreams-user",
        },
    },
    "assets": {
        "summary": "Assets from an earlier job or upload",
        "value": {
            "audio": {"assetId": AUDIO_ASSET_EXAMPLE},
            "videos": [{"assetId": VIDEO_ASSET_EXAMPLE}],
            "format": "portrait",
            "durationSeconds": 15,
        },
    },
}

_PAYMENT_HEADERS = [
    {
        "name": "X-PAYMENT",
        "in": "header",
        "required": False,
        "description": "x402 version 1 payment: base64 JSON signed by an x402 client from the "
        "402 body.",
        "schema": {"type": "string"},
    },
    {
        "name": "PAYMENT-SIGNATURE",
        "in": "header",
        "required": False,
        "description": "x402 version 2 payment: base64 JSON signed by an x402 client from the "
        "`PAYMENT-REQUIRED` header.",
        "schema": {"type": "string"},
    },
]

_LIST_JOBS_QUERY = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "jobs per page",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "the `cursor` of the previous page, with the same `username`",
        "schema": {"type": "string"},
    },
    {
        "name": "username",
        "in": "query",
        "required": False,
        "description": "list only the jobs of this username (exact match)",
        "schema": {"type": "string", "minLength": 1, "maxLength": USERNAME_MAX_CHARS},
    },
]


def _add_model(schemas: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    """Add `model` and the models it uses to `schemas`; return a reference to it."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = {**schema.pop("$defs", {}), model.__name__: schema}
    for name, definition in definitions.items():
        if name in schemas and schemas[name] != definition:
            raise ValueError(f"two different component schemas are named {name}")
        schemas[name] = definition
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _add_request_details(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    paths = document["paths"]

    montage = paths["/montages"]["post"]
    montage["requestBody"] = {
        "required": True,
        "description": "JSON, or multipart/form-data with files (the whole body at most "
        "4,500,000 bytes by default). The same fields and checks apply to both.",
        "content": {
            "application/json": {
                "schema": _add_model(schemas, MontageRequest),
                "examples": _MONTAGE_EXAMPLES,
            },
            "multipart/form-data": {"schema": _MONTAGE_FORM_SCHEMA},
        },
    }
    montage["parameters"] = [*montage.get("parameters", []), *_PAYMENT_HEADERS]

    upload = paths["/uploads"]["post"]
    upload["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": _add_model(schemas, UploadRequest),
                "examples": {
                    "video": {
                        "value": {
                            "kind": "video",
                            "filename": "clip.mp4",
                            "contentType": "video/mp4",
                            "size": 7340032,
                        }
                    }
                },
            }
        },
    }

    listing = paths["/jobs"]["get"]
    listing["parameters"] = [*listing.get("parameters", []), *_LIST_JOBS_QUERY]


def _prune_components(document: dict[str, Any]) -> None:
    """Drop component schemas nothing refers to, such as Powertools' validation errors."""
    schemas = document.get("components", {}).get("schemas", {})
    used: set[str] = set()
    pending = [{key: value for key, value in document.items() if key != "components"}]
    while pending:
        text = json.dumps(pending.pop())
        for name in schemas:
            if name not in used and f'"#/components/schemas/{name}"' in text:
                used.add(name)
                pending.append(schemas[name])
    for name in set(schemas) - used:
        del schemas[name]


@cache
def _base_document(app: APIGatewayHttpResolver) -> dict[str, Any]:
    document = json.loads(
        app.get_openapi_json_schema(title=TITLE, version=API_VERSION, description=DESCRIPTION)
    )
    document["tags"] = TAGS
    _add_request_details(document)
    _prune_components(document)
    return document


def openapi_document(app: APIGatewayHttpResolver, server_url: str | None = None) -> dict:
    """Return the OpenAPI 3.1 document of `app`'s routes.

    The document is built once per resolver. `server_url` (the base URL the request came
    in on) replaces Powertools' relative `/` as the only entry of `servers`.

    Raises
    ------
    KeyError
        A route that this module describes (`POST /montages`, `POST /uploads`, `GET /jobs`)
        is missing from `app`.
    ValueError
        Two different models would share a component schema name.
    """
    document = copy.deepcopy(_base_document(app))
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def swagger_ui_html(spec_url: str = OPENAPI_PATH) -> str:
    """Return a Swagger UI page for the document at `spec_url`.

    The browser loads Swagger UI itself from the jsDelivr CDN, so the page needs no assets
    from this API.
    """
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{TITLE} API</title>
  <link rel="stylesheet" href="{SWAGGER_UI_CDN}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{SWAGGER_UI_CDN}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: {json.dumps(spec_url)}, dom_id: "#swagger-ui"}});
  </script>
</body>
</html>
"""
