"""`POST /montages`: validate, take the payment, write the job, start its execution.

The order is fixed by what may go wrong: a request that cannot run is rejected before any
payment is asked for; a payment is claimed before it is settled, so a replayed header never
settles twice; the job is written and started only after settlement, and a retry with the
same payment resumes a job whose start failed instead of charging again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from ecliptic.aws import stepfunctions_client
from ecliptic.config import Settings, get_settings
from ecliptic.errors import (
    AssetNotUsable,
    EclipticError,
    InvalidRequest,
    NotFound,
    PaymentConflict,
    ServiceUnavailable,
)
from ecliptic.ids import asset_kind, new_asset_id, new_job_id
from ecliptic.jobs import JobStore, utc_now
from ecliptic.models import (
    Asset,
    AssetState,
    Job,
    JobStatus,
    MediaKind,
    MediaRef,
    MontageAccepted,
    MontageRequest,
    Payment,
)
from ecliptic.storage import asset_object_key

logger = logging.getLogger(__name__)

# How long a request waits for a concurrent request with the same payment to write its job.
CLAIM_WAIT_SECONDS = 5.0


@dataclass
class Submission:
    accepted: MontageAccepted
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


def parse_request(body: str | bytes | None) -> MontageRequest:
    """Parse and validate the JSON body, naming the first field at fault."""
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON montage request.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"The request body is not valid JSON: {error}.") from error
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return MontageRequest.model_validate(data)
    except ValidationError as error:
        raise invalid_request_from(error) from error


def invalid_request_from(error: ValidationError) -> InvalidRequest:
    first = error.errors()[0]
    location = _field_path(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Field `{location}`: {message}.", field=location)


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def body_hash(request: MontageRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_assets(
    request: MontageRequest, jobs: JobStore, job_id: str
) -> tuple[str, list[str], list[Asset]]:
    """Check reused asset ids and allocate new ones; return ids and the assets to create."""
    new_assets: list[Asset] = []

    def resolve(ref: MediaRef, kind: MediaKind, field_name: str) -> str:
        if ref.assetId is not None:
            issued_kind = asset_kind(ref.assetId)
            if issued_kind is None:
                raise InvalidRequest(
                    f"`{field_name}.assetId` is not an asset id; use an id this API returned.",
                    field=f"{field_name}.assetId",
                )
            if issued_kind != kind:
                raise AssetNotUsable(
                    f"`{field_name}.assetId` is a {issued_kind} asset; this field needs {kind}.",
                    field=f"{field_name}.assetId",
                )
            asset = jobs.get_asset(ref.assetId)
            if asset is None:
                raise NotFound(
                    f"Asset {ref.assetId} in `{field_name}` does not exist.",
                    field=f"{field_name}.assetId",
                )
            if asset.state != AssetState.STAGED:
                raise AssetNotUsable(
                    f"Asset {ref.assetId} in `{field_name}` is {asset.state}, not staged; "
                    "send its URL again instead.",
                    field=f"{field_name}.assetId",
                )
            return asset.assetId

        asset_id = new_asset_id(kind)
        filename = ref.filename or _filename_from_url(ref.url or "")
        new_assets.append(
            Asset(
                assetId=asset_id,
                kind=kind,
                state=AssetState.PENDING,
                sourceUrl=ref.url,
                filename=filename,
                contentType=ref.contentType,
                key=asset_object_key(asset_id, filename),
                jobId=job_id,
                createdAt=utc_now(),
            )
        )
        return asset_id

    audio_id = resolve(request.audio, MediaKind.AUDIO, "audio")
    video_ids = [
        resolve(ref, MediaKind.VIDEO, f"videos[{index}]")
        for index, ref in enumerate(request.videos)
    ]
    return audio_id, video_ids, new_assets


def _filename_from_url(url: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name[:255] or None


def start_execution(settings: Settings, job: Job) -> None:
    """Start the job's execution; an execution already running under its id is fine."""
    asset_ids = list(dict.fromkeys([job.audioAssetId, *job.videoAssetIds]))
    execution_input = {"jobId": job.jobId, "assets": [{"assetId": a} for a in asset_ids]}
    try:
        stepfunctions_client().start_execution(
            stateMachineArn=settings.state_machine_arn,
            name=job.jobId,
            input=json.dumps(execution_input),
        )
    except ClientError as error:
        if error.response["Error"]["Code"] == "ExecutionAlreadyExists":
            return
        raise ServiceUnavailable(
            "The montage job was recorded but could not be started; retry the same request "
            "with the same payment to start it without paying again.",
            detail=str(error),
        ) from error
    logger.info("execution started", extra={"job_id": job.jobId})


