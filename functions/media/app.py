"""Media functions (container image with ffmpeg): `Analyze media` and `Render montage`.

One image serves both tasks; the template picks the entry point with `ImageConfig.Command`
(`app.analyze_handler` or `app.render_handler`).
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.analysis import analyze_job
from ecliptic.rendering import render_job

logger = Logger()
tracer = Tracer()
# One metric set per handler, each with its step dimension. Unlike `Metrics`, EphemeralMetrics
# instances share no dimensions, so the two handlers never overwrite each other's step.
analyze_metrics = EphemeralMetrics()
analyze_metrics.set_default_dimensions(step="analyze")
render_metrics = EphemeralMetrics()
render_metrics.set_default_dimensions(step="render")


class AnalyzeRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)


class RenderRequest(BaseModel):
    jobId: str  # noqa: N815
    planKey: str  # noqa: N815
    analysisKey: str  # noqa: N815


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@analyze_metrics.log_metrics
def analyze_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = AnalyzeRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)
    started = time.monotonic()

    key = analyze_job(request.jobId)

    seconds = time.monotonic() - started
    analyze_metrics.add_metric(name="StepSeconds", unit=MetricUnit.Seconds, value=seconds)
    return {"analysisKey": key}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@render_metrics.log_metrics
def render_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = RenderRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)
    started = time.monotonic()

    result = render_job(request.jobId, request.planKey, request.analysisKey)

    # Seconds of the whole step, media downloads and uploads included.
    seconds = time.monotonic() - started
    render_metrics.add_metric(name="StepSeconds", unit=MetricUnit.Seconds, value=seconds)
    render_metrics.add_metric(name="OutputSeconds", unit=MetricUnit.Seconds, value=result.duration)
    if result.duration > 0:
        render_metrics.add_metric(
            name="RenderSecondsPerOutputSecond",
            unit=MetricUnit.NoUnit,
            value=seconds / result.duration,
        )
    return {
        "key": result.key,
        "posterKey": result.poster_key or "",
        "storyboardKey": result.storyboard_key or "",
        "duration": result.duration,
        "width": result.width,
        "height": result.height,
        "size": result.size,
    }
