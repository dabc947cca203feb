"""Response bodies of the public API, as pydantic models for the OpenAPI document.

The handlers build these bodies as dicts (`ecliptic.views`, `ecliptic.uploads`,
`ecliptic.x402.requirements`). These models describe those dicts and are not used to build
them. `tests/test_openapi.py` checks real responses against the document generated from
them. Models that forbid extra fields make a field that the handlers add but the document
lacks fail that test.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ecliptic.models import (
    AssetState,
    ErrorDetail,
    JobStatus,
    MediaKind,
    OutputFormat,
    Payment,
)

JOB_ID_EXAMPLE = "job_0123456789abcdefghij"
AUDIO_ASSET_EXAMPLE = "aud_0123456789abcdefghij"
VIDEO_ASSET_EXAMPLE = "vid_0123456789abcdefghij"
OUTPUT_URL_EXAMPLE = f"https://media.example.com/outputs/daydreams-user/{JOB_ID_EXAMPLE}"


class ErrorBody(BaseModel):
    """The body of every error response except 402."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "Field `videos`: List should have at least 1 item after "
                        "validation, not 0.",
                        "field": "videos",
                    }
                }
            ]
        },
    )

    error: ErrorDetail = Field(
        description="`code` is stable and machine-readable, `message` is for people, and "
        "`field` names the request field at fault when there is one."
    )


class PaymentExtra(BaseModel):
    """The EIP-712 domain of the token contract, which the payer signs against."""

    name: str = Field(examples=["USD Coin"])
    version: str = Field(examples=["2"])


class PaymentRequirement(BaseModel):
    """One entry of `accepts` in the x402 version 1 challenge."""

    scheme: Literal["exact"]
    network: str = Field(description="x402 v1 network name", examples=["base"])
    maxAmountRequired: str = Field(  # noqa: N815 (x402 field name)
        description="price in the token's smallest unit (USDC has 6 decimals)",
        examples=["20000"],
    )
    resource: str = Field(description="URL of the paid request")
    description: str
    mimeType: str  # noqa: N815
    payTo: str = Field(  # noqa: N815
        description="address that receives the payment",
        examples=["0xFdeAE251395004654FBd741824D08Df95315Ed6c"],
    )
    maxTimeoutSeconds: int = Field(  # noqa: N815
        description="maximum validity window of the signed authorization, seconds"
    )
    asset: str = Field(
        description="ERC-20 contract of the token",
        examples=["0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"],
    )
    extra: PaymentExtra


class PaymentChallenge(BaseModel):
    """The 402 body: the x402 version 1 challenge plus a machine-readable `reason`.

    x402 clients parse this body, so `error` is a string here and not the error object that
    other responses carry.
    """

    model_config = ConfigDict(extra="forbid")

    x402Version: Literal[1]  # noqa: N815 (x402 field name)
    error: str = Field(description="why payment is required, for people")
    accepts: list[PaymentRequirement] = Field(min_length=1)
    reason: str = Field(
        description="`payment_required` when no payment was sent, otherwise why the payment "
        "was rejected, for example `invalid_payment_header`, `expired`, `amount_mismatch`, "
        "`wrong_network`, `invalid_signature` or a reason from the facilitator",
        examples=["payment_required"],
    )


class PlanSegment(BaseModel):
    clip: int = Field(description="index into the request's `videos`")
    source: float = Field(description="seconds into the clip where the segment starts")
    start: float = Field(description="seconds into the montage where the segment starts")
    end: float = Field(description="seconds into the montage where the segment ends")


class PlanSummary(BaseModel):
    """A short summary of the plan, with its first segments."""

    planner: Literal["gemini", "beat-grid"]
    note: str | None = Field(default=None, description="why the fallback planner was used")
    segmentCount: int  # noqa: N815
    durationSeconds: float  # noqa: N815
    fps: int
    width: int
    height: int
    audioStart: float = Field(description="song time (s) that plays at montage time 0")  # noqa: N815
    segments: list[PlanSegment]
    segmentsTruncated: bool | None = None  # noqa: N815


class JobOutputView(BaseModel):
    """The rendered montage. URLs are made on each read, so they never go stale."""

    model_config = ConfigDict(extra="forbid")

    videoUrl: str = Field(description="MP4 (H.264 and AAC)")  # noqa: N815
    posterUrl: str | None = Field(default=None, description="JPEG still")  # noqa: N815
    storyboardUrl: str | None = Field(  # noqa: N815
        default=None, description="JPEG grid of the middle frame of each segment"
    )
    duration: float = Field(description="seconds")
    width: int = Field(description="pixels")
    height: int = Field(description="pixels")
    size: int = Field(description="bytes of the MP4")


