"""Probe media files with PyAV (libavformat in-process; no ffprobe binary needed).

The facts feed the planner and the renderer: display size after rotation and pixel aspect,
frame rate, colour tags, and which streams hold the picture and the sound.
"""

from __future__ import annotations

import logging
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.stream import Disposition

from ecliptic.errors import MediaRejected
from ecliptic.media.ffmpeg import FFMPEG_INPUT_GUARD, INPUT_GUARD_OPTIONS, ffmpeg_exe
from ecliptic.models import MediaInfo

logger = logging.getLogger(__name__)

# A reported frame rate above this is a timebase artefact (Matroska's 1 ms timebase gives
# avg_frame_rate 1000), so the rate is measured from packet timestamps instead.
MAX_PLAUSIBLE_FPS = 240.0
_FPS_SAMPLE_PACKETS = 240

# Names that av_color_transfer_name() and av_color_primaries_name() return, indexed by the
# AVColorTransferCharacteristic and AVColorPrimaries values (libavutil/pixfmt.h). PyAV 18
# exposes the raw integers. 2 is "unspecified" and maps to None.
_COLOR_TRANSFER_NAMES: dict[int, str] = {
    1: "bt709",
    4: "bt470m",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "linear",
    9: "log100",
    10: "log316",
    11: "iec61966-2-4",
    12: "bt1361e",
    13: "iec61966-2-1",
    14: "bt2020-10",
    15: "bt2020-12",
    16: "smpte2084",
    17: "smpte428",
    18: "arib-std-b67",
}
_COLOR_PRIMARIES_NAMES: dict[int, str] = {
    1: "bt709",
    4: "bt470m",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "film",
    9: "bt2020",
    10: "smpte428",
    11: "smpte431",
    12: "smpte432",
    22: "ebu3213",
}
# Names that av_color_space_name() returns for the AVColorSpace values (the YUV matrix).
_COLOR_SPACE_NAMES: dict[int, str] = {
    0: "gbr",
    1: "bt709",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
    14: "ictcp",
}

# `ffmpeg -i` prints "Display Matrix: rotation of -90.00 degrees" (ffmpeg 9.0) or
# "displaymatrix: rotation of -90.00 degrees" (ffmpeg 5.1) under a rotated stream.
_DISPLAYMATRIX_RE = re.compile(
    r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE
)


def probe_media(path: Path) -> MediaInfo:
    """Read the container and stream facts of one media file.

    Cover art (attached pictures) and data tracks do not count as video.

    Raises
    ------
    MediaRejected
        When libavformat cannot open the file, its demuxer is not allowed for user media
        (playlists, concat lists), or it has neither an audio nor a video stream.
    """
    try:
        container = av.open(str(path), options=dict(INPUT_GUARD_OPTIONS))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaRejected(
            f"{path.name} is not a decodable audio or video file.", detail=str(exc)
        ) from exc

    with container:
        video = next(
            (
                stream
                for stream in container.streams.video
                if not stream.disposition & Disposition.attached_pic
            ),
            None,
        )
        audio = next(iter(container.streams.audio), None)
        if video is None and audio is None:
            raise MediaRejected(
                f"{path.name} is not a decodable audio or video file: "
                "it has no audio or video stream."
            )

        start_time = container.start_time / av.time_base if container.start_time else 0.0
        duration = _duration_seconds(container, video, audio)
        facts: dict[str, object] = {
            "format_name": container.format.name,
            "duration": duration,
            "start_time": start_time,
            "has_video": video is not None,
            "has_audio": audio is not None,
        }
        if audio is not None:
            facts.update(_audio_facts(audio))
        if video is not None:
            facts.update(_video_facts(container, video, path))

    return MediaInfo.model_validate(facts)


def _duration_seconds(
    container: av.container.InputContainer,
    video: av.VideoStream | None,
    audio: av.AudioStream | None,
) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    for stream in (video, audio):
        if stream is not None and stream.duration is not None and stream.time_base:
            return float(stream.duration * stream.time_base)
    return 0.0


def _audio_facts(stream: av.AudioStream) -> dict[str, object]:
    context = stream.codec_context
    return {
        "audio_index": stream.index,
        "audio_codec": context.codec.canonical_name,
        "sample_rate": context.sample_rate or None,
        "channels": context.layout.nb_channels or None,
    }


