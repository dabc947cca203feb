"""Job, asset and payment-claim records in the one DynamoDB table.

Keys: `pk=JOB#<jobId>`, `pk=ASSET#<assetId>`, `pk=PAYMENT#<payer>#<nonce>`, each with
`sk` equal to the entity name. Jobs also carry `gsi1pk="JOBS"` and `createdAt` so the
`ByCreatedAt` index lists them newest first. The state machine writes `status`, `progress`,
`updatedAt`, `output` and `error` on job items through its native DynamoDB integration.
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
JOBS_PARTITION = "JOBS"

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
    return Job.model_validate({k: v for k, v in data.items() if k in Job.model_fields})


class JobStore:
    """Reads and writes job, asset and payment-claim items."""

    def __init__(self, table_name: str | None = None) -> None:
        self.table = table_name or get_settings().table_name
        self.client = dynamodb_client()

    # ----- jobs -------------------------------------------------------------------------

    def job_item(self, job: Job) -> dict[str, Any]:
        data = job.model_dump(mode="json", exclude_none=True)
        data.update(pk=f"JOB#{job.jobId}", sk="JOB", gsi1pk=JOBS_PARTITION)
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
        and a settled payment never points at a job that was not written.
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
                        "UpdateExpression": "SET jobId = :job, claimState = :state",
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeValues": {
                            ":job": {"S": job.jobId},
                            ":state": {"S": "job_written"},
                        },
                    }
                }
            )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as error:
            raise ServiceUnavailable(
                "The job could not be recorded; retry the same request with the same payment.",
                detail=str(error),
            ) from error
        logger.info("job written", extra={"job_id": job.jobId, "assets": len(new_assets)})

    def get_job(self, job_id: str) -> Job | None:
        response = self.client.get_item(TableName=self.table, Key=job_key(job_id))
        item = response.get("Item")
        return _job_from_item(item) if item else None

    def list_jobs(self, limit: int, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """Return up to `limit` jobs, newest first, and the cursor of the next page."""
        query: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": LIST_INDEX,
            "KeyConditionExpression": "gsi1pk = :jobs",
            "ExpressionAttributeValues": {":jobs": {"S": JOBS_PARTITION}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            query["ExclusiveStartKey"] = _decode_cursor(cursor)
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

    # ----- payment claims -----------------------------------------------------------------

    def claim_payment(self, payer: str, nonce: str, body_hash: str) -> dict[str, Any] | None:
        """Claim `(payer, nonce)` once. Return None when this call made the claim.

        Otherwise return the existing claim (`bodyHash`, `claimState`, `jobId` when written,
        `settlement` when settled), so the caller can replay or reject the request.
        """
        item = to_item(
            {
                "claimState": "claimed",
                "bodyHash": body_hash,
                "claimedAt": utc_now(),
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
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise ServiceUnavailable(
                    "The payment could not be recorded; retry the same request.",
                    detail=str(error),
                ) from error
        return self.get_claim(payer, nonce) or {}

    def get_claim(self, payer: str, nonce: str) -> dict[str, Any] | None:
        response = self.client.get_item(
            TableName=self.table, Key=payment_key(payer, nonce), ConsistentRead=True
        )
        item = response.get("Item")
        return from_item(item) if item else None

    def record_settlement(self, payer: str, nonce: str, settlement: dict[str, Any]) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=payment_key(payer, nonce),
            UpdateExpression="SET claimState = :state, settlement = :settlement",
            ExpressionAttributeValues=to_item(
                {":state": "settled", ":settlement": settlement}
            ),
        )

    def release_claim(self, payer: str, nonce: str) -> None:
        """Drop an unsettled claim so the same payment can be retried."""
        self.client.delete_item(
            TableName=self.table,
            Key=payment_key(payer, nonce),
            ConditionExpression="claimState = :claimed",
            ExpressionAttributeValues={":claimed": {"S": "claimed"}},
        )


def _encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(key, dict) or set(key) != {"pk", "sk", "gsi1pk", "createdAt"}:
            raise ValueError("unexpected cursor keys")
        return key
    except ValueError as error:
        raise InvalidRequest(
            "The cursor is not one this API returned; pass the `cursor` from the last page.",
            field="cursor",
        ) from error
