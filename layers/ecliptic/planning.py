"""The plan step: turn the analysis into a renderable, beat-aligned montage plan.

Gemini plans when an API key is configured. Without a key, or when Gemini fails after its
retries and time budget, the deterministic beat-grid planner does. The job records which
planner made the plan (`planner`) and why (`planSummary.note`).
"""

from __future__ import annotations

import logging

from ecliptic.config import Settings, get_settings
from ecliptic.errors import NotFound, PlanFailed
from ecliptic.frame import choose_frame_size, scale_frame
from ecliptic.jobs import JobStore
from ecliptic.models import Analysis, Job, MontagePlan
from ecliptic.plan_normalizer import Timeline, build_timeline
from ecliptic.planner import plan_beat_grid, summarize_plan
from ecliptic.storage import MediaStore

logger = logging.getLogger(__name__)

NO_KEY_REASON = "no Gemini API key configured"


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
    timeline = build_timeline(
        analysis,
        fps=settings.output_fps,
        max_duration=settings.max_duration_seconds,
        duration_seconds=job.durationSeconds,
    )
    plan = _gemini_plan(job, analysis, timeline, width, height, settings, jobs, store)
    if isinstance(plan, str):
        plan = _beat_grid_plan(job, analysis, width, height, settings, reason=plan)

    key = plan_key(job_id)
    store.put_json(key, plan.model_dump(mode="json"))
    jobs.update_job(job_id, planner=plan.planner, planSummary=summarize_plan(plan))
    logger.info(
        "planning finished",
        extra={"job_id": job_id, "planner": plan.planner, "segments": len(plan.segments)},
    )
    return key


def _gemini_plan(
    job: Job,
    analysis: Analysis,
    timeline: Timeline,
    width: int,
    height: int,
    settings: Settings,
    jobs: JobStore,
    store: MediaStore,
) -> MontagePlan | str:
    """Return Gemini's normalized plan, or the reason the beat-grid planner has to plan."""
    from ecliptic.gemini.client import resolve_api_key
    from ecliptic.gemini.errors import GeminiError

    try:
        api_key = resolve_api_key(settings)
    except GeminiError as error:
        logger.warning(
            "Gemini API key unavailable; using the beat-grid planner: %s", error.reason,
            extra={"job_id": job.jobId, "detail": error.detail},
        )  # fmt: skip
        return error.reason
    if api_key is None:
        logger.info("no Gemini API key configured; using the beat-grid planner",
                    extra={"job_id": job.jobId})  # fmt: skip
        return NO_KEY_REASON

    # google-genai is imported only here: the Plan function stays quick to load without it.
    from ecliptic.gemini.planner import plan_with_gemini

    try:
        return plan_with_gemini(
            analysis,
            timeline,
            brief=job.prompt,
            width=width,
            height=height,
            api_key=api_key,
            settings=settings,
            jobs=jobs,
            store=store,
        )
    except GeminiError as error:
        logger.warning(
            "Gemini planner failed; using the beat-grid planner: %s", error.reason,
            extra={"job_id": job.jobId, "detail": error.detail},
        )  # fmt: skip
        return error.reason
    except Exception as error:
        # A paid job should still get a montage when the Gemini path breaks in a way the
        # code does not foresee (an SDK change, a malformed response). The traceback is logged.
        logger.exception(
            "Gemini planner failed unexpectedly; using the beat-grid planner",
            extra={"job_id": job.jobId},
        )
        return f"the Gemini planner failed unexpectedly ({type(error).__name__})"


def _beat_grid_plan(
    job: Job,
    analysis: Analysis,
    width: int,
    height: int,
    settings: Settings,
    *,
    reason: str,
) -> MontagePlan:
    try:
        return plan_beat_grid(
            analysis,
            width=width,
            height=height,
            fps=settings.output_fps,
            max_duration=settings.max_duration_seconds,
            duration_seconds=job.durationSeconds,
            note=f"beat-grid planner: {reason}",
        )
    except ValueError as error:
        raise PlanFailed(
            "No montage plan fits this song and these clips; try a longer song or clip.",
            detail=str(error),
        ) from error