def _video_facts(
    container: av.container.InputContainer, stream: av.VideoStream, path: Path
) -> dict[str, object]:
    context = stream.codec_context
    coded_width, coded_height = context.width, context.height

    sar = stream.sample_aspect_ratio or context.sample_aspect_ratio
    if not sar or sar <= 0:
        sar = Fraction(1, 1)

    first_rotation, packet_times = _scan_video(container, stream)
    rotation = first_rotation
    if rotation is None:
        rotation = _rotation_from_ffmpeg(path, stream.index)

    # The display size applies the pixel aspect first (it describes coded pixels), then
    # the rotation. It may be odd; the renderer picks even output sizes.
    width = max(1, round(coded_width * sar)) if coded_width else None
    height = coded_height or None
    if rotation in (90, 270):
        width, height = height, width

    return {
        "video_index": stream.index,
        "video_codec": context.codec.canonical_name,
        "width": width,
        "height": height,
        "coded_width": coded_width or None,
        "coded_height": coded_height or None,
        "rotation": rotation,
        "sample_aspect_ratio": (sar.numerator, sar.denominator),
        "fps": _frame_rate(stream, packet_times),
        "pix_fmt": context.pix_fmt,
        "color_transfer": _COLOR_TRANSFER_NAMES.get(context.color_trc),
        "color_primaries": _COLOR_PRIMARIES_NAMES.get(context.color_primaries),
        "color_space": _COLOR_SPACE_NAMES.get(context.colorspace),
    }


def _scan_video(
    container: av.container.InputContainer, stream: av.VideoStream
) -> tuple[int | None, list[float]]:
    """Decode the first frame for its rotation and collect early packet timestamps.

    Returns the clockwise rotation (None when no frame could be decoded) and the
    timestamps in seconds of up to `_FPS_SAMPLE_PACKETS` packets.
    """
    rotation: int | None = None
    times: list[float] = []
    time_base = stream.time_base
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and time_base is not None:
                times.append(float(packet.pts * time_base))
            if rotation is None:
                for frame in packet.decode():
                    rotation = _clockwise(frame.rotation)
                    break
            if rotation is not None and len(times) >= _FPS_SAMPLE_PACKETS:
                break
        if rotation is None:
            # Flush decoders that hold frames back (B-frame reordering, frame threads).
            for frame in stream.codec_context.decode(None):
                rotation = _clockwise(frame.rotation)
                break
    except av.error.FFmpegError as exc:
        logger.debug("decoding stream %d for its rotation failed: %s", stream.index, exc)
    return rotation, times


def _clockwise(counterclockwise_degrees: float) -> int:
    """Turn a display-matrix angle into the clockwise turn a player applies (0/90/180/270).

    av_display_rotation_get() and PyAV's `VideoFrame.rotation` count counter-clockwise, so
    -90 (the legacy `rotate=90` tag) means the picture is shown turned 90 degrees clockwise.
    """
    return (-round(counterclockwise_degrees / 90) * 90) % 360


def _rotation_from_ffmpeg(path: Path, stream_index: int) -> int:
    """Read a stream's rotation from `ffmpeg -i` output, for streams PyAV could not decode."""
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", *FFMPEG_INPUT_GUARD]
    argv += ["-i", f"file:{path.resolve()}"]
    try:
        # With no output file ffmpeg prints the input facts and exits with status 1.
        result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("ffmpeg could not read the rotation of %s: %s", path.name, exc)
        return 0
    output = result.stderr.decode("utf-8", errors="replace")
    # Look only at this stream's block, which ends where the next "Stream #" line starts.
    blocks = re.split(r"\n\s*Stream #\d+:", output)
    block = next((b for b in blocks[1:] if re.match(rf"{stream_index}\b", b)), "")
    match = _DISPLAYMATRIX_RE.search(block)
    return _clockwise(float(match.group(1))) if match else 0


def _frame_rate(stream: av.VideoStream, packet_times: list[float]) -> float | None:
    """Pick a plausible frames-per-second value for the stream.

    The average rate comes first because it describes the whole clip. When it is missing
    or implausible, the rate is measured from packet timestamps, then taken from
    libavformat's guess.
    """
    average = stream.average_rate
    if average and 0 < average <= MAX_PLAUSIBLE_FPS:
        return float(average)

    measured = _measured_rate(packet_times)
    if measured is not None:
        return measured

    for rate in (stream.guessed_rate, stream.base_rate):
        if rate and 0 < rate <= MAX_PLAUSIBLE_FPS:
            return float(rate)
    return None


def _measured_rate(packet_times: list[float]) -> float | None:
    times = sorted(set(packet_times))
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    rate = (len(times) - 1) / (times[-1] - times[0])
    return rate if 0 < rate <= MAX_PLAUSIBLE_FPS else None
