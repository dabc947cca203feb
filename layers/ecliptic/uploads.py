"""Presigned uploads (`POST /uploads`) and the asset view (`GET /assets/{assetId}`).

A client whose file is too large for a multipart request requests an upload URL, PUTs the
file there, and names the returned `assetId` in `POST /montages`. The bytes go straight to
the bucket and never through the API. The asset is `pending` until a job's stage step finds
the file, checks it and copies it to the asset key.

In AWS the URL is an R2 presigned PUT with Content-Type and Content-Length signed. The local
runtime keeps the bucket in moto, where a presigned URL would point at amazonaws.com, so when
`upload_url_base` is set the URL points at the local server's `PUT /files/<key>` instead. That
URL carries an HMAC signature made with a key that exists only in this process, and
`receive_local_upload` checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import mimetypes
import secrets
import time
from datetime import UTC, datetime
from typing import IO, Any, Literal
from urllib.parse import parse_qs, quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ecliptic.bodies import parse_json_body
from ecliptic.config import get_settings
from ecliptic.errors import AssetNotUsable, InvalidRequest, MediaRejected, NotFound
from ecliptic.ids import ASSET_ID_PATTERN, new_asset_id
from ecliptic.jobs import JobStore, utc_now
from ecliptic.models import FILENAME_MAX_CHARS, Asset, AssetState, MediaKind
from ecliptic.staging import check_media_type, kind_max_bytes
from ecliptic.storage import MediaStore, asset_object_key, upload_object_key

logger = logging.getLogger(__name__)

# Signs local upload URLs. It is made at import, so URLs stop working when the process ends.
_LOCAL_UPLOAD_KEY = secrets.token_bytes(32)
_PROBE_FIELDS = {
    "format_name": "formatName",
    "duration": "duration",
    "has_video": "hasVideo",
    "has_audio": "hasAudio",
    "video_codec": "videoCodec",
    "audio_codec": "audioCodec",
    "width": "width",
    "height": "height",
    "rotation": "rotation",
    "fps": "fps",
    "sample_rate": "sampleRate",
    "channels": "channels",
}


class UploadRequest(BaseModel):
    """Body of `POST /uploads`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: MediaKind
    filename: str = Field(min_length=1, max_length=FILENAME_MAX_CHARS)
    contentType: str | None = Field(default=None, max_length=255)  # noqa: N815 (API field)
    size: int = Field(gt=0, description="exact size of the file in bytes")

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str) -> str:
        if "/" in value or "\\" in value or any(ord(char) < 32 for char in value):
            raise ValueError("must be a plain file name without path separators")
        return value


class UploadTicket(BaseModel):
    """The 201 body of `POST /uploads`: where and how to PUT the file."""

    assetId: str  # noqa: N815
    uploadUrl: str  # noqa: N815
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expiresAt: str  # noqa: N815
    maxBytes: int  # noqa: N815


def parse_upload_request(body: str | bytes | None) -> UploadRequest:
    """Parse and validate the JSON body of `POST /uploads`.

    Raises
    ------
    InvalidRequest
        The body is not JSON or a field is missing or out of range; `field` names it.
    """
    return parse_json_body(
        body, UploadRequest, 'send {"kind", "filename", "contentType", "size"}.'
    )


def create_upload(
    request: UploadRequest,
    *,
    jobs: JobStore | None = None,
    store: MediaStore | None = None,
) -> UploadTicket:
    """Record a pending asset and return a URL that accepts its file for a limited time.

    Raises
    ------
    InvalidRequest
        `size` is over the cap for the kind.
    MediaRejected
        The content type (or, when it is generic, the file name) is not media of the kind.
    """
    settings = get_settings()
    max_bytes = kind_max_bytes(request.kind, settings)
    if request.size > max_bytes:
        raise InvalidRequest(
            f"`size` is {request.size} bytes; {request.kind} files may be at most "
            f"{max_bytes} bytes.",
            field="size",
        )
    declared = request.contentType or mimetypes.guess_type(request.filename)[0]
    try:
        content_type = check_media_type(
            request.kind, declared, request.filename, subject="The file has"
        )
    except MediaRejected as error:
        error.field = "contentType"
        raise

    asset_id = new_asset_id(request.kind)
    upload_key = upload_object_key(asset_id, request.filename)
    expires = int(time.time()) + settings.upload_url_seconds
    store = store or MediaStore()
    if settings.upload_url_base:
        url = local_upload_url(
            settings.upload_url_base, upload_key, content_type, request.size, expires
        )
    else:
        url = store.presigned_put_url(
            upload_key,
            content_type=content_type,
            content_length=request.size,
            expires_in=settings.upload_url_seconds,
        )
    asset = Asset(
        assetId=asset_id,
        kind=request.kind,
        state=AssetState.PENDING,
        filename=request.filename,
        contentType=content_type,
        key=asset_object_key(asset_id, request.filename),
        createdAt=utc_now(),
    )
    (jobs or JobStore()).put_asset(asset)
    logger.info("upload issued", extra={"asset_id": asset_id, "bytes": request.size})
    return UploadTicket(
        assetId=asset_id,
        uploadUrl=url,
        headers={"Content-Type": content_type},
        expiresAt=datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
        maxBytes=max_bytes,
    )


def is_pending_upload(asset: Asset) -> bool:
    """Return True for an asset made by `POST /uploads` that no job has staged yet."""
    return asset.state == AssetState.PENDING and asset.sourceUrl is None


