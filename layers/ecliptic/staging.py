"""The stage step: bring one asset into the media bucket, or reuse it when already there."""

from __future__ import annotations

import logging
import mimetypes

from ecliptic.config import get_settings
from ecliptic.errors import EclipticError, MediaRejected, NotFound
from ecliptic.fetch import FetchLimits, fetch_to_store
from ecliptic.jobs import JobStore
from ecliptic.models import Asset, AssetState, ErrorDetail, MediaKind
from ecliptic.storage import MediaStore

logger = logging.getLogger(__name__)

# Servers often label media files generically; accept these when the file name says media.
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/x-download"}


def content_type_checker(asset: Asset):
    """Return a check that rejects a response whose type cannot be the asset's media."""

    def check(content_type: str) -> None:
        if content_type.startswith(("audio/", "video/")) or content_type in {
            "application/ogg",
            "application/mp4",
            "image/gif",
        }:
            return
        guessed, _ = mimetypes.guess_type(asset.filename or asset.sourceUrl or "")
        if content_type in _GENERIC_TYPES and guessed and guessed.startswith(("audio/", "video/")):
            return
        raise MediaRejected(
            f"The {asset.kind} URL returned content type {content_type or 'none'!r}, "
            "not audio or video; link the media file itself, not a web page."
        )

    return check


def stage_asset(job_id: str, asset_id: str) -> Asset:
    """Fetch the asset's source URL into the bucket unless it is already staged.

    Raises
    ------
    NotFound
        The asset record does not exist.
    MediaFetchFailed, MediaRejected
        The download failed or the file broke a cap; the asset is marked failed.
    """
    jobs = JobStore()
    asset = jobs.get_asset(asset_id)
    if asset is None:
        raise NotFound(f"Asset {asset_id} does not exist.")
    if asset.state == AssetState.STAGED:
        logger.info("asset reused", extra={"job_id": job_id, "asset_id": asset_id})
        return asset
    if not asset.sourceUrl:
        raise NotFound(f"Asset {asset_id} has no source URL and no staged file.")

    settings = get_settings()
    max_bytes = (
        settings.max_audio_bytes if asset.kind == MediaKind.AUDIO else settings.max_video_bytes
    )
    limits = FetchLimits(
        max_bytes=max_bytes,
        timeout_seconds=settings.fetch_timeout_seconds,
        allow_loopback=settings.allow_loopback_urls,
    )
    logger.info("staging asset", extra={"job_id": job_id, "asset_id": asset_id})
    try:
        result = fetch_to_store(
            asset.sourceUrl,
            MediaStore(),
            asset.key,
            limits=limits,
            content_type_check=content_type_checker(asset),
        )
    except EclipticError as error:
        asset.state = AssetState.FAILED
        asset.error = ErrorDetail(code=error.code, message=error.message)
        jobs.put_asset(asset)
        logger.warning(
            "staging failed",
            extra={"job_id": job_id, "asset_id": asset_id, "code": error.code},
        )
        raise

    asset.state = AssetState.STAGED
    asset.size = result.size
    asset.sha256 = result.sha256
    asset.contentType = asset.contentType or result.content_type
    jobs.put_asset(asset)
    logger.info(
        "asset staged",
        extra={"job_id": job_id, "asset_id": asset_id, "bytes": result.size},
    )
    return asset
