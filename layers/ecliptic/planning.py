"""The plan step: turn the analysis into a renderable, beat-aligned montage plan."""

from __future__ import annotations

import logging

from ecliptic.config import get_settings
from ecliptic.errors import NotFound, PlanFailed
from ecliptic.jobs import JobStore
from ecliptic.models import Analysis, MontagePlan
from ecliptic.storage import MediaStore

logger = logging.getLogger(__name__)


def plan_key(job_id: str) -> str:
    return f"jobs/{job_id}/plan.json"


def plan_job(job_id: str, analysis_key: str) -> str:
    """Make the plan, store it next to the analysis and record a summary on the job.

    Raises
    ------
    NotFound
        The job does not exist.
    PlanFailed
        The beat grid or the clips leave nothing to plan.
    """
    from ecliptic.frame import choose_frame_size, scale_frame
    from ecliptic.planner import plan_beat_grid, summarize_plan

    settings = get_settings()
    jobs = JobStore()
    store = MediaStore()
    job = jobs.get_job(job_id)
    if job is None:
        raise NotFound(f"Job {job_id} does not exist.")
    analysis = Analysis.model_validate(store.get_json(analysis_key))

    frame = choose_frame_size(job.format, [clip.info for clip in analysis.clips])
    width, height = scale_frame(frame, settings.output_max_side)
    logger.info("planning started", extra={"job_id": job_id, "width": width, "height": height})
    try:
        plan: MontagePlan = plan_beat_grid(
            analysis,
            width=width,
            height=height,
            fps=settings.output_fps,
            max_duration=settings.max_duration_seconds,
            duration_seconds=job.durationSeconds,
            note="deterministic beat-grid planner (no Gemini planner configured)",
        )
    except ValueError as error:
        raise PlanFailed(
            "No montage plan fits this song and these clips; try a longer song or clip.",
            detail=str(error),
        ) from error

    key = plan_key(job_id)
    store.put_json(key, plan.model_dump(mode="json"))
    jobs.update_job(job_id, planner=plan.planner, planSummary=summarize_plan(plan))
    logger.info(
        "planning finished",
        extra={"job_id": job_id, "planner": plan.planner, "segments": len(plan.segments)},
    )
    return key
