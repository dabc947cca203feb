"""Job, asset and payment-claim records in the one DynamoDB table.

Keys: `pk=JOB#<jobId>`, `pk=ASSET#<assetId>`, `pk=PAYMENT#<payer>#<nonce>` and
`pk=GEMINI#<assetId>` (the asset's Gemini Files API upload), each with `sk` equal to the
entity name. Jobs also carry `gsi1pk="JOBS"` and `createdAt` so the
`ByCreatedAt` index lists them newest first. The state machine writes `status`, `progress`,
`updatedAt`, `output` and `error` on job items through its native DynamoDB integration.

A payment claim moves through `claimState` values, each change a conditional write:

- `claimed`: the request holding the lease (`leaseId`, until `leaseExpiresAt` in Unix
  seconds) is calling the facilitator. A claim is deleted again when the facilitator
  rejects the payment or cannot be reached, because then nothing was settled.
- `pending`: the settle outcome is unknown; `pendingTransaction` keeps the facilitator's
  transaction hash when it sent one. A retry takes the lease and settles again.
- `settled`: `settlement` is stored; the job is not written yet.
- `job_written`: `jobId` names the job, written in the same transaction.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from ecliptic.aws import dynamodb_client
from ecliptic.config import get_settings
from ecliptic.errors import InvalidRequest, ServiceUnavailable, code_for_error_name
from ecliptic.models import Asset, Job

logger = logging.getLogger(__name__)

LIST_INDEX = "ByCreatedAt"
USERNAME_INDEX = "ByUsername"
JOBS_PARTITION = "JOBS"

CLAIM_CLAIMED = "claimed"
CLAIM_PENDING = "pending"
CLAIM_SETTLED = "settled"
CLAIM_JOB_WRITTEN = "job_written"
_GEMINI_FILE_FIELDS = ("name", "uri", "mimeType", "expirationTime", "expiresAt")

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def utc_now() -> str:
    """Return the current time as ISO 8601 UTC with milliseconds, the format of every record."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_key(job_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}}


def asset_key(asset_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"ASSET#{asset_id}"}, "sk": {"S": "ASSET"}}


def payment_key(payer: str, nonce: str) -> dict[str, Any]:
    return {"pk": {"S": f"PAYMENT#{payer.lower()}#{nonce.lower()}"}, "sk": {"S": "PAYMENT"}}


