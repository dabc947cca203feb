"""`POST /montages`: validate, take the payment, write the job, start its execution.

The order is fixed by what may go wrong. A request that cannot run is rejected before any
payment is requested. A payment is claimed before it is settled, so a replayed or
concurrent header never settles twice. The job is written and started only after
settlement. A retry with the same payment and body finishes what an earlier request left
undone, without charging again. It settles again after an unknown outcome, creates the job
of a settled payment, or starts a job that was written but not started.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ecliptic.aws import stepfunctions_client
from ecliptic.bodies import parse_json_body
from ecliptic.config import Settings, get_settings
from ecliptic.errors import (
    AssetNotUsable,
    InvalidRequest,
    NotFound,
    PaymentConflict,
    PaymentPending,
    PaymentRequired,
    ServiceUnavailable,
)
from ecliptic.forms import (
    FormFile,
    form_body_hash,
    is_multipart,
    parse_montage_form,
    stage_form_files,
)
from ecliptic.ids import asset_kind, new_asset_id, new_job_id
from ecliptic.jobs import (
    CLAIM_CLAIMED,
    CLAIM_PENDING,
    CLAIM_SETTLED,
    ClaimChanged,
    JobStore,
    utc_now,
)
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
from ecliptic.uploads import check_upload_received, is_pending_upload
from ecliptic.webhooks import check_callback_url
from ecliptic.x402.facilitator import Settlement, facilitator_from_settings
from ecliptic.x402.requirements import network_by_name
from ecliptic.x402.response import payment_response_header
from ecliptic.x402.verify import check_payment_window, verify_payment

if TYPE_CHECKING:
    from ecliptic.x402.chain import AuthorizationOnChain
    from ecliptic.x402.facilitator import Facilitator
    from ecliptic.x402.verify import VerifiedPayment

logger = logging.getLogger(__name__)

# Lease on a claimed payment: how long one request may call the facilitator for it. The
# API function times out after 29 s. HttpFacilitator's verify and settle requests take at
# most about 26 s together (3.05 s connect and 10 s read timeouts each). So a lease older
# than this belongs to a request that has ended.
SETTLE_LEASE_SECONDS = 35
# How long a request waits for a concurrent request with the same payment.
CLAIM_WAIT_SECONDS = 8.0


@dataclass
class Submission:
    accepted: MontageAccepted
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


def parse_request(body: str | bytes | None) -> MontageRequest:
    """Parse and validate the JSON body, naming the first field at fault."""
    return parse_json_body(body, MontageRequest, "send a JSON montage request.")


def body_hash(request: MontageRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_assets(
    request: MontageRequest, jobs: JobStore, job_id: str
) -> tuple[str, list[str], list[Asset]]:
    """Check reused asset ids and allocate new ones; return ids and the assets to create."""
    max_videos = get_settings().max_videos
    if len(request.videos) > max_videos:
        raise InvalidRequest(
            f"Field `videos`: at most {max_videos} clips per montage, got {len(request.videos)}.",
            field="videos",
        )
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
            if is_pending_upload(asset):
                check_upload_received(asset, field=field_name)
            elif asset.state != AssetState.STAGED:
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
    execution_input = {
        "jobId": job.jobId,
        "assets": [{"assetId": asset_id} for asset_id in asset_ids],
    }
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
    """Run the whole submission; raise an `EclipticError` for every rejection.

    Raises
    ------
    InvalidRequest, AssetNotUsable, NotFound
        The body is malformed or names unusable assets (before any payment is looked at).
    PaymentRequired
        No payment, or one that local verification or the facilitator rejected (402).
    PaymentConflict
        The payment was used for another body, or is being settled by another request.
    PaymentPending
        The settle outcome is not known yet; retry the same request (503).
    ServiceUnavailable
        A dependency failed; retry the same request with the same payment (503).
    """
    settings = get_settings()
    jobs = JobStore()
    content_type = next(
        (value for name, value in headers.items() if name.lower() == "content-type"), ""
    )
    form = parse_montage_form(body or b"", content_type) if is_multipart(content_type) else None
    request = form.request if form is not None else parse_request(body)
    check_callback_url(request.callbackUrl, settings)
    job_id = new_job_id()
    audio_id, video_ids, new_assets = resolve_assets(request, jobs, job_id)
    draft = JobDraft(
        job_id, request, audio_id, video_ids, new_assets, form.files if form is not None else []
    )

    # The window is checked later, because a retry of a claimed payment gets its job even
    # after its authorization expired.
    payment = verify_payment(headers, settings, resource_url=resource_url, check_window=False)
    facilitator = facilitator_from_settings(settings)

    return PaidSubmission(settings, jobs, facilitator, payment, draft).run()


@dataclass
class JobDraft:
    """The job a request would create, with the ids allocated before payment."""

    job_id: str
    request: MontageRequest
    audio_id: str
    video_ids: list[str]
    new_assets: list[Asset]
    files: list[FormFile] = field(default_factory=list)

    def job(self, settlement: Settlement) -> Job:
        """Return the queued job, paid by `settlement`."""
        now = utc_now()
        return Job(
            jobId=self.job_id,
            status=JobStatus.QUEUED,
            createdAt=now,
            updatedAt=now,
            username=self.request.username,
            prompt=self.request.prompt,
            format=self.request.format,
            durationSeconds=self.request.durationSeconds,
            callbackUrl=self.request.callbackUrl,
            audioAssetId=self.audio_id,
            videoAssetIds=self.video_ids,
            payment=Payment(
                payer=settlement.payer,
                transaction=settlement.transaction,
                network=settlement.network,
                amount=settlement.amount,
            ),
        )


class PaidSubmission:
    """Takes one verified payment through its claim to a started job.

    Every step is a conditional write on the payment claim (see `ecliptic.jobs`). So one
    request at a time, the holder of the claim's lease, calls the facilitator for a
    payment, and a payment gets at most one job. A request that finds the work half done
    finishes it.
    """

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        facilitator: Facilitator,
        payment: VerifiedPayment,
        draft: JobDraft,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.facilitator = facilitator
        self.payment = payment
        self.draft = draft
        self.request_hash = form_body_hash(body_hash(draft.request), draft.files)
        self.lease_id = secrets.token_hex(16)
        self._ids = {"payer": payment.payer, "nonce": payment.nonce, "job_id": draft.job_id}

    def run(self) -> Submission:
        """Claim the payment and settle it, or continue from the claim that exists."""
        try:
            check_payment_window(self.payment, self.settings)
        except PaymentRequired:
            claim = self.jobs.get_claim(self.payment.payer, self.payment.nonce)
            if claim is None:
                raise
            return self._resume(claim)

        claim = self._claim()
        if claim is not None:
            return self._resume(claim)
        logger.info("payment claimed", extra=self._ids)
        try:
            return self._settle_and_start(reconcile=False)
        except ClaimChanged:
            return self._resume(self._read_claim())

    # ----- claim states ---------------------------------------------------------------

    def _resume(self, claim: dict[str, Any]) -> Submission:
        # Continue from an existing claim. A concurrent request that has the claim's
        # lease is given a bounded time to finish.
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        first_look = True
        for delay in _poll_delays():
            try:
                if not claim:
                    # Deleted: its request was rejected or could not reach the facilitator.
                    check_payment_window(self.payment, self.settings)
                    claim = self._claim()
                    if claim is None:
                        logger.info("released payment claimed again", extra=self._ids)
                        return self._settle_and_start(reconcile=False)
                    continue

                if claim.get("bodyHash") != self.request_hash:
                    raise PaymentConflict(
                        "This payment was already used for a different request body; sign "
                        "a new payment for this one.",
                        code="payment_reused",
                    )
                state = claim.get("claimState")
                if claim.get("jobId"):
                    return self._replay(claim)
                if state == CLAIM_SETTLED:
                    logger.warning("settled payment has no job yet, creating it", extra=self._ids)
                    return self._start_job(Settlement.model_validate(claim["settlement"]))
                if (state == CLAIM_PENDING and first_look) or _lease_expired(claim):
                    if self._take_over():
                        return self._settle_and_start(reconcile=True)
                elif state == CLAIM_PENDING:
                    # Another request settled again moments ago and got no final result.
                    raise _pending_error(claim)
            except ClaimChanged:
                claim = {}  # another request moved the claim on; read it again below

            if time.monotonic() + delay > deadline:
                if claim.get("claimState") == CLAIM_PENDING:
                    raise _pending_error(claim)
                raise PaymentConflict(
                    "Another request with this payment is still being processed. Retry the "
                    "same request in a few seconds.",
                    code="payment_in_progress",
                )
            time.sleep(delay)
            first_look = False
            claim = self._read_claim()
        raise AssertionError("unreachable: _poll_delays() never ends")  # pragma: no cover

    def _settle_and_start(self, *, reconcile: bool) -> Submission:
        # Holding the lease: settle (or settle again), record the result, start the job.
        try:
            settlement = self.facilitator.settle(self.payment, reconcile=reconcile)
        except PaymentPending as error:
            transaction = (error.detail or {}).get("transaction")
            self._mark_pending(transaction=transaction, reason=error.code)
            raise
        except (PaymentRequired, ServiceUnavailable) as error:
            if not reconcile:
                # Nothing was settled, so the payment may be sent again.
                self.jobs.release_claim(
                    self.payment.payer, self.payment.nonce, lease_id=self.lease_id
                )
                raise
            # An earlier settle of this payment may have moved the funds, and a rejection
            # now (e.g. "nonce already used") cannot tell. A 402 would make the client pay
            # twice, so only the token contract decides.
            try:
                settlement = self._settlement_on_chain(error)
            except (PaymentRequired, PaymentPending):
                raise
            except Exception:
                self._mark_pending(transaction=None, reason="internal_error")
                raise
        except Exception:
            # An unexpected failure may have come after the settle request was sent.
            self._mark_pending(transaction=None, reason="internal_error")
            raise

        logger.info(
            "payment settled",
            extra={**self._ids, "transaction": settlement.transaction, "reconcile": reconcile},
        )
        try:
            self.jobs.record_settlement(
                self.payment.payer,
                self.payment.nonce,
                settlement.model_dump(mode="json", exclude_none=True),
            )
        except ServiceUnavailable:
            # create_job stores the settlement as well. If that fails too, this log line
            # is the record of the transfer.
            logger.error(
                "settlement not recorded",
                extra={**self._ids, "transaction": settlement.transaction},
            )
        return self._start_job(settlement)

    def _settlement_on_chain(self, error: PaymentRequired | ServiceUnavailable) -> Settlement:
        """Decide a payment whose second settle failed after an unknown outcome, on chain.

        Returns the settlement when a transfer that used the authorization paid the
        service. Releases the claim and raises a 402 when the authorization expired
        unused or was cancelled, since nothing was charged then. Otherwise, or without
        `chain_rpc_url`, the claim stays pending and the request gets a 503, so that the
        client retries later.
        """
        found = self._read_chain()
        outcome = found.outcome if found is not None else "not read"
        if found is not None and outcome == "paid" and found.transaction:
            logger.warning(
                "settlement found on chain after an unknown outcome",
                extra={**self._ids, "transaction": found.transaction},
            )
            return Settlement(
                success=True,
                transaction=found.transaction,
                network=self.payment.network,
                payer=self.payment.payer,
                amount=self.payment.value,
            )
        if outcome in ("expired", "cancelled") and self.jobs.release_claim(
            self.payment.payer, self.payment.nonce, lease_id=self.lease_id
        ):
            logger.warning("authorization %s on chain; claim released", outcome, extra=self._ids)
            fate = "expired unused" if outcome == "expired" else "was cancelled by the payer"
            raise PaymentRequired(
                f"The earlier settlement of this payment did not go through, and its "
                f"authorization {fate}, so nothing was charged. Sign a new payment and send "
                f"the request again.",
                code=outcome,
            ) from error

        self._mark_pending(transaction=None, reason=error.code)
        logger.error(
            "settle again after an unknown outcome failed",
            extra={**self._ids, "reason": error.code, "on_chain": outcome},
        )
        raise PaymentPending(
            f"An earlier settlement of this payment was not confirmed, and settling it "
            f"again failed ({error.code}). Do not sign a new payment for this request: "
            f"retry it later with the same payment, or contact the operator with payer "
            f"{self.payment.payer} and nonce {self.payment.nonce}.",
            code="settlement_unconfirmed",
        ) from error

    def _read_chain(self) -> AuthorizationOnChain | None:
        """Read the authorization from the token contract; None when that is not possible."""
        if not self.settings.chain_rpc_url:
            return None
        from ecliptic.x402.chain import ChainReader, ChainReadFailed, PaymentTerms

        terms = PaymentTerms(
            asset=self.settings.payment_asset,
            chain_id=network_by_name(self.settings.payment_network).chain_id,
            payer=self.payment.payer,
            pay_to=self.settings.pay_to,
            price=int(self.payment.value),
            nonce=self.payment.nonce,
            valid_after=self.payment.valid_after,
            valid_before=self.payment.valid_before,
        )
        claimed_at = _claimed_at(self._read_claim())
        if claimed_at is None:
            claimed_at = self.payment.valid_before - self.settings.payment_window_seconds
        try:
            return ChainReader(self.settings.chain_rpc_url).authorization(terms, since=claimed_at)
        except ChainReadFailed as exc:
            logger.error("chain read failed: %s", exc, extra=self._ids)
        except Exception:
            # A malformed result that the reader did not foresee, so nothing is decided.
            logger.exception("chain read failed unexpectedly", extra=self._ids)
        return None

    def _start_job(self, settlement: Settlement) -> Submission:
        job = self.draft.job(settlement)
        stage_form_files(
            self.draft.files, self.draft.audio_id, self.draft.video_ids, self.draft.new_assets
        )
        self.jobs.create_job(
            job,
            self.draft.new_assets,
            payment_claim={
                "payer": self.payment.payer,
                "nonce": self.payment.nonce,
                "settlement": settlement.model_dump(mode="json", exclude_none=True),
            },
        )
        start_execution(self.settings, job)

        name, value = payment_response_header(self.payment.version, settlement)
        accepted = MontageAccepted(
            jobId=job.jobId, audioAssetId=job.audioAssetId, videoAssetIds=job.videoAssetIds
        )
        return Submission(accepted=accepted, headers={name: value})

    def _replay(self, claim: dict[str, Any]) -> Submission:
        job = self.jobs.get_job(claim["jobId"])
        if job is None:
            # The claim and the job are written in one transaction and expire together.
            raise ServiceUnavailable(
                "The job of this payment could not be read; retry the same request.",
                detail={"jobId": claim["jobId"]},
            )
        if job.status == JobStatus.QUEUED:
            # The request that wrote the job may have failed to start it.
            start_execution(self.settings, job)
        logger.info("payment replayed", extra={**self._ids, "job_id": job.jobId})

        settlement = Settlement.model_validate(claim["settlement"])
        name, value = payment_response_header(self.payment.version, settlement)
        accepted = MontageAccepted(
            jobId=job.jobId,
            audioAssetId=job.audioAssetId,
            videoAssetIds=job.videoAssetIds,
            status=job.status,
        )
        return Submission(accepted=accepted, headers={name: value}, replayed=True)

    # ----- store calls ----------------------------------------------------------------

    def _claim(self) -> dict[str, Any] | None:
        return self.jobs.claim_payment(
            self.payment.payer,
            self.payment.nonce,
            self.request_hash,
            lease_id=self.lease_id,
            lease_seconds=SETTLE_LEASE_SECONDS,
        )

    def _read_claim(self) -> dict[str, Any]:
        return self.jobs.get_claim(self.payment.payer, self.payment.nonce) or {}

    def _take_over(self) -> bool:
        taken = self.jobs.take_over_claim(
            self.payment.payer,
            self.payment.nonce,
            self.request_hash,
            lease_id=self.lease_id,
            lease_seconds=SETTLE_LEASE_SECONDS,
        )
        if taken:
            logger.warning("settling a payment again after an unknown outcome", extra=self._ids)
        return taken

    def _mark_pending(self, *, transaction: str | None, reason: str) -> None:
        try:
            self.jobs.mark_pending(
                self.payment.payer,
                self.payment.nonce,
                lease_id=self.lease_id,
                transaction=transaction,
                reason=reason,
            )
        except ClaimChanged:
            # Another request took the lease over; it owns the outcome now.
            logger.warning("payment claim changed hands while settling", extra=self._ids)
        logger.warning(
            "settlement pending",
            extra={**self._ids, "reason": reason, "transaction": transaction},
        )


def _claimed_at(claim: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(claim["claimedAt"])).timestamp()
    except (KeyError, ValueError):
        return None


def _lease_expired(claim: dict[str, Any]) -> bool:
    return (
        claim.get("claimState") == CLAIM_CLAIMED
        and int(claim.get("leaseExpiresAt", 0)) < time.time()
    )


def _poll_delays() -> Iterator[float]:
    # Short first polls catch a concurrent request that is about to finish.
    yield from (0.05, 0.1, 0.2, 0.3)
    yield from itertools.repeat(0.5)


def _pending_error(claim: dict[str, Any]) -> PaymentPending:
    transaction = claim.get("pendingTransaction")
    known = f" (transaction {transaction})" if transaction else ""
    return PaymentPending(
        f"Settlement of this payment is not confirmed yet{known}. Retry the same request "
        "with the same payment in a few seconds; do not sign a new payment.",
        detail={"transaction": transaction, "reason": claim.get("lastReason")},
    )
