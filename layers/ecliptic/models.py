"""Pydantic models shared by the API, the job store and the pipeline steps.

API models use the camelCase field names of the public contract. Pipeline models (media
facts, beat grid, plan) are internal and snake_case; they travel as JSON in R2 objects and
Step Functions state, never as media.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROMPT_MAX_CHARS = 1000
USERNAME_MAX_CHARS = 50
FILENAME_MAX_CHARS = 255
# Hard ceiling on clips per request; the deployed limit is the `max_videos` setting.
VIDEOS_MAX = 100
DURATION_MIN_SECONDS = 3.0
DURATION_MAX_SECONDS = 600.0


class MediaKind(StrEnum):
    AUDIO = "audio"
    VIDEO = "video"


class JobStatus(StrEnum):
    QUEUED = "queued"
    STAGING = "staging"
    PLANNING = "planning"
    RENDERING = "rendering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AssetState(StrEnum):
    PENDING = "pending"
    STAGED = "staged"
    FAILED = "failed"


class OutputFormat(StrEnum):
    AUTO = "auto"
    PORTRAIT = "portrait"
    LANDSCAPE = "landscape"
    SQUARE = "square"


# Output frame sizes for each format; `auto` picks one from the clips' orientation.
FRAME_SIZES: dict[OutputFormat, tuple[int, int]] = {
    OutputFormat.PORTRAIT: (1080, 1920),
    OutputFormat.LANDSCAPE: (1920, 1080),
    OutputFormat.SQUARE: (1080, 1080),
}


# ----- API request and response -------------------------------------------------------


class MediaRef(BaseModel):
    """One media descriptor: an `assetId` from an earlier job or a `url` to fetch."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str | None = Field(default=None, max_length=2048)
    assetId: str | None = Field(default=None, max_length=64)  # noqa: N815 (API field name)
    filename: str | None = Field(default=None, max_length=FILENAME_MAX_CHARS)
    contentType: str | None = Field(default=None, max_length=255)  # noqa: N815

    @model_validator(mode="after")
    def _one_source(self) -> MediaRef:
        if (self.url is None) == (self.assetId is None):
            raise ValueError("give exactly one of 'url' or 'assetId'")
        return self

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL that serves the raw media file")
        return value

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or "\\" in value or "\x00" in value):
            raise ValueError("must be a plain file name without path separators")
        return value


