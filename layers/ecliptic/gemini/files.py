"""Media for Gemini through the Files API: reuse, upload, wait until ACTIVE.

Gemini keeps an uploaded file for 48 hours. The job store remembers each asset's file, so a
later job that names the same asset reuses it while it has at least REUSE_MARGIN left.

What is uploaded, in request order (song first):
- only formats Gemini documents: MP4/MOV, WebM, AVI, FLV, MPEG and WMV video, and MP3, WAV,
  AIFF, AAC, OGG and FLAC audio;
- at most `gemini_upload_budget_bytes` in all, counted from the staged sizes. A file that
  would pass the budget is skipped, and later smaller ones may still fit;
- one file at a time through /tmp: download, upload, delete, so the scratch space only has
  to hold the largest file. A file larger than the free space is skipped.

A skipped file, a file that ends FAILED and a file still PROCESSING when the upload share of
the time budget runs out are left out of the request. Gemini then gets that media only as
facts (duration, size, frame rate). Each such file gets a reason in `AttachedMedia.skipped`.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from google.genai import types

from ecliptic.errors import TransientStepError
from ecliptic.gemini.errors import GeminiRejected, GeminiTimedOut
from ecliptic.gemini.retry import Deadline, RetryPolicy, call_with_retries
from ecliptic.models import MediaInfo, MediaKind

if TYPE_CHECKING:
    from google import genai

    from ecliptic.jobs import JobStore
    from ecliptic.storage import MediaStore

logger = logging.getLogger(__name__)

# A stored file is reused only while it stays valid at least this long: the job still has
# to plan with it.
REUSE_MARGIN = timedelta(hours=1)
# Files API files live 48 hours. This lifetime applies when a response has no expirationTime.
DEFAULT_LIFETIME = timedelta(hours=47)
# Scratch space kept free besides the file being uploaded.
_DISK_HEADROOM_BYTES = 16 * 1024 * 1024

# MIME types by the first name of the probed container format (ffmpeg's demuxer name).
# NOTE: Matroska is sent as WebM. A Matroska file with codecs WebM does not allow (H.264,
# for example) may end FAILED, and is then described by facts only.
_VIDEO_MIME_TYPES = {
    "mov": "video/mp4",
    "matroska": "video/webm",
    "avi": "video/avi",
    "flv": "video/x-flv",
    "mpeg": "video/mpeg",
    "asf": "video/wmv",
}
_AUDIO_MIME_TYPES = {
    "mp3": "audio/mp3",
    "wav": "audio/wav",
    "aiff": "audio/aiff",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
}


def gemini_mime_type(info: MediaInfo, kind: MediaKind) -> str | None:
    """Return the MIME type to upload probed media as, or None if Gemini does not take it."""
    container = info.format_name.split(",")[0]
    table = _VIDEO_MIME_TYPES if kind is MediaKind.VIDEO else _AUDIO_MIME_TYPES
    return table.get(container)


@dataclass(frozen=True)
class MediaSource:
    """One media file of the job, as the uploader needs it."""

    label: str
    asset_id: str
    key: str
    size: int | None
    mime_type: str | None


@dataclass(frozen=True)
class AttachedFile:
    """An ACTIVE Files API file that a request can name."""

    name: str
    uri: str
    mime_type: str


@dataclass
class AttachedMedia:
    """Files by asset id, and the reason each left-out asset has no file."""

    files: dict[str, AttachedFile] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    uploaded: int = 0
    reused: int = 0


@dataclass
class _Pending:
    source: MediaSource
    file: AttachedFile
    expires_at: datetime
    new: bool
    active: bool = False


def attach_media(
    client: genai.Client,
    sources: list[MediaSource],
    *,
    jobs: JobStore,
    store: MediaStore,
    folder: Path,
    budget_bytes: int,
    policy: RetryPolicy,
    poll_seconds: float,
    deadline: Deadline,
    job_id: str,
) -> AttachedMedia:
    """Reuse or upload each source and wait until the files are ACTIVE.

    Raises
    ------
    GeminiUnavailable
        The Files API kept failing with retryable errors.
    """
    result = AttachedMedia()
    pending: list[_Pending] = []
    spent = 0
    for source in sources:
        if source.mime_type is None:
            result.skipped[source.asset_id] = "format not supported by Gemini"
            continue
        reused = _reusable_file(client, source, jobs=jobs, policy=policy, deadline=deadline,
                                job_id=job_id)  # fmt: skip
        if reused is not None:
            pending.append(reused)
            continue

        size = source.size or 0
        if deadline.remaining() <= 0:
            result.skipped[source.asset_id] = "no time left to upload"
            continue
        if spent + size > budget_bytes:
            result.skipped[source.asset_id] = "over the upload size budget"
            continue
        free = shutil.disk_usage(folder).free
        if size + _DISK_HEADROOM_BYTES > free:
            result.skipped[source.asset_id] = "larger than the free scratch space"
            continue
        try:
            uploaded = _upload(client, source, store=store, folder=folder, policy=policy,
                               deadline=deadline, job_id=job_id)  # fmt: skip
        except (GeminiRejected, GeminiTimedOut) as error:
            logger.warning(
                "Gemini upload of %s left out: %s", source.label, error.reason,
                extra={"job_id": job_id, "asset_id": source.asset_id},
            )  # fmt: skip
            result.skipped[source.asset_id] = error.reason
            continue
        spent += size
        pending.append(uploaded)

    _wait_until_active(client, pending, result, jobs=jobs, policy=policy,
                       poll_seconds=poll_seconds, deadline=deadline, job_id=job_id)  # fmt: skip
    logger.info(
        "Gemini files ready: %d uploaded, %d reused, %d left out",
        result.uploaded, result.reused, len(result.skipped),
        extra={"job_id": job_id, "upload_bytes": spent},
    )  # fmt: skip
    return result


def _reusable_file(
    client: genai.Client,
    source: MediaSource,
    *,
    jobs: JobStore,
    policy: RetryPolicy,
    deadline: Deadline,
    job_id: str,
) -> _Pending | None:
    """Return the asset's stored file when it still exists, is usable and lives long enough."""
    record = jobs.get_asset_gemini_file(source.asset_id)
    if not record:
        return None
    expires_at = _parse_time(record.get("expirationTime"))
    if expires_at is None or expires_at - datetime.now(UTC) < REUSE_MARGIN:
        return None
    try:
        current = _get_file(client, record["name"], policy=policy, deadline=deadline,
                            job_id=job_id)  # fmt: skip
    except (GeminiRejected, GeminiTimedOut) as error:
        # 403 or 404: the file was deleted, or the API key now belongs to another project.
        logger.info(
            "stored Gemini file of %s is gone (%s); uploading again", source.label, error.reason,
            extra={"job_id": job_id, "asset_id": source.asset_id},
        )  # fmt: skip
        return None
    if current.state not in (types.FileState.ACTIVE, types.FileState.PROCESSING):
        return None
    file = AttachedFile(name=record["name"], uri=record["uri"], mime_type=record["mimeType"])
    return _Pending(
        source, file, expires_at, new=False, active=current.state == types.FileState.ACTIVE
    )


