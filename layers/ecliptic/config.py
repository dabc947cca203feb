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

    # Media staging.
    allow_loopback_urls: bool = False
    fetch_timeout_seconds: float = 60.0
    max_audio_bytes: int = 100 * 1024 * 1024
    max_video_bytes: int = 500 * 1024 * 1024

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
