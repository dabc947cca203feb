"""Stage function: one item of the state machine's `Stage assets` map."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from ecliptic.staging import stage_asset

logger = Logger()
tracer = Tracer()


class StageRequest(BaseModel):
    jobId: str  # noqa: N815 (state machine field)
    assetId: str  # noqa: N815


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = StageRequest.model_validate(event)
    logger.append_keys(job_id=request.jobId, asset_id=request.assetId)

    asset = stage_asset(request.jobId, request.assetId)

    return {"assetId": asset.assetId, "kind": asset.kind, "key": asset.key, "size": asset.size}