def gemini_file_key(asset_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"GEMINI#{asset_id}"}, "sk": {"S": "GEMINI"}}


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    """Serialize plain JSON data (floats included) to DynamoDB attribute values."""
    decimals = json.loads(json.dumps(data), parse_float=Decimal)
    return {name: _serializer.serialize(value) for name, value in decimals.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {name: _plain(inner) for name, inner in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(inner) for inner in value]
    return value


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """Deserialize DynamoDB attribute values to plain JSON data."""
    return {name: _plain(_deserializer.deserialize(value)) for name, value in item.items()}


def _expires_at() -> int:
    return int(time.time()) + get_settings().job_ttl_days * 86400


def _job_from_item(item: dict[str, Any]) -> Job:
    data = from_item(item)
    error = data.get("error")
    if error and "code" in error:
        # The state machine records the Step Functions error name; clients get its code.
        error["code"] = code_for_error_name(error["code"])
    # The state machine writes `updatedAt` from the execution context in its own format.
    # moto adds microseconds and +00:00, so both timestamps are rewritten to ours.
    for name in ("createdAt", "updatedAt"):
        if isinstance(data.get(name), str):
            data[name] = normalize_timestamp(data[name])
    return Job.model_validate({k: v for k, v in data.items() if k in Job.model_fields})


def normalize_timestamp(value: str) -> str:
    """Rewrite an ISO 8601 time as UTC with milliseconds and `Z`; leave other text as is."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    utc = parsed.astimezone(UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClaimChanged(Exception):
    """A conditional write on a payment claim failed: another request changed the claim."""


class JobStore:
    """Reads and writes job, asset and payment-claim items."""

    def __init__(self, table_name: str | None = None) -> None:
        self.table = table_name or get_settings().table_name
        self.client = dynamodb_client()

    # ----- jobs -------------------------------------------------------------------------

    def job_item(self, job: Job) -> dict[str, Any]:
        data = job.model_dump(mode="json", exclude_none=True)
        data.update(pk=f"JOB#{job.jobId}", sk="JOB", gsi1pk=JOBS_PARTITION)
        if job.username:
            data["gsi2pk"] = username_partition(job.username)
        data["expiresAt"] = _expires_at()
        return to_item(data)

    def asset_item(self, asset: Asset) -> dict[str, Any]:
        data = asset.model_dump(mode="json", exclude_none=True)
        data.update(pk=f"ASSET#{asset.assetId}", sk="ASSET")
        return to_item(data)

    def create_job(
        self,
        job: Job,
        new_assets: list[Asset],
        *,
        payment_claim: dict[str, Any] | None = None,
    ) -> None:
        """Write the job, its new assets and the payment claim's job id in one transaction.

        Either every item is written or none is, so a job never exists without its assets
        and a settled payment never points at a job that was not written. `payment_claim`
        contains `payer`, `nonce` and the `settlement` to store on the claim, and the claim
        must not name a job yet, so one payment never gets two jobs.

        Raises
        ------
        ClaimChanged
            When the claim already names a job (or is gone), or a concurrent transaction
            on it won. Read the claim again to find the job.
        ServiceUnavailable
            When DynamoDB fails otherwise.
        """
        items: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": self.job_item(job),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
        ]
        for asset in new_assets:
            items.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": self.asset_item(asset),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        if payment_claim is not None:
            items.append(
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": payment_key(payment_claim["payer"], payment_claim["nonce"]),
                        "UpdateExpression": (
                            "SET jobId = :job, claimState = :state, settlement = :settlement"
                        ),
                        "ConditionExpression": (
                            "attribute_exists(pk) AND attribute_not_exists(jobId)"
                        ),
                        "ExpressionAttributeValues": to_item(
                            {
                                ":job": job.jobId,
                                ":state": CLAIM_JOB_WRITTEN,
                                ":settlement": payment_claim["settlement"],
                            }
                        ),
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as error:
            if payment_claim is not None and _claim_lost_in_transaction(error, len(items) - 1):
                raise ClaimChanged("the payment claim already names a job") from error
            raise ServiceUnavailable(
                "The job could not be recorded; retry the same request with the same payment.",
                detail=str(error),
            ) from error
        logger.info("job written", extra={"job_id": job.jobId, "assets": len(new_assets)})

    def get_job(self, job_id: str) -> Job | None:
        response = self.client.get_item(TableName=self.table, Key=job_key(job_id))
        item = response.get("Item")
        return _job_from_item(item) if item else None

    def list_jobs(
        self, limit: int, cursor: str | None = None, username: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Return up to `limit` jobs, newest first, and the cursor of the next page.

        With `username`, only that user's jobs are listed (exact match, through the
        `ByUsername` index). A cursor is only valid with the filter it was made with.
        """
        if username:
            index, partition_name, partition = USERNAME_INDEX, "gsi2pk", username_partition(
                username
            )
        else:
            index, partition_name, partition = LIST_INDEX, "gsi1pk", JOBS_PARTITION
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": f"{partition_name} = :partition",
            "ExpressionAttributeValues": {":partition": {"S": partition}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            query["ExclusiveStartKey"] = _decode_cursor(cursor, partition_name, partition)
        response = self.client.query(**query)
        jobs = [_job_from_item(item) for item in response.get("Items", [])]
        last_key = response.get("LastEvaluatedKey")
        return jobs, _encode_cursor(last_key) if last_key else None

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set top-level job attributes (and `updatedAt`)."""
        fields["updatedAt"] = utc_now()
        names = {f"#f{i}": name for i, name in enumerate(fields)}
        values = to_item({f":v{i}": value for i, value in enumerate(fields.values())})
        assignments = ", ".join(f"#f{i} = :v{i}" for i in range(len(fields)))
        self.client.update_item(
            TableName=self.table,
            Key=job_key(job_id),
            UpdateExpression=f"SET {assignments}",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    # ----- assets -----------------------------------------------------------------------

    def get_asset(self, asset_id: str) -> Asset | None:
        response = self.client.get_item(TableName=self.table, Key=asset_key(asset_id))
        item = response.get("Item")
        if not item:
            return None
        data = from_item(item)
        return Asset.model_validate({k: v for k, v in data.items() if k in Asset.model_fields})

    def put_asset(self, asset: Asset) -> None:
        self.client.put_item(TableName=self.table, Item=self.asset_item(asset))

    # ----- Gemini Files API uploads ---------------------------------------------------------

    def set_asset_gemini_file(
        self, asset_id: str, *, name: str, uri: str, mime_type: str, expires_at: datetime
    ) -> None:
        """Remember the Gemini file that contains an asset's bytes, until the file expires.

        The record is its own item (`pk=GEMINI#<assetId>`), so rewriting the asset item
        never drops it. The table's TTL attribute `expiresAt` removes it after expiry.
        """
        data = {
            "name": name,
            "uri": uri,
            "mimeType": mime_type,
            "expirationTime": expires_at.astimezone(UTC).isoformat(),
            "expiresAt": int(expires_at.timestamp()),
        }
        item = to_item(data)
        item.update(gemini_file_key(asset_id))
        self.client.put_item(TableName=self.table, Item=item)

    def get_asset_gemini_file(self, asset_id: str) -> dict[str, Any] | None:
        """Return `{name, uri, mimeType, expirationTime, expiresAt}` for the asset, or None."""
        response = self.client.get_item(TableName=self.table, Key=gemini_file_key(asset_id))
        item = response.get("Item")
        if not item:
            return None
        data = from_item(item)
        return {name: data[name] for name in _GEMINI_FILE_FIELDS if name in data}

    # ----- payment claims -----------------------------------------------------------------

    def claim_payment(
        self,
        payer: str,
        nonce: str,
        body_hash: str,
        *,
        lease_id: str,
        lease_seconds: int,
    ) -> dict[str, Any] | None:
        """Claim `(payer, nonce)` once, holding the lease. Return None when this call made it.

        Otherwise return the existing claim (`bodyHash`, `claimState`, lease fields,
        `jobId` when written, `settlement` when settled), so the caller can replay or
        reject the request. An empty dict means the claim was deleted in between.

        Raises
        ------
        ServiceUnavailable
            When DynamoDB fails.
        """
        item = to_item(
            {
                "claimState": CLAIM_CLAIMED,
                "bodyHash": body_hash,
                "claimedAt": utc_now(),
                "leaseId": lease_id,
                "leaseExpiresAt": int(time.time()) + lease_seconds,
                "attempts": 1,
                "expiresAt": _expires_at(),
            }
        )
        item.update(payment_key(payer, nonce))
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
            return None
        except ClientError as error:
            if not _condition_failed(error):
                raise ServiceUnavailable(
                    "The payment could not be recorded; retry the same request.",
                    detail=str(error),
                ) from error
        return self.get_claim(payer, nonce) or {}

    def get_claim(self, payer: str, nonce: str) -> dict[str, Any] | None:
        """Return the claim of `(payer, nonce)` with a strongly consistent read, or None."""
        try:
            response = self.client.get_item(
                TableName=self.table, Key=payment_key(payer, nonce), ConsistentRead=True
            )
        except ClientError as error:
            raise ServiceUnavailable(
                "The payment could not be looked up; retry the same request.",
                detail=str(error),
            ) from error
        item = response.get("Item")
        return from_item(item) if item else None

    def take_over_claim(
        self,
        payer: str,
        nonce: str,
        body_hash: str,
        *,
        lease_id: str,
        lease_seconds: int,
    ) -> bool:
        """Take the lease of a `pending` claim, or of a `claimed` one whose lease expired.

        Return False when another request holds the lease or the claim moved on.
        """
        now = int(time.time())
        try:
            self.client.update_item(
                TableName=self.table,
                Key=payment_key(payer, nonce),
                UpdateExpression=(
                    "SET claimState = :claimed, leaseId = :lease, leaseExpiresAt = :until, "
                    "attempts = if_not_exists(attempts, :zero) + :one"
                ),
                ConditionExpression=(
                    "bodyHash = :hash AND attribute_not_exists(jobId) AND "
                    "(claimState = :pending OR (claimState = :claimed AND leaseExpiresAt < :now))"
                ),
                ExpressionAttributeValues=to_item(
                    {
                        ":claimed": CLAIM_CLAIMED,
                        ":pending": CLAIM_PENDING,
                        ":lease": lease_id,
                        ":until": now + lease_seconds,
                        ":now": now,
                        ":hash": body_hash,
                        ":zero": 0,
                        ":one": 1,
                    }
                ),
            )
        except ClientError as error:
            if _condition_failed(error):
                return False
            raise ServiceUnavailable(
                "The payment could not be recorded; retry the same request.",
                detail=str(error),
            ) from error
        logger.info("payment claim taken over", extra={"payer": payer, "nonce": nonce})
        return True

    def mark_pending(
        self,
        payer: str,
        nonce: str,
        *,
        lease_id: str,
        transaction: str | None,
        reason: str,
    ) -> None:
        """Record that the settle outcome is unknown and give up the lease.

        Raises
        ------
        ClaimChanged
            When this request no longer holds the lease.
        """
        values: dict[str, Any] = {
            ":pending": CLAIM_PENDING,
            ":claimed": CLAIM_CLAIMED,
            ":lease": lease_id,
            ":reason": reason,
            ":at": utc_now(),
        }
        assignments = "claimState = :pending, lastReason = :reason, pendingAt = :at"
        if transaction:
            values[":transaction"] = transaction
            assignments += ", pendingTransaction = :transaction"
        self._update_leased_claim(
            payer,
            nonce,
            f"SET {assignments} REMOVE leaseId, leaseExpiresAt",
            values,
        )

    def record_settlement(self, payer: str, nonce: str, settlement: dict[str, Any]) -> None:
        """Store a successful settlement on a `claimed` or `pending` claim.

        Any request that holds a settlement may store it, with or without the lease: a
        request whose lease expired during a slow settle call still reports a transfer
        that happened.

        Raises
        ------
        ClaimChanged
            When the claim is gone, already settled or already names a job.
        ServiceUnavailable
            When DynamoDB fails otherwise.
        """
        try:
            self.client.update_item(
                TableName=self.table,
                Key=payment_key(payer, nonce),
                UpdateExpression=(
                    "SET claimState = :settled, settlement = :settlement "
                    "REMOVE leaseId, leaseExpiresAt"
                ),
                ConditionExpression=(
                    "attribute_exists(pk) AND attribute_not_exists(jobId) AND "
                    "claimState IN (:claimed, :pending)"
                ),
                ExpressionAttributeValues=to_item(
                    {
                        ":settled": CLAIM_SETTLED,
                        ":settlement": settlement,
                        ":claimed": CLAIM_CLAIMED,
                        ":pending": CLAIM_PENDING,
                    }
                ),
            )
        except ClientError as error:
            if _condition_failed(error):
                raise ClaimChanged("the payment claim is already settled") from error
            raise ServiceUnavailable(
                "The payment could not be recorded; retry the same request.",
                detail=str(error),
            ) from error

    def release_claim(self, payer: str, nonce: str, *, lease_id: str) -> bool:
        """Delete an unsettled claim this request holds, so the payment can be retried.

        Return False when the claim changed hands or moved on, and was left as it is.
        """
        try:
            self.client.delete_item(
                TableName=self.table,
                Key=payment_key(payer, nonce),
                ConditionExpression=(
                    "claimState = :claimed AND leaseId = :lease AND attribute_not_exists(jobId)"
                ),
                ExpressionAttributeValues=to_item(
                    {":claimed": CLAIM_CLAIMED, ":lease": lease_id}
                ),
            )
        except ClientError as error:
            if _condition_failed(error):
                return False
            raise ServiceUnavailable(
                "The payment could not be released; retry the same request.",
                detail=str(error),
            ) from error
        return True

    def _update_leased_claim(
        self, payer: str, nonce: str, expression: str, values: dict[str, Any]
    ) -> None:
        try:
            self.client.update_item(
                TableName=self.table,
                Key=payment_key(payer, nonce),
                UpdateExpression=expression,
                ConditionExpression="claimState = :claimed AND leaseId = :lease",
                ExpressionAttributeValues=to_item(values),
            )
        except ClientError as error:
            if _condition_failed(error):
                raise ClaimChanged("another request has the payment claim's lease") from error
            raise ServiceUnavailable(
                "The payment could not be recorded; retry the same request.",
                detail=str(error),
            ) from error


def _condition_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


def _claim_lost_in_transaction(error: ClientError, claim_index: int) -> bool:
    # TransactWriteItems reports one cancellation reason per item, in request order.
    if error.response["Error"]["Code"] != "TransactionCanceledException":
        return False
    reasons = error.response.get("CancellationReasons") or []
    if len(reasons) <= claim_index:
        return False
    return reasons[claim_index].get("Code") in {"ConditionalCheckFailed", "TransactionConflict"}


def _encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, partition_name: str, partition: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(key, dict) or set(key) != {"pk", "sk", partition_name, "createdAt"}:
            raise ValueError("unexpected cursor keys")
        for value in key.values():
            if not (isinstance(value, dict) and set(value) == {"S"}):
                raise ValueError("cursor values must be strings")
            if not isinstance(value["S"], str):
                raise ValueError("cursor values must be strings")
        if key[partition_name] != {"S": partition}:
            raise ValueError("cursor of another listing")
        return key
    except ValueError as error:
        raise InvalidRequest(
            "The cursor is not one this listing returned; pass the `cursor` from the last page "
            "with the same `username` filter.",
            field="cursor",
        ) from error


def username_partition(username: str) -> str:
    return f"USER#{username}"
