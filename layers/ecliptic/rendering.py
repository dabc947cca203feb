"""The render step: run ffmpeg on the staged media and upload the montage."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ecliptic.config import get_settings
from ecliptic.errors import NotFound
from ecliptic.jobs import JobStore
from ecliptic.models import Analysis, MediaInfo, MontagePlan, RenderResult
from ecliptic.storage import MediaStore, output_object_key
from ecliptic.workspace import job_workspace

logger = logging.getLogger(__name__)

# Progress is written to the job at most this often, and maps render 0..1 to 50..98 %.
PROGRESS_INTERVAL_SECONDS = 3.0
RENDER_PROGRESS_START = 50
RENDER_PROGRESS_END = 98


class _ProgressWriter:
    def __init__(self, jobs: JobStore, job_id: str) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.last_write = 0.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last_write < PROGRESS_INTERVAL_SECONDS:
            return
        self.last_write = now
        span = RENDER_PROGRESS_END - RENDER_PROGRESS_START
        progress = RENDER_PROGRESS_START + round(span * min(max(fraction, 0.0), 1.0))
        self.jobs.update_job(self.job_id, progress=progress)


def render_job(job_id: str, plan_key: str, analysis_key: str) -> RenderResult:
    """Render the plan to an MP4, a poster and a storyboard, upload them, describe the output.

    The three objects share one key prefix that names the user and the job.

    Raises
    ------
    NotFound
        The job does not exist.
    RenderFailed
        ffmpeg failed or timed out.
    """
    from ecliptic.media.render import render_montage

    settings = get_settings()
    jobs = JobStore()
    store = MediaStore()
    job = jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"Job {job_id} does not exist.")
    plan = MontagePlan.model_validate(store.get_json(plan_key))
    analysis = Analysis.model_validate(store.get_json(analysis_key))
    logger.info(
        "render started",
        extra={"job_id": job_id, "segments": len(plan.segments), "frames": plan.total_frames},
    )

    used = {segment.clip for segment in plan.segments}
    with job_workspace(job_id, "render") as folder:
        audio_path = store.download_file(analysis.audio_key, folder / "song.bin")
        clips: dict[int, tuple[Path, MediaInfo]] = {}
        for clip in analysis.clips:
            if clip.index in used:
                path = store.download_file(clip.key, folder / f"clip-{clip.index}.bin")
                clips[clip.index] = (path, clip.info)
        out_path = folder / "montage.mp4"
        poster_path = folder / "poster.jpg"
        storyboard_path = folder / "storyboard.jpg"
        started = time.monotonic()
        render_montage(
            plan,
            audio_path=audio_path,
            clips=clips,
            out_path=out_path,
            poster_path=poster_path,
            storyboard_path=storyboard_path,
            on_progress=_ProgressWriter(jobs, job_id),
            timeout=settings.render_timeout_seconds,
        )
        elapsed = time.monotonic() - started

        key = output_object_key(job_id, job.username, "montage.mp4")
        size = store.upload_file(out_path, key, "video/mp4")
        poster_key = _upload_image(store, poster_path, job_id, job.username)
        storyboard_key = _upload_image(store, storyboard_path, job_id, job.username)

    logger.info(
        "render finished",
        extra={
            "job_id": job_id,
            "seconds": round(elapsed, 2),
            "seconds_per_output_second": round(elapsed / plan.duration, 3),
            "bytes": size,
        },
    )
    return RenderResult(
        key=key,
        poster_key=poster_key,
        storyboard_key=storyboard_key,
        duration=round(plan.duration, 3),
        width=plan.width,
        height=plan.height,
        size=size,
    )


def _upload_image(store: MediaStore, path: Path, job_id: str, username: str | None) -> str | None:
    """Upload a JPEG next to the montage under its own file name; None when it is missing."""
    if not path.exists():
        return None
    key = output_object_key(job_id, username, path.name)
    store.upload_file(path, key, "image/jpeg")
    return key