def _upload(
    client: genai.Client,
    source: MediaSource,
    *,
    store: MediaStore,
    folder: Path,
    policy: RetryPolicy,
    deadline: Deadline,
    job_id: str,
) -> _Pending:
    assert source.mime_type is not None
    target = folder / f"{source.asset_id}{Path(source.key).suffix}"
    try:
        path = store.download_file(source.key, target)
    except TransientStepError as error:
        raise GeminiRejected(
            "the file could not be read from media storage", detail=str(error.detail)
        ) from error
    started = time.monotonic()
    try:

        def upload(timeout: float) -> types.File:
            config = types.UploadFileConfig(
                mime_type=source.mime_type,
                display_name=source.asset_id,
                http_options=types.HttpOptions(timeout=_milliseconds(timeout)),
            )
            return client.files.upload(file=path, config=config)

        uploaded = call_with_retries(
            upload, what="file upload", policy=policy, deadline=deadline, job_id=job_id
        )
    finally:
        path.unlink(missing_ok=True)
    if not uploaded.name or not uploaded.uri:
        raise GeminiRejected("the Gemini file upload returned no file name or URI")
    logger.info(
        "uploaded %s to Gemini as %s in %.1f s", source.label, uploaded.name,
        time.monotonic() - started,
        extra={"job_id": job_id, "asset_id": source.asset_id, "bytes": source.size},
    )  # fmt: skip
    expires_at = uploaded.expiration_time or datetime.now(UTC) + DEFAULT_LIFETIME
    file = AttachedFile(name=uploaded.name, uri=uploaded.uri, mime_type=source.mime_type)
    return _Pending(
        source, file, expires_at, new=True, active=uploaded.state == types.FileState.ACTIVE
    )


