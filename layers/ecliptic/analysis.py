"""The analyze step: probe the song and every clip, and find the song's beat grid."""

from __future__ import annotations

import logging
from pathlib import Path

from ecliptic.errors import MediaRejected, NotFound
from ecliptic.jobs import JobStore
from ecliptic.models import Analysis, Asset, AssetState, ClipFacts, MediaInfo
from ecliptic.storage import MediaStore
from ecliptic.workspace import job_workspace

logger = logging.getLogger(__name__)


def analysis_key(job_id: str) -> str:
    return f"jobs/{job_id}/analysis.json"


def _download(store: MediaStore, asset: Asset, folder: Path) -> Path:
    suffix = Path(asset.key).suffix
    return store.download_file(asset.key, folder / f"{asset.assetId}{suffix}")


def _probe(path: Path, asset: Asset, label: str) -> MediaInfo:
    from ecliptic.media.probe import probe_media

    try:
        return probe_media(path)
    except MediaRejected as error:
        raise MediaRejected(
            f"The {label} ({asset.filename or asset.assetId}) is not decodable media: "
            f"{error.message}",
            field=label,
        ) from error


def analyze_job(job_id: str) -> str:
    """Probe the job's media, compute the beat grid, store the analysis, return its key.

    Raises
    ------
    NotFound
        The job or one of its assets is missing.
    MediaRejected
        The song has no audio or a clip has no video.
    """
    from ecliptic.media.beats import compute_beat_grid

    jobs = JobStore()
    store = MediaStore()
    job = jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"Job {job_id} does not exist.")
    logger.info("analysis started", extra={"job_id": job_id, "clips": len(job.videoAssetIds)})

    audio = _staged_asset(jobs, job.audioAssetId)
    videos = [_staged_asset(jobs, asset_id) for asset_id in job.videoAssetIds]
    with job_workspace(job_id, "analyze") as folder:
        audio_path = _download(store, audio, folder)
        audio_info = _probe(audio_path, audio, "audio")
        if not audio_info.has_audio:
            raise MediaRejected(
                "The audio file has no audio stream; send a song file.", field="audio"
            )
        beat_grid = compute_beat_grid(audio_path)
        _remember_probe(jobs, audio, audio_info)

        clips: list[ClipFacts] = []
        for index, video in enumerate(videos):
            video_path = _download(store, video, folder)
            info = _probe(video_path, video, f"videos[{index}]")
            if not info.has_video:
                raise MediaRejected(
                    f"Clip videos[{index}] ({video.filename or video.assetId}) has no video "
                    "stream; send a video file.",
                    field=f"videos[{index}]",
                )
            _remember_probe(jobs, video, info)
            clips.append(ClipFacts(index=index, asset_id=video.assetId, key=video.key, info=info))
            video_path.unlink(missing_ok=True)

    analysis = Analysis(
        job_id=job_id,
        audio_asset_id=audio.assetId,
        audio_key=audio.key,
        audio=audio_info,
        beat_grid=beat_grid,
        clips=clips,
    )
    key = analysis_key(job_id)
    store.put_json(key, analysis.model_dump(mode="json"))
    logger.info(
        "analysis finished",
        extra={"job_id": job_id, "tempo": round(beat_grid.tempo, 1), "beats": len(beat_grid.beats)},
    )
    return key


def _staged_asset(jobs: JobStore, asset_id: str) -> Asset:
    asset = jobs.get_asset(asset_id)
    if asset is None or asset.state != AssetState.STAGED:
        raise NotFound(f"Asset {asset_id} is not staged.")
    return asset


def _remember_probe(jobs: JobStore, asset: Asset, info: MediaInfo) -> None:
    if asset.probe is None:
        asset.probe = info
        jobs.put_asset(asset)
