"""Unguessable identifiers for jobs and assets."""

from __future__ import annotations

import re
import secrets

from ecliptic.models import MediaKind

_PREFIX = {MediaKind.AUDIO: "aud", MediaKind.VIDEO: "vid"}
JOB_ID_PATTERN = re.compile(r"^job_[0-9a-z]{20}$")
ASSET_ID_PATTERN = re.compile(r"^(aud|vid)_[0-9a-z]{20}$")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _random_token(length: int = 20) -> str:
    # 20 base-36 characters carry about 103 bits of randomness.
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_job_id() -> str:
    return f"job_{_random_token()}"


def new_asset_id(kind: MediaKind) -> str:
    return f"{_PREFIX[kind]}_{_random_token()}"


def asset_kind(asset_id: str) -> MediaKind | None:
    """Return the kind an asset id was issued for, or None when it is not an asset id."""
    if not ASSET_ID_PATTERN.match(asset_id):
        return None
    return MediaKind.AUDIO if asset_id.startswith("aud_") else MediaKind.VIDEO
