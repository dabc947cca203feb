"""Plan function: the state machine's `Plan montage` task."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.planning import plan_job

logger = Logger()
tracer = Tracer()


class PlanRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)
    analysisKey: str  # noqa: N815


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = PlanRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId)

    key = plan_job(request.jobId, request.analysisKey)

    return {"planKey": key}