def submit_montage(
    body: str | bytes | None, headers: Mapping[str, str], resource_url: str
) -> Submission:
    """Run the whole submission; raise an `EclipticError` for every rejection."""
    from ecliptic.x402.facilitator import facilitator_from_settings
    from ecliptic.x402.response import payment_response_header
    from ecliptic.x402.verify import verify_payment

    settings = get_settings()
    jobs = JobStore()
    request = parse_request(body)
    job_id = new_job_id()
    audio_id, video_ids, new_assets = resolve_assets(request, jobs, job_id)

    payment = verify_payment(headers, settings, resource_url=resource_url)
    request_hash = body_hash(request)

    claim = jobs.claim_payment(payment.payer, payment.nonce, request_hash)
    if claim is not None:
        return _replay(settings, jobs, claim, request_hash, payment)

    try:
        settlement = facilitator_from_settings(settings).settle(payment)
    except EclipticError as error:
        if error.code != "settlement_pending":
            jobs.release_claim(payment.payer, payment.nonce)
        raise
    settlement_data = settlement.model_dump(mode="json", exclude_none=True)
    jobs.record_settlement(payment.payer, payment.nonce, settlement_data)
    logger.info("payment settled", extra={"job_id": job_id, "payer": payment.payer})

    now = utc_now()
    job = Job(
        jobId=job_id,
        status=JobStatus.QUEUED,
        createdAt=now,
        updatedAt=now,
        username=request.username,
        prompt=request.prompt,
        format=request.format,
        durationSeconds=request.durationSeconds,
        audioAssetId=audio_id,
        videoAssetIds=video_ids,
        payment=Payment(
            payer=settlement.payer or payment.payer,
            transaction=settlement.transaction,
            network=settlement.network,
            amount=str(payment.value),
        ),
    )
    jobs.create_job(
        job, new_assets, payment_claim={"payer": payment.payer, "nonce": payment.nonce}
    )
    start_execution(settings, job)

    name, value = payment_response_header(payment.version, settlement)
    accepted = MontageAccepted(jobId=job_id, audioAssetId=audio_id, videoAssetIds=video_ids)
    return Submission(accepted=accepted, headers={name: value})


def _replay(
    settings: Settings,
    jobs: JobStore,
    claim: dict[str, Any],
    request_hash: str,
    payment: Any,
) -> Submission:
    """Answer a request whose payment was already claimed."""
    from ecliptic.x402.facilitator import Settlement
    from ecliptic.x402.response import payment_response_header

    if claim.get("bodyHash") != request_hash:
        raise PaymentConflict(
            "This payment was already used for a different request; sign a new payment "
            "for this one.",
            code="payment_reused",
        )
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while "jobId" not in claim and time.monotonic() < deadline:
        # A concurrent request with the same payment is settling it right now.
        time.sleep(0.2)
        claim = jobs.get_claim(payment.payer, payment.nonce) or {}
    job_id = claim.get("jobId")
    job = jobs.get_job(job_id) if job_id else None
    if job is None:
        raise PaymentConflict(
            "This payment is still being processed by another request; retry in a few seconds.",
            code="payment_in_progress",
        )
    start_execution(settings, job)
    logger.info("payment replayed", extra={"job_id": job.jobId})

    settlement = Settlement.model_validate(claim.get("settlement") or {})
    name, value = payment_response_header(payment.version, settlement)
    accepted = MontageAccepted(
        jobId=job.jobId,
        audioAssetId=job.audioAssetId,
        videoAssetIds=job.videoAssetIds,
        status=job.status,
    )
    return Submission(accepted=accepted, headers={name: value}, replayed=True)
