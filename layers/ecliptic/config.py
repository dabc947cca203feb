"""Settings read from the environment.

The SAM template sets these variables on each function; the local runtime sets them for
its in-process handlers. Defaults are the published payment terms and deployed behaviour,
so a missing variable never turns on a local-only shortcut.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, Field

BASE_MAINNET_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAY_TO = "0xFdeAE251395004654FBd741824D08Df95315Ed6c"


class Settings(BaseModel):
    # Storage and orchestration.
    table_name: str = "ecliptic-jobs"
    media_bucket: str = "ecliptic-media"
    state_machine_arn: str = ""
    r2_endpoint_url: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: str | None = None
    r2_credentials_secret_arn: str | None = Field(
        default=None,
        description='Secrets Manager secret {"accessKeyId", "secretAccessKey"} for R2',
    )
    public_base_url: str | None = Field(
        default=None, description="serve outputs from this base URL instead of presigning"
    )
    presign_seconds: int = 3600
    job_ttl_days: int = 30

    # x402 payment terms (the published values are the defaults).
    price_atomic: int = 20000
    pay_to: str = PAY_TO
    payment_network: str = "base"
    payment_asset: str = BASE_MAINNET_USDC
    payment_asset_name: str = "USD Coin"
    payment_asset_version: str = "2"
    payment_window_seconds: int = 60
    facilitator_url: str = "https://api.cdp.coinbase.com/platform/v2/x402"
    facilitator_mode: str = Field(default="http", pattern="^(http|offline)$")
    facilitator_credentials_secret_arn: str | None = None
    chain_rpc_url: str | None = Field(
        default=None,
        description="JSON-RPC endpoint of the payment network, read when a settlement "
        "outcome is unknown; it may carry an API key, so it is never logged",
    )

    # Media staging.
    max_videos: int = Field(default=20, ge=1, le=100, description="clips per request")
    allow_loopback_urls: bool = False
    fetch_timeout_seconds: float = Field(
        default=60.0, gt=0, description="max time for one URL download (s), redirects included"
    )
    fetch_read_timeout_seconds: float = Field(
        default=20.0, gt=0, description="max wait for a connection or for the next bytes (s)"
    )
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    fetch_ca_bundle: str | None = Field(
        default=None,
        description="PEM file of CA certificates to trust instead of the system store (tests)",
    )
    max_audio_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    max_video_bytes: int = Field(default=500 * 1024 * 1024, gt=0)
    # Render and analysis download every input to Lambda's /tmp (10,240 MB at most), so the
    # media of one job must leave room there for the output.
    max_total_bytes: int = Field(default=8 * 1024**3, gt=0, description="all media of one job")
    # A Lambda invocation payload is at most 6 MB and API Gateway base64-encodes binary
    # bodies (4 bytes per 3), so raw bodies above about 4.5 MB cannot reach the handler.
    max_request_bytes: int = Field(default=4_500_000, gt=0)
    max_form_parts: int = Field(default=40, gt=0, description="parts in one multipart body")
    upload_url_seconds: int = Field(default=3600, ge=60, le=7 * 86400)
    upload_url_base: str | None = Field(
        default=None,
        description="local runtime only: upload URLs go to this server instead of R2",
    )

    # Planning and rendering.
    output_fps: int = 30
    output_max_side: int = Field(
        default=1920, ge=64, description="scale the output frame down to fit this side (px)"
    )
    max_duration_seconds: float = 180.0
    render_timeout_seconds: float = 840.0
    gemini_model: str = "gemini-2.5-flash"
    gemini_api_key: str | None = None
    gemini_api_key_secret_arn: str | None = None
    gemini_base_url: str | None = Field(
        default=None, description="Gemini API endpoint; unset means the google-genai default"
    )
    gemini_timeout_seconds: float = Field(
        default=150.0,
        gt=0,
        description="time budget (s) of the Gemini planner: media uploads, processing, answer",
    )
    gemini_max_attempts: int = Field(
        default=4, ge=1, description="tries per Gemini request on 408, 429, 5xx and network errors"
    )
    gemini_retry_initial_seconds: float = Field(
        default=2.0, ge=0, description="delay (s) before the first retry; each retry doubles it"
    )
    gemini_poll_seconds: float = Field(
        default=2.0, gt=0, description="interval (s) between Files API state checks"
    )
    gemini_upload_budget_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=0,
        description="upload at most this many bytes of media per job to the Gemini Files API",
    )

    # Webhooks to a job's callbackUrl.
    webhook_secret: str | None = Field(
        default=None, description="HMAC key that signs webhooks (local runs and tests)"
    )
    webhook_secret_arn: str | None = Field(
        default=None, description="Secrets Manager secret whose plain-text value signs webhooks"
    )
    webhook_attempts: int = Field(
        default=5, ge=1, le=10, description="tries per webhook on 408, 429, 5xx and network errors"
    )
    webhook_backoff_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="delay (s) before the first webhook retry; each retry doubles it",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="max time (s) for one webhook attempt"
    )

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from `ECLIPTIC_<FIELD>` environment variables."""
        values: dict[str, str] = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"ECLIPTIC_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        return cls.model_validate(values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings of this process, read once (a Lambda environment never changes)."""
    return Settings.from_env()
