"""boto3 clients, created once per process.

The media bucket lives in Cloudflare R2 when `ECLIPTIC_R2_ENDPOINT_URL` is set and in S3
otherwise (the local runtime serves it from moto).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from ecliptic.config import get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def r2_client_config() -> Config:
    """Client settings R2 needs.

    boto3 1.36 and later send aws-chunked bodies with CRC32 trailers by default, which R2
    rejects (501 NotImplemented); `when_required` turns that off for both directions.
    """
    return Config(
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
    )


@lru_cache(maxsize=1)
def media_client() -> S3Client:
    settings = get_settings()
    kwargs: dict[str, Any] = {"config": r2_client_config()}
    if settings.r2_endpoint_url:
        kwargs["endpoint_url"] = settings.r2_endpoint_url
        kwargs["region_name"] = "auto"
    access_key_id, secret_access_key = r2_credentials()
    if access_key_id and secret_access_key:
        kwargs["aws_access_key_id"] = access_key_id
        kwargs["aws_secret_access_key"] = secret_access_key
    return boto3.client("s3", **kwargs)


def r2_credentials() -> tuple[str | None, str | None]:
    """Return the R2 access key pair: from the environment, else from Secrets Manager.

    The secret contains `{"accessKeyId": ..., "secretAccessKey": ...}`. Neither value is logged.
    """
    settings = get_settings()
    if settings.r2_access_key_id and settings.r2_secret_access_key:
        return settings.r2_access_key_id, settings.r2_secret_access_key
    if not settings.r2_credentials_secret_arn:
        return None, None
    from aws_lambda_powertools.utilities import parameters

    secret = parameters.get_secret(settings.r2_credentials_secret_arn, transform="json")
    return secret["accessKeyId"], secret["secretAccessKey"]


@lru_cache(maxsize=1)
def dynamodb_client() -> Any:
    return boto3.client("dynamodb")


@lru_cache(maxsize=1)
def stepfunctions_client() -> Any:
    return boto3.client("stepfunctions")


def reset_clients() -> None:
    """Forget cached clients and settings (the local runtime calls this after set-up)."""
    media_client.cache_clear()
    dynamodb_client.cache_clear()
    stepfunctions_client.cache_clear()
    get_settings.cache_clear()
