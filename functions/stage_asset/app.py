"""Stage function: one item of the state machine's `Stage assets` map."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.staging import stage_asset

logger = Logger()
tracer = Tracer()
# Unlike `Metrics`, an EphemeralMetrics instance shares no dimensions with other instances,
# which matters where several handlers run in one process (the local runtime).
metrics = EphemeralMetrics()
metrics.set_default_dimensions(step="stage_asset")


class StageRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)
    assetId: str  # noqa: N815


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = StageRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId, asset_id=request.assetId)
    started = time.monotonic()

    asset = stage_asset(request.jobId, request.assetId)

    seconds = time.monotonic() - started
    metrics.add_metric(name="StepSeconds", unit=MetricUnit.Seconds, value=seconds)
    return {"assetId": asset.assetId, "kind": asset.kind, "key": asset.key, "size": asset.size}