class JobView(BaseModel):
    """One montage job, as `GET /jobs/{jobId}` returns it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jobId": JOB_ID_EXAMPLE,
                    "status": "succeeded",
                    "progress": 100,
                    "createdAt": "2026-12-04T20:00:00.000Z",
                    "updatedAt": "2026-12-04T20:01:12.345Z",
                    "username": "daydreams-user",
                    "prompt": "Dreamy sunrise over the city skyline.",
                    "format": "auto",
                    "audioAssetId": AUDIO_ASSET_EXAMPLE,
                    "videoAssetIds": [VIDEO_ASSET_EXAMPLE],
                    "planner": "beat-grid",
                    "output": {
                        "videoUrl": f"{OUTPUT_URL_EXAMPLE}/montage.mp4",
                        "posterUrl": f"{OUTPUT_URL_EXAMPLE}/poster.jpg",
                        "storyboardUrl": f"{OUTPUT_URL_EXAMPLE}/storyboard.jpg",
                        "duration": 30.0,
                        "width": 1080,
                        "height": 1920,
                        "size": 8123456,
                    },
                    "payment": {
                        "payer": "0x2222222222222222222222222222222222222222",
                        "transaction": "0x" + "ab" * 32,
                        "network": "base",
                        "amount": "20000",
                    },
                }
            ]
        },
    )

    jobId: str  # noqa: N815
    status: JobStatus
    progress: int = Field(ge=0, le=100, description="percent")
    createdAt: str = Field(description="ISO 8601 UTC")  # noqa: N815
    updatedAt: str = Field(description="ISO 8601 UTC")  # noqa: N815
    username: str | None = None
    prompt: str | None = None
    format: OutputFormat
    durationSeconds: float | None = None  # noqa: N815
    callbackUrl: str | None = None  # noqa: N815
    audioAssetId: str  # noqa: N815
    videoAssetIds: list[str]  # noqa: N815
    planner: str | None = Field(default=None, description="`gemini` or `beat-grid`")
    planSummary: PlanSummary | None = None  # noqa: N815
    output: JobOutputView | None = Field(default=None, description="set once succeeded")
    error: ErrorDetail | None = Field(default=None, description="set once failed")
    payment: Payment | None = None


class JobList(BaseModel):
    """One page of jobs, newest first."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobView]
    cursor: str | None = Field(
        default=None,
        description="pass as `cursor` to get the next page; absent on the last page",
    )


class ProbeView(BaseModel):
    """Facts found by probing the file. Facts the probe did not find are left out."""

    model_config = ConfigDict(extra="forbid")

    formatName: str | None = None  # noqa: N815
    duration: float | None = Field(default=None, description="seconds")
    hasVideo: bool | None = None  # noqa: N815
    hasAudio: bool | None = None  # noqa: N815
    videoCodec: str | None = None  # noqa: N815
    audioCodec: str | None = None  # noqa: N815
    width: int | None = Field(default=None, description="display width, pixels")
    height: int | None = Field(default=None, description="display height, pixels")
    rotation: int | None = Field(default=None, description="degrees")
    fps: float | None = None
    sampleRate: int | None = None  # noqa: N815
    channels: int | None = None


class AssetView(BaseModel):
    """One staged or uploaded media file, as `GET /assets/{assetId}` returns it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "assetId": VIDEO_ASSET_EXAMPLE,
                    "kind": "video",
                    "state": "staged",
                    "filename": "clip-1.mp4",
                    "contentType": "video/mp4",
                    "size": 1048576,
                    "sha256": "9f" * 32,
                    "createdAt": "2026-12-04T20:00:00.000Z",
                    "probe": {
                        "formatName": "mov,mp4,m4a,3gp,3g2,mj2",
                        "duration": 4.0,
                        "hasVideo": True,
                        "hasAudio": False,
                        "videoCodec": "h264",
                        "width": 1920,
                        "height": 1080,
                        "rotation": 0,
                        "fps": 25.0,
                    },
                }
            ]
        },
    )

    assetId: str  # noqa: N815
    kind: MediaKind
    state: AssetState
    filename: str | None = None
    contentType: str | None = None  # noqa: N815
    size: int | None = Field(default=None, description="bytes, once staged")
    sha256: str | None = Field(default=None, description="hex digest, once staged")
    createdAt: str = Field(description="ISO 8601 UTC")  # noqa: N815
    probe: ProbeView | None = Field(default=None, description="set once a job analyzed it")
    error: ErrorDetail | None = Field(default=None, description="set when staging failed")
    uploadReceived: bool | None = Field(  # noqa: N815
        default=None,
        description="pending uploads only: whether the PUT to `uploadUrl` has arrived",
    )

