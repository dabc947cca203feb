"""Media functions (container image with ffmpeg): `Analyze media` and `Render montage`.

One image serves both tasks; the template picks the entry point with `ImageConfig.Command`
(`app.analyze_handler` or `app.render_handler`).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.analysis import analyze_job
from ecliptic.rendering import render_job

logger = Logger()
tracer = Tracer()
metrics = Metrics()


class AnalyzeRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)


class RenderRequest(BaseModel):
    jobId: str  # noqa: N815
    planKey: str  # noqa: N815
    analysisKey: str  # noqa: N815


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def analyze_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = AnalyzeRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)

    key = analyze_job(request.jobId)

    return {"analysisKey": key}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def render_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = RenderRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)

    result = render_job(request.jobId, request.planKey, request.analysisKey)

    metrics.add_metric(name="OutputSeconds", unit=MetricUnit.Seconds, value=result.duration)
    return {
        "key": result.key,
        "posterKey": result.poster_key or "",
        "storyboardKey": result.storyboard_key or "",
        "duration": result.duration,
        "width": result.width,
        "height": result.height,
        "size": result.size,
    }
