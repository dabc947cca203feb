"""Multipart `POST /montages` bodies (`multipart/form-data`, RFC 7578).

The fields `audio` (once) and `videos` (repeated, in order) each carry a file or a JSON media
descriptor such as `{"url": "https://…"}` or `{"assetId": "vid_…"}`. The other request
fields (`prompt`, `username`, `format`, …) are plain text fields. `parse_montage_form` turns
the body into the same `MontageRequest` a JSON body gives, so the same validation applies,
plus the list of uploaded files.

A file field becomes a media reference with neither `url` nor `assetId`, so the submission
allocates a new asset for it like for a URL. After the payment settles, `stage_form_files`
writes each file to its asset key and marks the asset staged, and the job never downloads
it. API Gateway hands the whole body to Lambda in one event (about 4.5 MB raw at most, see
`request_body`), so it is parsed in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from ecliptic.bodies import invalid_request_from
from ecliptic.config import Settings, get_settings
from ecliptic.errors import InvalidRequest, MediaRejected, PayloadTooLarge
from ecliptic.models import (
    FILENAME_MAX_CHARS,
    Asset,
    AssetState,
    MediaKind,
    MediaRef,
    MontageRequest,
)
from ecliptic.staging import check_media_type, describe_non_media, kind_max_bytes
from ecliptic.storage import MediaStore

MEDIA_FIELDS = ("audio", "videos")
# Every other request field is a plain text field.
TEXT_FIELDS = tuple(name for name in MontageRequest.model_fields if name not in MEDIA_FIELDS)
# Browsers send one part per file input; some form libraries name repeated fields `name[]`.
_FIELD_ALIASES = {"videos[]": "videos"}
# A stand-in `assetId` that lets a file field pass `MediaRef` validation; it is replaced
# before the request leaves this module.
_FILE_PLACEHOLDER = "form-file"
# RFC 7230 token characters, for parameter names in Content-Disposition and Content-Type.
_PARAMETER = re.compile(
    r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)'
)
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart body; `filename` is None for a plain field."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class FormFile:
    """A media file sent in a multipart `POST /montages`."""

    field: str  # "audio" or "videos[<index>]"
    kind: MediaKind
    index: int | None  # position in `videos`, None for the audio
    filename: str
    content_type: str
    data: bytes
    sha256: str


@dataclass
class MontageForm:
    """A parsed multipart montage request: the validated request and its files."""

    request: MontageRequest
    files: list[FormFile]


# ----- request body ---------------------------------------------------------------------


def request_body(event: Mapping[str, Any], max_bytes: int | None = None) -> bytes:
    """Return the raw body of an API Gateway (payload 2.0) event.

    Powertools' `decoded_body` decodes base64 bodies to text, which breaks binary file parts,
    so this keeps bytes.

    Raises
    ------
    PayloadTooLarge
        The body is over `max_bytes` (default: the `max_request_bytes` setting).
    InvalidRequest
        A body marked base64 is not valid base64.
    """
    limit = max_bytes if max_bytes is not None else get_settings().max_request_bytes
    body = event.get("body") or ""
    encoded = bool(event.get("isBase64Encoded"))
    # Check the size before decoding: base64 carries 3 bytes in every 4 characters.
    approximate = len(body) * 3 // 4 if encoded else len(body)
    if approximate > limit + 2:
        raise _too_large(approximate, limit)
    try:
        data = base64.b64decode(body, validate=True) if encoded else body.encode()
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest("The request body is not valid base64.") from error
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is {size} bytes; bodies are limited to {limit} bytes. Send large "
        "media by URL, or upload each file with POST /uploads and send its assetId."
    )


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


# ----- multipart parsing ----------------------------------------------------------------


def _parameters(header_value: str) -> tuple[str, dict[str, str]]:
    """Split `value; name="x"; other=y` into the value and its lower-cased parameters."""
    value, _, rest = header_value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAMETER.finditer(";" + rest):
        name, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            # Browsers escape a quote as %22 and leave backslashes alone (HTML form
            # encoding), while RFC 7230 clients write \"; accept both for quotes only.
            raw = raw[1:-1].replace('\\"', '"')
        params.setdefault(name, raw)
    return value.strip().lower(), params


def _extended_value(value: str) -> str | None:
    """Decode an RFC 8187 value such as `UTF-8''caf%C3%A9.mp4`; None when it is malformed."""
    charset, quote_mark, rest = value.partition("'")
    _language, quote_mark2, encoded = rest.partition("'")
    if not quote_mark or not quote_mark2 or charset.lower() not in {"utf-8", "iso-8859-1"}:
        return None
    try:
        return unquote(encoded, encoding=charset, errors="strict")
    except (UnicodeDecodeError, LookupError):
        return None


def clean_filename(raw: str) -> str:
    """Return a plain, printable file name of at most 255 characters from a client's name.

    Old browsers send a full path; only the last component is kept.
    """
    name = unicodedata.normalize("NFC", raw.replace("%22", '"'))
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(char for char in name if unicodedata.category(char)[0] != "C").strip()
    if len(name) > FILENAME_MAX_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and len(extension) <= 16:
            name = stem[: FILENAME_MAX_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:FILENAME_MAX_CHARS]
    return name


def _part_headers(block: bytes) -> dict[str, str]:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise InvalidRequest("A part of the multipart body has a malformed header line.")
        headers[name.strip().lower()] = value.strip()
    return headers


def _boundary(content_type: str) -> bytes:
    mime, params = _parameters(content_type)
    if mime != "multipart/form-data":
        raise InvalidRequest("The Content-Type must be multipart/form-data.")
    boundary = params.get("boundary", "")
    if not _BOUNDARY.match(boundary):
        raise InvalidRequest(
            "The multipart Content-Type has a missing or invalid boundary parameter."
        )
    return boundary.encode("ascii")


def parse_multipart(body: bytes, content_type: str, *, max_parts: int) -> list[FormPart]:
    """Split a `multipart/form-data` body into its parts.

    Raises
    ------
    InvalidRequest
        The body is not well-formed multipart, has a part without a field name, or has
        more than `max_parts` parts.
    """
    delimiter = b"--" + _boundary(content_type)
    if body.startswith(delimiter):
        position = len(delimiter)
    else:
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise InvalidRequest("The multipart body does not contain its boundary.")
        position = found + 2 + len(delimiter)

    parts: list[FormPart] = []
    while not body.startswith(b"--", position):
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise InvalidRequest("The multipart body is cut off or malformed.")
        start = line_end + 2
        end = _find_delimiter(body, delimiter, start)
        if end < 0:
            raise InvalidRequest("The multipart body ends without its closing boundary.")
        parts.append(_part(body[start:end]))
        if len(parts) > max_parts:
            raise InvalidRequest(f"The multipart body has more than {max_parts} parts.")
        position = end + 2 + len(delimiter)
    return parts


def _find_delimiter(body: bytes, delimiter: bytes, start: int) -> int:
    """Return the index of the next CRLF that starts a delimiter line, or -1.

    A delimiter line is CRLF, the delimiter, then `--` or optional spaces and CRLF; the
    same bytes followed by anything else are file content.
    """
    marker = b"\r\n" + delimiter
    found = body.find(marker, start)
    while found >= 0:
        after = found + len(marker)
        if body.startswith(b"--", after):
            return found
        line_end = body.find(b"\r\n", after)
        if line_end >= 0 and not body[after:line_end].strip(b" \t"):
            return found
        found = body.find(marker, found + 1)
    return -1


def _part(raw: bytes) -> FormPart:
    header_end = raw.find(b"\r\n\r\n")
    if raw.startswith(b"\r\n") or header_end < 0:
        raise InvalidRequest("A part of the multipart body has no Content-Disposition header.")
    headers = _part_headers(raw[:header_end])
    disposition, params = _parameters(headers.get("content-disposition", ""))
    if disposition != "form-data" or not params.get("name"):
        raise InvalidRequest(
            "Every part of the multipart body needs `Content-Disposition: form-data; name=…`."
        )
    filename: str | None = None
    if "filename*" in params:
        filename = _extended_value(params["filename*"])
    if filename is None and "filename" in params:
        filename = params["filename"]
    content_type = headers.get("content-type")
    return FormPart(
        name=params["name"],
        filename=filename,
        content_type=content_type.split(";")[0].strip().lower() if content_type else None,
        data=raw[header_end + 4 :],
    )


# ----- montage form ---------------------------------------------------------------------


def parse_montage_form(
    body: bytes, content_type: str, settings: Settings | None = None
) -> MontageForm:
    """Parse a multipart montage request and check its files.

    Raises
    ------
    InvalidRequest
        Malformed multipart, an unknown or repeated field, a bad JSON descriptor, or a
        request that fails the same validation as a JSON body.
    MediaRejected
        A file is empty or too large for its kind, or its declared type, file name or first
        bytes show it is not audio or video. `field` names the file.
    """
    settings = settings or get_settings()
    data: dict[str, Any] = {}
    videos: list[Any] = []
    files: list[FormFile] = []

    for part in parse_multipart(body, content_type, max_parts=settings.max_form_parts):
        name = _FIELD_ALIASES.get(part.name, part.name)
        if name not in MEDIA_FIELDS and name not in TEXT_FIELDS:
            known = ", ".join(MEDIA_FIELDS + TEXT_FIELDS)
            raise InvalidRequest(
                f"Unknown form field `{name}`; the fields are {known}.", field=name
            )
        if name == "audio" and "audio" in data:
            raise InvalidRequest("Send the `audio` field once.", field="audio")

        if part.filename is not None:
            if name not in MEDIA_FIELDS:
                raise InvalidRequest(f"Field `{name}` must be text, not a file.", field=name)
            if not part.filename and not part.data:
                continue  # a file input left empty: browsers still send the part
            index = None if name == "audio" else len(videos)
            form_file = _form_file(part, name, index, settings)
            files.append(form_file)
            ref: Any = {
                "assetId": _FILE_PLACEHOLDER,
                "filename": form_file.filename,
                "contentType": form_file.content_type,
            }
            refs = [ref]
        else:
            text = _text(part, name)
            if not text.strip():
                continue  # an optional input left empty
            if name in TEXT_FIELDS:
                if name in data:
                    raise InvalidRequest(f"Send the `{name}` field once.", field=name)
                data[name] = text
                continue
            refs = _descriptors(text, name if name == "audio" else f"videos[{len(videos)}]")
            if name == "audio" and len(refs) != 1:
                raise InvalidRequest("The `audio` field takes one descriptor.", field="audio")

        if name == "audio":
            data["audio"] = refs[0]
        else:
            videos.extend(refs)

    if videos:
        data["videos"] = videos
    try:
        request = MontageRequest.model_validate(data)
    except ValidationError as error:
        raise invalid_request_from(error) from error
    for form_file in files:
        ref = MediaRef.model_construct(
            filename=form_file.filename, contentType=form_file.content_type
        )
        if form_file.index is None:
            request.audio = ref
        else:
            request.videos[form_file.index] = ref
    return MontageForm(request=request, files=files)


def _text(part: FormPart, name: str) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest(f"Field `{name}` is not valid UTF-8 text.", field=name) from error


def _descriptors(text: str, path: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidRequest(
            f"Field `{path}` must be a file or a JSON media descriptor such as "
            '{"url": "https://…"} or {"assetId": "…"}.',
            field=path,
        ) from error
    return value if isinstance(value, list) else [value]


def _form_file(part: FormPart, name: str, index: int | None, settings: Settings) -> FormFile:
    kind = MediaKind.AUDIO if name == "audio" else MediaKind.VIDEO
    path = name if index is None else f"videos[{index}]"
    filename = clean_filename(part.filename or "") or f"{kind}"
    declared = part.content_type
    if not declared or declared == "application/octet-stream":
        declared = mimetypes.guess_type(filename)[0] or declared
    try:
        content_type = check_media_type(
            kind, declared, filename, subject=f"The file sent in `{path}` has"
        )
        if not part.data:
            raise MediaRejected(f"The file sent in `{path}` is empty.")
        max_bytes = kind_max_bytes(kind, settings)
        if len(part.data) > max_bytes:
            raise MediaRejected(
                f"The file sent in `{path}` is {len(part.data)} bytes, more than the "
                f"{max_bytes} bytes allowed for {kind}."
            )
        found = describe_non_media(part.data[:512])
        if found is not None:
            raise MediaRejected(f"The file sent in `{path}` is {found}, not audio or video.")
    except MediaRejected as error:
        error.field = path
        raise
    return FormFile(
        field=path,
        kind=kind,
        index=index,
        filename=filename,
        content_type=content_type,
        data=part.data,
        sha256=hashlib.sha256(part.data).hexdigest(),
    )


# ----- after payment --------------------------------------------------------------------


def form_body_hash(request_hash: str, files: list[FormFile]) -> str:
    """Return the idempotency hash of a multipart request: its fields plus its file digests.

    With no files it is `request_hash` unchanged, so a multipart request that contains only
    descriptors hashes like the same JSON request.
    """
    if not files:
        return request_hash
    digests = ",".join(f"{form_file.field}={form_file.sha256}" for form_file in files)
    return hashlib.sha256(f"{request_hash}|{digests}".encode()).hexdigest()


def stage_form_files(
    files: list[FormFile],
    audio_id: str,
    video_ids: list[str],
    new_assets: list[Asset],
    store: MediaStore | None = None,
) -> None:
    """Write each uploaded file to its new asset's key and mark the asset staged in place.

    Call after the payment settles and before the job and its assets are written, with the
    ids and new assets that `resolve_assets` returned for the form's request.

    Raises
    ------
    TransientStepError
        Writing to media storage failed.
    """
    store = store or MediaStore()
    assets = {asset.assetId: asset for asset in new_assets}
    for form_file in files:
        asset_id = audio_id if form_file.index is None else video_ids[form_file.index]
        asset = assets.get(asset_id)
        if asset is None:
            raise ValueError(f"{form_file.field} has no new asset; pass resolve_assets' output")
        store.put_bytes(asset.key, form_file.data, form_file.content_type)
        asset.state = AssetState.STAGED
        asset.size = len(form_file.data)
        asset.sha256 = form_file.sha256
        asset.contentType = form_file.content_type
        asset.filename = form_file.filename
