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
    """Render the plan to an MP4 and a poster, upload both, and describe the output.

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
        started = time.monotonic()
        render_montage(
            plan,
            audio_path=audio_path,
            clips=clips,
            out_path=out_path,
            poster_path=poster_path,
            on_progress=_ProgressWriter(jobs, job_id),
            timeout=settings.render_timeout_seconds,
        )
        elapsed = time.monotonic() - started

        key = output_object_key(job_id, job.username, "montage.mp4")
        size = store.upload_file(out_path, key, "video/mp4")
        poster_key = None
        if poster_path.exists():
            poster_key = output_object_key(job_id, job.username, "poster.jpg")
            store.upload_file(poster_path, poster_key, "image/jpeg")

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
        duration=round(plan.duration, 3),
        width=plan.width,
        height=plan.height,
        size=size,
    )


