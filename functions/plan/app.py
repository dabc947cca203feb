"""Plan function: the state machine's `Plan montage` task."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.planning import plan_job

logger = Logger()
tracer = Tracer()
# Unlike `Metrics`, an EphemeralMetrics instance shares no dimensions with other instances,
# which matters where several handlers run in one process (the local runtime).
metrics = EphemeralMetrics()
metrics.set_default_dimensions(step="plan")


class PlanRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)
    analysisKey: str  # noqa: N815


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = PlanRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)
    started = time.monotonic()

    key = plan_job(request.jobId, request.analysisKey)

    seconds = time.monotonic() - started
    metrics.add_metric(name="StepSeconds", unit=MetricUnit.Seconds, value=seconds)
    return {"planKey": key}
