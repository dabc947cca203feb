"""API function: montages, jobs, uploads and assets behind an HTTP API."""

from __future__ import annotations

import warnings
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, CORSConfig, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ecliptic.config import get_settings
from ecliptic.errors import (
    EclipticError,
    InvalidRequest,
    NotFound,
    PaymentConflict,
    PaymentPending,
    PaymentRequired,
)
from ecliptic.forms import request_body
from ecliptic.ids import JOB_ID_PATTERN
from ecliptic.jobs import JobStore
from ecliptic.models import USERNAME_MAX_CHARS
from ecliptic.openapi import (
    CREATE_MONTAGE_RESPONSES,
    CREATE_UPLOAD_RESPONSES,
    DOCS_PATH,
    DOCS_RESPONSES,
    GET_ASSET_RESPONSES,
    GET_JOB_RESPONSES,
    LIST_JOBS_RESPONSES,
    OPENAPI_PATH,
    OPENAPI_RESPONSES,
    AssetId,
    JobId,
    openapi_document,
    swagger_ui_html,
)
from ecliptic.submission import submit_montage
from ecliptic.uploads import create_upload, get_asset_view, parse_upload_request
from ecliptic.views import job_view
from ecliptic.x402.requirements import challenge
from ecliptic.x402.response import CORS_EXPOSE_HEADERS, RETRY_AFTER_HEADER

logger = Logger()
tracer = Tracer()
metrics = Metrics()
# Reads and rejected requests publish no metrics; that is expected, not worth a warning.
warnings.filterwarnings("ignore", message="No application metrics to publish")
cors = CORSConfig(
    allow_origin="*",
    allow_headers=["Content-Type", "X-PAYMENT", "PAYMENT-SIGNATURE"],
    expose_headers=CORS_EXPOSE_HEADERS,
)
app = APIGatewayHttpResolver(cors=cors)

# Seconds a client should wait before it retries with the same payment.
RETRY_AFTER_SECONDS = "2"
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100


def _base_url() -> str:
    event = app.current_event
    proto = event.headers.get("x-forwarded-proto", "https")
    return f"{proto}://{event.request_context.domain_name}"


def _resource_url() -> str:
    return _base_url() + app.current_event.raw_path


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status, content_type="application/json", body=body, headers=headers
    )


# Routes carry no return annotation: Powertools' OpenAPI generator cannot describe one of
# `Response`, so the `responses` tables in ecliptic.openapi document the bodies instead.
@app.post(
    "/montages",
    summary="Request a montage (paid with x402)",
    tags=["montages"],
    operation_id="createMontage",
    status_code=202,
    responses=CREATE_MONTAGE_RESPONSES,
)
def create_montage():
    event = app.current_event
    body = request_body(event.raw_event)
    submission = submit_montage(body, event.headers, _resource_url())

    job_id = submission.accepted.jobId
    logger.append_keys(job_id=job_id)
    if not submission.replayed:
        metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    logger.info("montage accepted", replayed=submission.replayed)
    return _json(202, submission.accepted.model_dump(mode="json"), submission.headers)


@app.get(
    "/jobs/<jobId>",
    summary="Get a job's status, progress and output",
    tags=["jobs"],
    operation_id="getJob",
    responses=GET_JOB_RESPONSES,
)
def get_job(jobId: JobId):  # noqa: N803 (the path parameter's public name)
    if not JOB_ID_PATTERN.match(jobId):
        raise NotFound(f"No job has the id {jobId!r}; job ids look like job_… .", field="jobId")
    job = JobStore().get_job(jobId)
    if job is None:
        raise NotFound(f"Job {jobId} does not exist.", field="jobId")
    return _json(200, job_view(job))


