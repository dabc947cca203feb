"""Ask Gemini for the montage plan and turn its response into a renderable plan."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from google.genai import types
from pydantic import ValidationError

from ecliptic.config import Settings
from ecliptic.gemini.client import make_client
from ecliptic.gemini.errors import GeminiResponseInvalid
from ecliptic.gemini.files import AttachedMedia, MediaSource, attach_media, gemini_mime_type
from ecliptic.gemini.prompt import SYSTEM_INSTRUCTION, build_contents, response_schema
from ecliptic.gemini.retry import Deadline, RetryPolicy, call_with_retries
from ecliptic.models import Analysis, MediaKind, MontagePlan
from ecliptic.plan_normalizer import EmptyProposal, ProposedPlan, Timeline, normalize_proposal
from ecliptic.workspace import job_workspace

if TYPE_CHECKING:
    from ecliptic.jobs import JobStore
    from ecliptic.storage import MediaStore

logger = logging.getLogger(__name__)

# Share of the time budget that uploads and file processing may use. The rest is kept for
# the plan request, which can take a minute or more with a long song and many clips.
UPLOAD_SHARE = 0.6
# The validation error quoted in a job note is cut to this many characters.
_NOTE_ERROR_CHARS = 160


def plan_with_gemini(
    analysis: Analysis,
    timeline: Timeline,
    *,
    brief: str | None,
    width: int,
    height: int,
    api_key: str,
    settings: Settings,
    jobs: JobStore,
    store: MediaStore,
) -> MontagePlan:
    """Upload the media, ask Gemini for a plan and normalize it, within the time budget.

    Raises
    ------
    GeminiError
        Any failure: the caller plans with the beat-grid planner instead.
    """
    job_id = analysis.job_id
    started = time.monotonic()
    deadline = Deadline(settings.gemini_timeout_seconds)
    policy = RetryPolicy(
        max_attempts=settings.gemini_max_attempts,
        initial_delay=settings.gemini_retry_initial_seconds,
    )
    logger.info(
        "Gemini planning started with %s", settings.gemini_model,
        extra={"job_id": job_id, "clips": len(analysis.clips), "cut_points": timeline.last},
    )  # fmt: skip

    with make_client(api_key, settings) as client:
        with job_workspace(job_id, "plan") as folder:
            media = attach_media(
                client,
                _media_sources(analysis, jobs),
                jobs=jobs,
                store=store,
                folder=folder,
                budget_bytes=settings.gemini_upload_budget_bytes,
                policy=policy,
                poll_seconds=settings.gemini_poll_seconds,
                deadline=deadline.sub(UPLOAD_SHARE),
                job_id=job_id,
            )
        contents = build_contents(analysis, timeline, media, brief)
        config = types.GenerateContentConfig(
            system_instruction=SYSTEM_INSTRUCTION,
            response_mime_type="application/json",
            response_json_schema=response_schema(len(analysis.clips), timeline.last),
            media_resolution=types.MediaResolution.MEDIA_RESOLUTION_LOW,
        )

        def generate(timeout: float) -> types.GenerateContentResponse:
            request_config = config.model_copy(
                update={"http_options": types.HttpOptions(timeout=max(1, int(timeout * 1000)))}
            )
            return client.models.generate_content(
                model=settings.gemini_model, contents=contents, config=request_config
            )

        response = call_with_retries(
            generate, what="plan", policy=policy, deadline=deadline, job_id=job_id
        )

    proposal = parse_response(response)
    note = f"{settings.gemini_model}; {_describe_media(analysis, media)}"
    try:
        plan = normalize_proposal(
            proposal, analysis, timeline, width=width, height=height, planner="gemini", note=note
        )
    except EmptyProposal as error:
        raise GeminiResponseInvalid(
            "the Gemini plan has no usable shot", detail=str(error)
        ) from error
    logger.info(
        "Gemini planning finished in %.1f s: %s", time.monotonic() - started, plan.planner_note,
        extra={"job_id": job_id, "segments": len(plan.segments)},
    )  # fmt: skip
    return plan


def parse_response(response: types.GenerateContentResponse) -> ProposedPlan:
    """Validate the response text against ProposedPlan.

    Raises
    ------
    GeminiResponseInvalid
        The response has no text, is not JSON or does not match the schema.
    """
    text = _response_text(response)
    if not text:
        raise GeminiResponseInvalid(
            f"the Gemini response has no text ({_finish_reason(response)})",
            detail=str(response.prompt_feedback) if response.prompt_feedback else None,
        )
    try:
        return ProposedPlan.model_validate_json(_strip_code_fence(text))
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise GeminiResponseInvalid(
                "the Gemini response is not valid JSON", detail=text[:500]
            ) from error
        where = ".".join(str(part) for part in first["loc"]) or "response"
        message = f"{where}: {first['msg']}"[:_NOTE_ERROR_CHARS]
        raise GeminiResponseInvalid(
            f"the Gemini response does not match the plan schema ({message})", detail=text[:500]
        ) from error


def _response_text(response: types.GenerateContentResponse) -> str | None:
    """Join the text parts of the first candidate; thought parts are left out."""
    if not response.candidates:
        return None
    content = response.candidates[0].content
    if content is None or not content.parts:
        return None
    texts = [part.text for part in content.parts if part.text and not part.thought]
    return "".join(texts).strip() or None


def _finish_reason(response: types.GenerateContentResponse) -> str:
    if response.candidates and response.candidates[0].finish_reason:
        return f"finish reason {response.candidates[0].finish_reason.value}"
    if response.prompt_feedback and response.prompt_feedback.block_reason:
        return f"prompt blocked: {response.prompt_feedback.block_reason.value}"
    return "no candidate"


def _strip_code_fence(text: str) -> str:
    """Remove a Markdown code fence around JSON, which some models add despite the MIME type."""
    if not text.startswith("```"):
        return text
    body = text.split("\n", 1)[1] if "\n" in text else ""
    return body.rsplit("```", 1)[0]


def _media_sources(analysis: Analysis, jobs: JobStore) -> list[MediaSource]:
    """List the song, then each distinct clip, with staged sizes and upload MIME types."""
    sources = [_source("song", analysis.audio_asset_id, analysis.audio_key, jobs,
                       gemini_mime_type(analysis.audio, MediaKind.AUDIO))]  # fmt: skip
    seen = {analysis.audio_asset_id}
    for clip in sorted(analysis.clips, key=lambda item: item.index):
        if clip.asset_id in seen:
            continue
        seen.add(clip.asset_id)
        mime_type = gemini_mime_type(clip.info, MediaKind.VIDEO)
        sources.append(_source(f"clip {clip.index}", clip.asset_id, clip.key, jobs, mime_type))
    return sources


def _source(
    label: str, asset_id: str, key: str, jobs: JobStore, mime_type: str | None
) -> MediaSource:
    asset = jobs.get_asset(asset_id)
    size = asset.size if asset is not None else None
    return MediaSource(label=label, asset_id=asset_id, key=key, size=size, mime_type=mime_type)


def _describe_media(analysis: Analysis, media: AttachedMedia) -> str:
    """Return `song and 3 of 4 clips attached` or the like, for the plan note."""
    song = "song" if analysis.audio_asset_id in media.files else "no song file"
    clip_ids = {clip.asset_id for clip in analysis.clips}
    attached = len(clip_ids & set(media.files))
    return f"{song} and {attached} of {len(clip_ids)} clips attached"
