"""The stage step: bring one asset into the media bucket, or reuse it when already staged.

An asset comes from one of three sources:

- a URL, streamed into the bucket by `ecliptic.fetch`;
- a presigned upload (`POST /uploads`): the client PUT the file at the upload key, and
  staging checks it and copies it to the asset key, computing sha256 on the way;
- a file in a multipart `POST /montages`, which the API writes and marks staged before the
  job starts, so staging finds it staged.

The checks here are cheap (declared type, file name, first bytes), because the stage function
is a zip Lambda without PyAV or ffmpeg. The analyze step probes every file and fails the job
when one is not decodable media of the expected kind.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import IO

from ecliptic.config import Settings, get_settings
from ecliptic.errors import AssetNotUsable, EclipticError, MediaRejected, NotFound
from ecliptic.fetch import HEAD_BYTES, FetchLimits, fetch_to_store
from ecliptic.jobs import JobStore, asset_key, from_item
from ecliptic.models import Asset, AssetState, ErrorDetail, MediaKind
from ecliptic.storage import MediaStore, upload_object_key

logger = logging.getLogger(__name__)

# Extensions accepted when the declared type is generic (application/octet-stream).
AUDIO_EXTENSIONS = frozenset(
    {"aac", "aif", "aiff", "amr", "caf", "flac", "m4a", "mp3", "mpga", "oga", "ogg", "opus",
     "wav", "weba", "wma"}
)
VIDEO_EXTENSIONS = frozenset(
    {"3g2", "3gp", "avi", "flv", "gif", "m2ts", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg",
     "mts", "ogv", "ts", "webm", "wmv"}
)
# Servers and browsers often label media files generically; the file name decides then.
GENERIC_TYPES = frozenset(
    {"", "application/octet-stream", "binary/octet-stream", "application/x-download",
     "application/download", "application/force-download", "application/unknown"}
)
# Container types that may hold audio only or video.
_CONTAINER_TYPES = frozenset({"application/ogg", "application/mp4", "application/x-matroska"})
_NON_MEDIA_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
)
_MARKUP_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<svg", b"<!--")


def _extension(filename: str | None) -> str:
    name = (filename or "").rsplit("/", 1)[-1].split("?", 1)[0]
    return name.rpartition(".")[2].lower() if "." in name else ""


def kind_max_bytes(kind: MediaKind, settings: Settings) -> int:
    """Return the size cap for one file of `kind`."""
    return settings.max_audio_bytes if kind == MediaKind.AUDIO else settings.max_video_bytes


def check_media_type(
    kind: MediaKind,
    content_type: str | None,
    filename: str | None,
    *,
    subject: str,
    advice: str = "send the audio or video file itself",
) -> str:
    """Return the content type to record for a file declared as `content_type`.

    Audio assets take audio or video types (a clip's soundtrack can be the song); video
    assets take video types and GIF. A generic type is judged by the file name's extension.
    `subject` starts the error message, e.g. "The audio URL returned".

    Raises
    ------
    MediaRejected
        The declared type or the extension is not one of the accepted media types.
    """
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in GENERIC_TYPES:
        extension = _extension(filename)
        allowed = VIDEO_EXTENSIONS | (AUDIO_EXTENSIONS if kind == MediaKind.AUDIO else set())
        if extension in allowed:
            return declared or "application/octet-stream"
        raise MediaRejected(
            f"{subject} content type {declared or 'none'!r}, and the file name "
            f"{filename or ''!r} has no {kind} extension, so it is not audio or video; "
            f"{advice}."
        )
    if declared.startswith("video/") or declared in _CONTAINER_TYPES:
        return declared
    if declared.startswith("audio/"):
        if kind == MediaKind.AUDIO:
            return declared
        raise MediaRejected(
            f"{subject} content type {declared!r}, an audio type; clips in `videos` must be "
            "video files."
        )
    if declared == "image/gif" and kind == MediaKind.VIDEO:
        return declared
    raise MediaRejected(f"{subject} content type {declared!r}, not audio or video; {advice}.")


def describe_non_media(head: bytes) -> str | None:
    """Return what the first bytes of a file show it is when that is not media, else None."""
    for signature, description in _NON_MEDIA_SIGNATURES:
        if head.startswith(signature):
            return description
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:9].lower().startswith(_MARKUP_STARTS):
        return "a web page or XML document"
    if text[:1] in (b"{", b"[") and b"\x00" not in head:
        return "JSON text"
    # Cut at most 3 bytes so a UTF-8 character split by the 512-byte window still decodes.
    for cut in range(4):
        try:
            decoded = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if decoded and all(char.isprintable() or char in "\t\r\n" for char in decoded):
            return "a text file"
        break
    return None


def head_checker(subject: str) -> Callable[[bytes], None]:
    """Return a check that rejects a file whose first bytes show it is not media."""

    def check(head: bytes) -> None:
        found = describe_non_media(head)
        if found is not None:
            raise MediaRejected(
                f"{subject} {found}, not audio or video; send the media file itself."
            )

    return check


def content_type_checker(asset: Asset) -> Callable[[str, str], str]:
    """Return the fetcher's check of a response's content type for `asset`."""

    def check(content_type: str, final_url: str) -> str:
        return check_media_type(
            asset.kind,
            content_type,
            asset.filename or final_url,
            subject=f"The {asset.kind} URL returned",
            advice="link the media file itself, not a web page",
        )

    return check


# ----- the stage step -------------------------------------------------------------------


def stage_asset(job_id: str, asset_id: str) -> Asset:
    """Bring the asset into the bucket unless it is already staged, and return it.

    Raises
    ------
    NotFound
        The asset record does not exist.
    AssetNotUsable
        The asset is a presigned upload whose file was never uploaded.
    MediaFetchFailed, MediaRejected
        The download failed, or the file broke a cap or a content check. The asset is
        marked failed unless only the job's total size was at fault.
    TransientStepError
        Media storage failed; the state machine retries the step.
    """
    settings = get_settings()
    jobs = JobStore()
    asset = jobs.get_asset(asset_id)
    if asset is None:
        raise NotFound(f"Asset {asset_id} does not exist.")
    if asset.state == AssetState.STAGED:
        logger.info("asset reused", extra={"job_id": job_id, "asset_id": asset_id})
        return asset

    kind_cap = kind_max_bytes(asset.kind, settings)
    room = settings.max_total_bytes - _staged_bytes(jobs, job_id, exclude=asset_id)
    if room <= 0:
        raise _over_total(job_id, settings)
    max_bytes = min(kind_cap, room)

    logger.info("staging asset", extra={"job_id": job_id, "asset_id": asset_id})
    store = MediaStore()
    try:
        if asset.sourceUrl:
            result = fetch_to_store(
                asset.sourceUrl,
                store,
                asset.key,
                limits=FetchLimits.from_settings(settings, max_bytes),
                content_type_check=content_type_checker(asset),
                head_check=head_checker(f"The {asset.kind} URL returned"),
            )
            size, sha256, content_type = result.size, result.sha256, result.content_type
        else:
            size, sha256, content_type = _stage_upload(asset, store, max_bytes)
    except AssetNotUsable:
        # The upload may still arrive; the asset stays pending for a later job.
        raise
    except MediaRejected as error:
        if max_bytes < kind_cap and isinstance(error.detail, dict) and error.detail.get("size"):
            raise _over_total(job_id, settings) from error
        _mark_failed(jobs, asset, error, job_id)
        raise
    except EclipticError as error:
        if error.status < 500:
            _mark_failed(jobs, asset, error, job_id)
        raise

    asset.state = AssetState.STAGED
    asset.size = size
    asset.sha256 = sha256
    asset.contentType = asset.contentType or content_type
    asset.error = None
    jobs.put_asset(asset)
    logger.info("asset staged", extra={"job_id": job_id, "asset_id": asset_id, "bytes": size})

    # Assets of one job stage in parallel: with strongly consistent reads after each write,
    # the last of them to finish sees every size.
    if _staged_bytes(jobs, job_id) > settings.max_total_bytes:
        raise _over_total(job_id, settings)
    return asset


def _mark_failed(jobs: JobStore, asset: Asset, error: EclipticError, job_id: str) -> None:
    asset.state = AssetState.FAILED
    asset.error = ErrorDetail(code=error.code, message=error.message)
    jobs.put_asset(asset)
    logger.warning(
        "staging failed",
        extra={"job_id": job_id, "asset_id": asset.assetId, "code": error.code},
    )


def _over_total(job_id: str, settings: Settings) -> MediaRejected:
    return MediaRejected(
        f"The media files of job {job_id} add up to more than the "
        f"{settings.max_total_bytes} bytes allowed per job; send fewer or smaller files."
    )


def _read_asset_consistent(jobs: JobStore, asset_id: str) -> Asset | None:
    response = jobs.client.get_item(
        TableName=jobs.table, Key=asset_key(asset_id), ConsistentRead=True
    )
    item = response.get("Item")
    if not item:
        return None
    data = from_item(item)
    return Asset.model_validate({k: v for k, v in data.items() if k in Asset.model_fields})


def _staged_bytes(jobs: JobStore, job_id: str, exclude: str | None = None) -> int:
    """Return the size of the job's staged assets (each counted once), minus `exclude`."""
    job = jobs.get_job(job_id)
    if job is None:
        return 0
    total = 0
    for asset_id in dict.fromkeys([job.audioAssetId, *job.videoAssetIds]):
        if asset_id == exclude:
            continue
        asset = _read_asset_consistent(jobs, asset_id)
        if asset is not None and asset.state == AssetState.STAGED and asset.size:
            total += asset.size
    return total


# ----- presigned uploads ----------------------------------------------------------------


def _stage_upload(asset: Asset, store: MediaStore, max_bytes: int) -> tuple[int, str, str]:
    """Check an uploaded file and copy it to the asset key; return size, sha256, type.

    The copy leaves the staged file out of reach of the upload URL, which stays valid until
    it expires: a second PUT cannot change a file that was already checked.
    """
    subject = f"The file uploaded for asset {asset.assetId}"
    upload_key = upload_object_key(asset.assetId, asset.filename)
    source_key = upload_key
    head = store.head(upload_key)
    if head is None:
        # A retried step may find the copy made but the record not yet written.
        source_key = asset.key
        head = store.head(asset.key)
    if head is None:
        raise AssetNotUsable(
            f"Asset {asset.assetId} has no uploaded file; upload the file to uploadUrl before "
            "submitting the montage.",
            field="assetId",
        )
    size = int(head.get("ContentLength") or 0)
    if size > max_bytes:
        raise MediaRejected(
            f"{subject} is {size} bytes, more than the {max_bytes} bytes allowed.",
            detail={"size": size},
        )
    if size == 0:
        raise MediaRejected(f"{subject} is empty.")
    content_type = check_media_type(asset.kind, head.get("ContentType"), asset.filename,
                                    subject=f"{subject} has")

    stream = store.open_stream(source_key)
    if stream is None:
        raise AssetNotUsable(f"Asset {asset.assetId} has no uploaded file.", field="assetId")
    check_head = head_checker(f"{subject} is")
    if source_key == asset.key:
        size, sha256 = _hash_stream(stream, max_bytes, check_head, subject)
    else:
        size, sha256 = _copy_stream(
            stream, store, asset.key, content_type, max_bytes, check_head, subject
        )
        store.delete(upload_key)
    return size, sha256, content_type


def _hash_stream(
    stream: IO[bytes], max_bytes: int, check_head: Callable[[bytes], None], subject: str
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(1024 * 1024):
        if size == 0:
            check_head(chunk[:HEAD_BYTES])
        size += len(chunk)
        if size > max_bytes:
            raise MediaRejected(
                f"{subject} is larger than the {max_bytes} bytes allowed.", detail={"size": size}
            )
        digest.update(chunk)
    return size, digest.hexdigest()


def _copy_stream(
    stream: IO[bytes],
    store: MediaStore,
    key: str,
    content_type: str,
    max_bytes: int,
    check_head: Callable[[bytes], None],
    subject: str,
) -> tuple[int, str]:
    digest = hashlib.sha256()
    with store.open_multipart(key, content_type) as writer:
        while chunk := stream.read(1024 * 1024):
            if writer.size == 0:
                check_head(chunk[:HEAD_BYTES])
            if writer.size + len(chunk) > max_bytes:
                raise MediaRejected(
                    f"{subject} is larger than the {max_bytes} bytes allowed.",
                    detail={"size": writer.size + len(chunk)},
                )
            digest.update(chunk)
            writer.write(chunk)
        return writer.close(), digest.hexdigest()