@app.get(
    "/jobs",
    summary="List jobs, newest first",
    tags=["jobs"],
    operation_id="listJobs",
    responses=LIST_JOBS_RESPONSES,
)
def list_jobs():
    raw_limit = app.current_event.get_query_string_value("limit", str(LIST_LIMIT_DEFAULT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_LIMIT_MAX:
        raise InvalidRequest(
            f"`limit` must be a whole number from 1 to {LIST_LIMIT_MAX}.", field="limit"
        )
    cursor = app.current_event.get_query_string_value("cursor")
    username = app.current_event.get_query_string_value("username")
    if username is not None and not 1 <= len(username) <= USERNAME_MAX_CHARS:
        raise InvalidRequest(
            f"`username` must be 1 to {USERNAME_MAX_CHARS} characters.", field="username"
        )
    jobs, next_cursor = JobStore().list_jobs(int(raw_limit), cursor, username=username)
    body: dict[str, Any] = {"jobs": [job_view(job) for job in jobs]}
    if next_cursor:
        body["cursor"] = next_cursor
    return _json(200, body)


@app.post(
    "/uploads",
    summary="Get a URL to upload a large file to",
    tags=["assets"],
    operation_id="createUpload",
    status_code=201,
    responses=CREATE_UPLOAD_RESPONSES,
)
def create_upload_url():
    ticket = create_upload(parse_upload_request(request_body(app.current_event.raw_event)))

    logger.append_keys(asset_id=ticket.assetId)
    logger.info("upload URL issued")
    return _json(201, ticket.model_dump(mode="json"))


@app.get(
    "/assets/<assetId>",
    summary="Get an asset's state and probed facts",
    tags=["assets"],
    operation_id="getAsset",
    responses=GET_ASSET_RESPONSES,
)
def get_asset(assetId: AssetId):  # noqa: N803 (the path parameter's public name)
    return _json(200, get_asset_view(assetId))


@app.get(
    OPENAPI_PATH,
    summary="This OpenAPI document",
    tags=["documentation"],
    operation_id="getOpenApiDocument",
    responses=OPENAPI_RESPONSES,
)
def get_openapi_document():
    return _json(200, openapi_document(app, server_url=_base_url()))


@app.get(
    DOCS_PATH,
    summary="Swagger UI for this document",
    tags=["documentation"],
    operation_id="getDocs",
    responses=DOCS_RESPONSES,
)
def get_docs():
    return Response(
        status_code=200, content_type="text/html; charset=utf-8", body=swagger_ui_html()
    )


@app.exception_handler(PaymentRequired)
def payment_required(error: PaymentRequired) -> Response:
    metrics.add_metric(name="PaymentsRejected", unit=MetricUnit.Count, value=1)
    # The same count by reason, from a fresh metric set, so `reason` stays off other metrics.
    by_reason = EphemeralMetrics()
    by_reason.add_dimension(name="reason", value=error.code)
    by_reason.add_metric(name="PaymentsRejected", unit=MetricUnit.Count, value=1)
    by_reason.flush_metrics()
    logger.info("payment rejected", reason=error.code)
    # x402 clients parse this body as the v1 challenge, where `error` must be a string, so
    # the machine-readable reason goes in `reason` instead of the usual error object.
    body, headers = challenge(get_settings(), _resource_url(), error.message)
    body["reason"] = error.code
    return _json(402, body, headers)


@app.exception_handler(PaymentConflict)
def payment_conflict(error: PaymentConflict) -> Response:
    logger.info("payment conflict", code=error.code)
    in_progress = error.code == "payment_in_progress"
    headers = {RETRY_AFTER_HEADER: RETRY_AFTER_SECONDS} if in_progress else None
    return _json(409, error.to_body(), headers)


@app.exception_handler(PaymentPending)
def payment_pending(error: PaymentPending) -> Response:
    # The client has paid or may have paid: it must retry with the same payment, not a new one.
    logger.warning("settlement not confirmed", code=error.code, detail=error.detail)
    return _json(503, error.to_body(), {RETRY_AFTER_HEADER: RETRY_AFTER_SECONDS})


@app.exception_handler(EclipticError)
def ecliptic_error(error: EclipticError) -> Response:
    if error.status >= 500:
        logger.error("request failed", code=error.code, detail=str(error.detail))
    else:
        logger.info("request rejected", code=error.code, field=error.field)
    # Every 503 (a dependency failed, the job was not started) is safe to retry.
    headers = {RETRY_AFTER_HEADER: RETRY_AFTER_SECONDS} if error.status == 503 else None
    return _json(error.status, error.to_body(), headers)


@app.exception_handler(Exception)
def unexpected_error(error: Exception) -> Response:
    # Anything not raised on purpose: keep the traceback in the logs, not in the response.
    logger.exception("unexpected error", error_type=type(error).__name__)
    body = {
        "error": {
            "code": "internal_error",
            "message": "The request failed on our side; retrying later is safe.",
        }
    }
    return _json(500, body)


@app.not_found
def route_not_found(_: NotFoundError) -> Response:
    path = app.current_event.raw_path
    return _json(404, {"error": {"code": "route_not_found", "message": f"No route {path}."}})


@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True
)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