def _wait_until_active(
    client: genai.Client,
    pending: list[_Pending],
    result: AttachedMedia,
    *,
    jobs: JobStore,
    policy: RetryPolicy,
    poll_seconds: float,
    deadline: Deadline,
    job_id: str,
) -> None:
    """Poll every pending file until it is ACTIVE or FAILED, or the deadline passes.

    A FAILED file is left out at once, because it never becomes ACTIVE.
    """
    waiting: list[_Pending] = []
    for item in pending:
        if item.active:
            _mark_active(item, result, jobs)
        else:
            waiting.append(item)
    while waiting:
        still: list[_Pending] = []
        for item in waiting:
            try:
                current = _get_file(client, item.file.name, policy=policy, deadline=deadline,
                                    job_id=job_id)  # fmt: skip
            except (GeminiRejected, GeminiTimedOut) as error:
                result.skipped[item.source.asset_id] = error.reason
                continue
            if current.state == types.FileState.ACTIVE:
                _mark_active(item, result, jobs)
            elif current.state == types.FileState.FAILED:
                message = current.error.message if current.error else None
                logger.warning(
                    "Gemini could not process %s (%s): %s", item.source.label,
                    item.file.name, message or "no error message",
                    extra={"job_id": job_id, "asset_id": item.source.asset_id},
                )  # fmt: skip
                result.skipped[item.source.asset_id] = "Gemini could not process the file"
            else:
                still.append(item)
        waiting = still
        if not waiting:
            return
        if deadline.remaining() <= poll_seconds:
            for item in waiting:
                result.skipped[item.source.asset_id] = "still processing when time ran out"
            logger.warning(
                "%d Gemini files still processing at the deadline; left out", len(waiting),
                extra={"job_id": job_id},
            )  # fmt: skip
            return
        time.sleep(poll_seconds)


def _mark_active(item: _Pending, result: AttachedMedia, jobs: JobStore) -> None:
    result.files[item.source.asset_id] = item.file
    if not item.new:
        result.reused += 1
        return
    result.uploaded += 1
    jobs.set_asset_gemini_file(
        item.source.asset_id,
        name=item.file.name,
        uri=item.file.uri,
        mime_type=item.file.mime_type,
        expires_at=item.expires_at,
    )


def _get_file(
    client: genai.Client, name: str, *, policy: RetryPolicy, deadline: Deadline, job_id: str
) -> types.File:
    def get(timeout: float) -> types.File:
        config = types.GetFileConfig(http_options=types.HttpOptions(timeout=_milliseconds(timeout)))
        return client.files.get(name=name, config=config)

    return call_with_retries(get, what="file state", policy=policy, deadline=deadline,
                             job_id=job_id)  # fmt: skip


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _milliseconds(seconds: float) -> int:
    """HttpOptions.timeout is in milliseconds; 0 would mean no timeout, so use 1 at least."""
    return max(1, int(seconds * 1000))