class MontageRequest(BaseModel):
    """Body of `POST /montages`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    audio: MediaRef
    videos: Annotated[list[MediaRef], Field(min_length=1, max_length=VIDEOS_MAX)]
    prompt: str | None = Field(default=None, max_length=PROMPT_MAX_CHARS)
    username: str | None = Field(default=None, max_length=USERNAME_MAX_CHARS)
    format: OutputFormat = OutputFormat.AUTO
    durationSeconds: float | None = Field(  # noqa: N815 (API field name)
        default=None, ge=DURATION_MIN_SECONDS, le=DURATION_MAX_SECONDS
    )
    callbackUrl: str | None = Field(default=None, max_length=2048)  # noqa: N815

    @field_validator("callbackUrl")
    @classmethod
    def _callback_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL that accepts a POST when the job ends")
        return value


class MontageAccepted(BaseModel):
    """The 202 body of `POST /montages`."""

    jobId: str  # noqa: N815
    audioAssetId: str  # noqa: N815
    videoAssetIds: list[str]  # noqa: N815
    status: JobStatus = JobStatus.QUEUED


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class Payment(BaseModel):
    """A settled payment as recorded on the job."""

    payer: str
    transaction: str
    network: str
    amount: str


# ----- Stored records --------------------------------------------------------------------


class MediaInfo(BaseModel):
    """Facts from probing one media file. Sizes are display sizes (rotation and SAR applied)."""

    format_name: str
    duration: float = Field(ge=0)
    start_time: float = 0.0
    has_video: bool
    has_audio: bool
    video_index: int | None = None
    audio_index: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int | None = None
    height: int | None = None
    coded_width: int | None = None
    coded_height: int | None = None
    rotation: int = 0
    sample_aspect_ratio: tuple[int, int] = (1, 1)
    fps: float | None = None
    pix_fmt: str | None = None
    color_transfer: str | None = None
    color_primaries: str | None = None
    # The YUV matrix (av_color_space_name), or None when the file has no matrix tag.
    color_space: str | None = None
    sample_rate: int | None = None
    channels: int | None = None

    @property
    def is_hdr(self) -> bool:
        return self.color_transfer in {"smpte2084", "arib-std-b67"}


class Asset(BaseModel):
    """A staged (or staging) media file, reusable by its id."""

    assetId: str  # noqa: N815
    kind: MediaKind
    state: AssetState = AssetState.PENDING
    sourceUrl: str | None = None  # noqa: N815
    filename: str | None = None
    contentType: str | None = None  # noqa: N815
    key: str  # object key in the media bucket
    size: int | None = None
    sha256: str | None = None
    probe: MediaInfo | None = None
    jobId: str | None = None  # noqa: N815 (the job that first staged it)
    createdAt: str  # noqa: N815
    error: ErrorDetail | None = None


class JobOutput(BaseModel):
    key: str
    duration: float
    width: int
    height: int
    size: int
    posterKey: str | None = None  # noqa: N815
    storyboardKey: str | None = None  # noqa: N815


class Job(BaseModel):
    jobId: str  # noqa: N815
    status: JobStatus
    progress: int = Field(default=0, ge=0, le=100)
    createdAt: str  # noqa: N815
    updatedAt: str  # noqa: N815
    username: str | None = None
    prompt: str | None = None
    format: OutputFormat = OutputFormat.AUTO
    durationSeconds: float | None = None  # noqa: N815
    callbackUrl: str | None = None  # noqa: N815
    audioAssetId: str  # noqa: N815
    videoAssetIds: list[str]  # noqa: N815
    planner: str | None = None
    planSummary: dict | None = None  # noqa: N815
    output: JobOutput | None = None
    error: ErrorDetail | None = None
    payment: Payment | None = None


# ----- Pipeline (analysis, plan) --------------------------------------------------------


class BeatGrid(BaseModel):
    """The song's beat grid. Times are seconds from the start of the decoded audio."""

    duration: float = Field(gt=0)
    tempo: float = Field(gt=0, description="beats per minute")
    beats: list[float] = Field(min_length=2)
    downbeats: list[float] = Field(default_factory=list)
    energy: list[float] = Field(default_factory=list, description="per-beat energy, 0..1")
    first_beat: float = Field(ge=0, description="first musical beat, after leading silence")
    last_beat: float = Field(ge=0)


class ClipFacts(BaseModel):
    """A clip as the planner uses it: its position in the request and its probed facts."""

    index: int = Field(ge=0)
    asset_id: str
    key: str
    info: MediaInfo


class Analysis(BaseModel):
    """Output of the analyze step: the song's beat grid and every clip's facts."""

    job_id: str
    audio_asset_id: str
    audio_key: str
    audio: MediaInfo
    beat_grid: BeatGrid
    clips: list[ClipFacts] = Field(min_length=1)


class Segment(BaseModel):
    """One cut: a stretch of one clip placed at output frames [start_frame, end_frame)."""

    clip: int = Field(ge=0, description="index into the request's videos")
    source_start: float = Field(ge=0, description="seconds into the clip's first frame")
    start_frame: int = Field(ge=0)
    end_frame: int = Field(gt=0)
    beat_start: int = Field(ge=0)
    beat_end: int = Field(gt=0)

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame


class MontagePlan(BaseModel):
    """A renderable plan: segments tile [0, total_frames) with no gap or overlap."""

    job_id: str
    planner: Literal["gemini", "beat-grid"]
    planner_note: str | None = None
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fps: int = Field(gt=0, le=60)
    audio_start: float = Field(ge=0, description="song time (s) that plays at output time 0")
    total_frames: int = Field(gt=0)
    segments: list[Segment] = Field(min_length=1)

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps

    @model_validator(mode="after")
    def _tiles_output(self) -> MontagePlan:
        expected = 0
        for segment in self.segments:
            if segment.start_frame != expected or segment.end_frame <= segment.start_frame:
                raise ValueError("segments must tile the output without gaps or overlaps")
            expected = segment.end_frame
        if expected != self.total_frames:
            raise ValueError("segments must end at total_frames")
        return self


class RenderResult(BaseModel):
    key: str
    poster_key: str | None = None
    storyboard_key: str | None = None
    duration: float
    width: int
    height: int
    size: int
