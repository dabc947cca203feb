"""The `Report success` and `Report failure` steps: job metrics and the job's webhook.

Both run for every job, right after `Record success` or `Record failure`. The metrics are
returned for the handler to publish, and the webhook goes out only when the job has a
`callbackUrl`. Nothing here changes the job: a webhook that fails is logged and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ecliptic.config import get_settings
from ecliptic.errors import NotFound
from ecliptic.jobs import JobStore
from ecliptic.models import Job, JobStatus
from ecliptic.views import job_view
from ecliptic.webhooks import deliver, load_secret, webhook_limits

logger = logging.getLogger(__name__)

OUTCOME_METRICS = {JobStatus.SUCCEEDED: "JobsSucceeded", JobStatus.FAILED: "JobsFailed"}
WEBHOOK_EVENTS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed"}


@dataclass(frozen=True)
class MetricPoint:
    """One metric value to publish; `unit` is a CloudWatch unit name."""

    name: str
    unit: str
    value: float


@dataclass
class OutcomeReport:
    """Result of `report_outcome`: the metrics to publish and the webhook's outcome.

    `webhook` is `not_requested`, `delivered`, `rejected` (the receiver or the URL check
    rejected it), `failed` (retries exhausted), `no_secret` or `skipped` (the job record
    does not contain the reported outcome).
    """

    job_id: str
    outcome: JobStatus
    webhook: str
    webhook_attempts: int = 0
    metrics: list[MetricPoint] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "outcome": self.outcome.value,
            "webhook": self.webhook,
            "webhookAttempts": self.webhook_attempts,
        }


def report_outcome(
    job_id: str, outcome: JobStatus, *, deadline: float | None = None
) -> OutcomeReport:
    """Count the job's outcome and send its webhook when it has a `callbackUrl`.

    `deadline` is a `time.monotonic()` value that no webhook retry may run past.

    Raises
    ------
    NotFound
        The job does not exist.
    ValueError
        `outcome` is not `succeeded` or `failed`.
    """
    if outcome not in OUTCOME_METRICS:
        raise ValueError(f"outcome must be succeeded or failed, not {outcome}")
    job = JobStore().get_job(job_id)
    if job is None:
        raise NotFound(f"Job {job_id} does not exist.")

    report = OutcomeReport(job_id=job_id, outcome=outcome, webhook="not_requested")
    report.metrics.append(MetricPoint(OUTCOME_METRICS[outcome], "Count", 1))
    seconds = _job_seconds(job)
    if seconds is not None:
        report.metrics.append(MetricPoint("JobSeconds", "Seconds", seconds))

    if job.callbackUrl is not None:
        _send_webhook(job, job.callbackUrl, report, deadline)
        delivered = report.webhook == "delivered"
        name = "WebhooksDelivered" if delivered else "WebhooksFailed"
        report.metrics.append(MetricPoint(name, "Count", 1))
    logger.info(
        "outcome reported",
        extra={"job_id": job_id, "outcome": outcome.value, "webhook": report.webhook},
    )
    return report


def _send_webhook(
    job: Job, callback_url: str, report: OutcomeReport, deadline: float | None
) -> None:
    if job.status != report.outcome:
        # Record failure could not write the job: its record would contradict the event.
        logger.error(
            "job record does not contain the outcome, so no webhook is sent",
            extra={"job_id": job.jobId, "status": job.status.value},
        )
        report.webhook = "skipped"
        return
    settings = get_settings()
    secret = load_secret(settings)
    if secret is None:
        report.webhook = "no_secret"
        return

    payload = {"event": WEBHOOK_EVENTS[report.outcome], "job": job_view(job)}
    result = deliver(
        callback_url,
        payload,
        secret,
        limits=webhook_limits(settings),
        attempts=settings.webhook_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        deadline=deadline,
    )
    report.webhook = result.outcome
    report.webhook_attempts = result.attempts


def _job_seconds(job: Job) -> float | None:
    """Return the seconds from the job's creation until now, or None if unparsable."""
    try:
        created = datetime.fromisoformat(job.createdAt.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round(max(0.0, time.time() - created.astimezone(UTC).timestamp()), 3)