def upload_received(asset: Asset, store: MediaStore | None = None) -> dict[str, Any] | None:
    """Return the metadata of the uploaded file (or of its staged copy), or None."""
    store = store or MediaStore()
    return store.head(upload_object_key(asset.assetId, asset.filename)) or store.head(asset.key)


def check_upload_received(asset: Asset, *, field: str, store: MediaStore | None = None) -> None:
    """Reject a job that names a pending upload whose file is missing or too large.

    `POST /montages` calls this before asking for payment, so a client is not charged for
    a job that would fail in staging.

    Raises
    ------
    AssetNotUsable
        The file has not been uploaded yet.
    MediaRejected
        The uploaded file is larger than the cap for its kind.
    """
    head = upload_received(asset, store)
    if head is None:
        raise AssetNotUsable(
            f"Asset {asset.assetId} in `{field}` has no uploaded file yet; upload the file "
            "to uploadUrl before submitting the montage.",
            field=f"{field}.assetId",
        )
    size = int(head.get("ContentLength") or 0)
    max_bytes = kind_max_bytes(asset.kind, get_settings())
    if size > max_bytes:
        raise MediaRejected(
            f"The file uploaded for asset {asset.assetId} is {size} bytes, more than the "
            f"{max_bytes} bytes allowed for {asset.kind}.",
            field=f"{field}.assetId",
        )


# ----- local upload URLs ----------------------------------------------------------------


def _local_signature(key: str, content_type: str, size: int, expires: int) -> str:
    message = "\n".join(["PUT", key, content_type, str(size), str(expires)]).encode()
    return hmac.new(_LOCAL_UPLOAD_KEY, message, hashlib.sha256).hexdigest()


def local_upload_url(base: str, key: str, content_type: str, size: int, expires: int) -> str:
    """Return a local server URL that accepts one PUT of `size` bytes to `key`."""
    query = urlencode(
        {
            "expires": expires,
            "size": size,
            "signature": _local_signature(key, content_type, size, expires),
        }
    )
    return f"{base.rstrip('/')}/{quote(key)}?{query}"


def receive_local_upload(
    key: str,
    query: str,
    content_type: str | None,
    content_length: int | None,
    body: IO[bytes],
    store: MediaStore | None = None,
) -> int:
    """Check a local upload URL's signature and store the request body at `key`.

    Raises
    ------
    InvalidRequest
        The URL is not one `local_upload_url` made, it expired, or the request's
        Content-Type or Content-Length differs from the signed values.
    """
    params = {name: values[0] for name, values in parse_qs(query).items()}
    try:
        expires = int(params["expires"])
        size = int(params["size"])
        signature = params["signature"]
    except (KeyError, ValueError) as error:
        raise InvalidRequest("The upload URL is incomplete; request a new one.") from error
    expected = _local_signature(key, content_type or "", size, expires)
    if not key.startswith("uploads/") or not hmac.compare_digest(signature, expected):
        raise InvalidRequest(
            "The upload signature does not match; send the Content-Type given with the URL.",
            code="signature_mismatch",
        )
    if time.time() > expires:
        raise InvalidRequest("The upload URL has expired; request a new one.", code="expired")
    if content_length != size:
        raise InvalidRequest(
            f"The upload must carry exactly {size} bytes, the size given for this URL.",
            code="size_mismatch",
        )

    store = store or MediaStore()
    with store.open_multipart(key, content_type or "application/octet-stream") as writer:
        while writer.size < size:
            chunk = body.read(min(1024 * 1024, size - writer.size))
            if not chunk:
                raise InvalidRequest("The upload ended before all bytes arrived.")
            writer.write(chunk)
        writer.close()
    logger.info("local upload stored", extra={"key": key, "bytes": size})
    return size


# ----- asset view -----------------------------------------------------------------------


def asset_view(asset: Asset, store: MediaStore | None = None) -> dict[str, Any]:
    """Return the `GET /assets/{assetId}` body.

    Probe facts appear once a job's analyze step has probed the file. A pending upload also
    shows `uploadReceived`, so a client can check its PUT before submitting a job.
    """
    view: dict[str, Any] = {
        "assetId": asset.assetId,
        "kind": asset.kind.value,
        "state": asset.state.value,
        "filename": asset.filename,
        "contentType": asset.contentType,
        "size": asset.size,
        "sha256": asset.sha256,
        "createdAt": asset.createdAt,
    }
    if asset.probe is not None:
        facts = asset.probe.model_dump(mode="json")
        view["probe"] = {
            public: facts[name] for name, public in _PROBE_FIELDS.items() if facts[name] is not None
        }
    if asset.error is not None:
        view["error"] = asset.error.model_dump(mode="json", exclude_none=True)
    if is_pending_upload(asset):
        view["uploadReceived"] = upload_received(asset, store) is not None
    return {name: value for name, value in view.items() if value is not None}


def get_asset_view(asset_id: str) -> dict[str, Any]:
    """Return the view of one asset.

    Raises
    ------
    NotFound
        The id is malformed or no asset has it.
    """
    if not ASSET_ID_PATTERN.match(asset_id):
        raise NotFound(
            f"No asset has the id {asset_id!r}; asset ids look like aud_… or vid_… .",
            field="assetId",
        )
    asset = JobStore().get_asset(asset_id)
    if asset is None:
        raise NotFound(f"Asset {asset_id} does not exist.", field="assetId")
    return asset_view(asset)
