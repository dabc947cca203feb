"""Notify function: the state machine's `Report success` and `Report failure` tasks."""

from __future__ import annotations

import time
from typing import Any, Literal

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.models import JobStatus
from ecliptic.outcome import report_outcome

logger = Logger()
tracer = Tracer()
metrics = Metrics()

# Time kept back from the Lambda timeout for the last log lines and the metrics flush.
RESERVE_SECONDS = 5.0


class NotifyRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)
    outcome: Literal["succeeded", "failed"]


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = NotifyRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - RESERVE_SECONDS

    report = report_outcome(request.jobId, JobStatus(request.outcome), deadline=deadline)

    for point in report.metrics:
        metrics.add_metric(name=point.name, unit=MetricUnit(point.unit), value=point.value)
    return report.summary()
