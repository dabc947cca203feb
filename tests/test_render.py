"""render_montage, run_ffmpeg and the frame-size helpers, with real ffmpeg and PyAV."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from ecliptic.errors import RenderFailed
from ecliptic.media import render
from ecliptic.media.ffmpeg import FFMPEG_INPUT_GUARD, ffmpeg_exe, run_ffmpeg
from ecliptic.media.probe import probe_media
from ecliptic.media.render import (
    STORYBOARD_COLUMNS,
    choose_frame_size,
    render_montage,
    scale_frame,
    storyboard_segments,
)
from ecliptic.models import MediaInfo, MontagePlan, OutputFormat, Segment

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "media-corpus"

CORPUS_VIDEO_FILES = [
    "android-slowmo-vfr-gap-noaudio.mp4",
    "bbb-hevc-aac5.1-start1.48s.ts",
    "bbb-sar1137x800-start10s-editlist-noaudio.mp4",
    "bbb-vp9-60fps-vorbis-5.1.webm",
    "bear-odd-161x121-vp9-noaudio.webm",
    "cockatoo-h264-yuv444p-20fps-mono16k.mp4",
    "concert-1080p50-h264-pcm-s16le.mov",
    "desk-h264-ac3-mono-bogus-avgfps.mkv",
    "flower-vp8-vorbis-29.97fps.webm",
    "forest-hdr10-av1-10bit-59.94fps.mp4",
    "friday-audio-stream-first-30fps.mp4",
    "gopro-max-848x480-3datastreams.mp4",
    "iphone-dolbyvision-hlg-rotate90-0.1s.mov",
    "iphone-hlg10-hevc-rotate90-editlist.mp4",
    "newtons-cradle-variable-delay.gif",
    "phone-portrait-rotate90-4k60-h264.mp4",
    "roadtrip-vp9-10bit-23.976fps-noaudio.webm",
    "rooftop-hdr10-pq-hevc-hev1-vfr.mp4",
]


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=60,
    )


def _segments(*spans: tuple[int, float, int]) -> list[Segment]:
    """Tile segments from (clip, source_start, frames) triples."""
    segments = []
    start = 0
    for beat, (clip, source_start, frames) in enumerate(spans):
        segments.append(
            Segment(
                clip=clip,
                source_start=source_start,
                start_frame=start,
                end_frame=start + frames,
                beat_start=beat,
                beat_end=beat + 1,
            )
        )
        start += frames
    return segments


def _plan(
    width: int, height: int, segments: list[Segment], audio_start: float = 0.0
) -> MontagePlan:
    return MontagePlan(
        job_id="job_test",
        planner="beat-grid",
        width=width,
        height=height,
        fps=30,
        audio_start=audio_start,
        total_frames=segments[-1].end_frame,
        segments=segments,
    )


def _decode_video(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """Return the samples as (channels, samples) float32 and the sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(chunks, axis=1), stream.codec_context.sample_rate


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic clips and a song, made once per module with lavfi sources."""
    folder = tmp_path_factory.mktemp("synthetic")
    paths = {
        "landscape": folder / "landscape.mp4",
        "portrait_short": folder / "portrait_short.mp4",
        "red": folder / "red.mp4",
        "blue": folder / "blue.mov",
        "song": folder / "song.wav",
    }
    # 640x360 25 fps with an AAC track as stream 0, so the video is stream 1.
    _ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=330:duration=4",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=4",
        "-map", "0:a", "-map", "1:v", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        "-c:a", "aac", str(paths["landscape"]),
    )  # fmt: skip

    # 0.5 s portrait at 60 fps: shorter than the slot it gets.
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=360x640:rate=60:duration=0.5",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(paths["portrait_short"]),
    )  # fmt: skip

    _ffmpeg(
        "-f", "lavfi", "-i", "color=color=red:size=320x240:rate=30:duration=3",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(paths["red"]),
    )  # fmt: skip
    _ffmpeg(
        "-f", "lavfi", "-i", "color=color=blue:size=320x240:rate=24:duration=3",
        "-c:v", "libx264", "-pix_fmt", "yuv444p", str(paths["blue"]),
    )  # fmt: skip

    # Mono 44.1 kHz: 2 s of silence, then a tone. The render must resample to 48 kHz stereo.
    _ffmpeg(
        "-f", "lavfi", "-i",
        "aevalsrc=if(gte(t\\,2)\\,0.5*sin(2*PI*440*t)\\,0):sample_rate=44100:duration=8",
        str(paths["song"]),
    )  # fmt: skip
    return paths


def _clips(media: dict[str, Path], *names: str) -> dict[int, tuple[Path, MediaInfo]]:
    return {index: (media[name], probe_media(media[name])) for index, name in enumerate(names)}


# ----- frame size helpers ----------------------------------------------------------------


def _info(width: int, height: int) -> MediaInfo:
    return MediaInfo(
        format_name="mov",
        duration=1.0,
        has_video=True,
        has_audio=False,
        video_index=0,
        width=width,
        height=height,
    )


@pytest.mark.parametrize(
    ("fmt", "sizes", "expected"),
    [
        (OutputFormat.PORTRAIT, [(1920, 1080)], (1080, 1920)),
        (OutputFormat.SQUARE, [(1920, 1080)], (1080, 1080)),
        (OutputFormat.AUTO, [(1080, 1920), (1080, 1920), (1920, 1080)], (1080, 1920)),
        (OutputFormat.AUTO, [(1080, 1920), (1920, 1080)], (1920, 1080)),
        (OutputFormat.AUTO, [(1000, 1000), (1040, 1000)], (1080, 1080)),
        (OutputFormat.AUTO, [(1000, 1000), (1080, 1920)], (1080, 1920)),
        (OutputFormat.AUTO, [(1000, 1000), (1920, 1080)], (1920, 1080)),
        (OutputFormat.AUTO, [], (1920, 1080)),
    ],
    ids=[
        "portrait-forced",
        "square-forced",
        "auto-portrait-majority",
        "auto-tie-landscape",
        "auto-all-square",
        "auto-square-and-portrait",
        "auto-square-and-landscape",
        "auto-no-clips",
    ],
)
def test_choose_frame_size(
    fmt: OutputFormat, sizes: list[tuple[int, int]], expected: tuple[int, int]
) -> None:
    """The output frame follows the request, or the clips' majority orientation."""
    assert choose_frame_size(fmt, [_info(w, h) for w, h in sizes]) == expected


def test_choose_frame_size_ignores_audio_only() -> None:
    """A clip with no video size does not vote."""
    audio_only = MediaInfo(format_name="mp3", duration=3.0, has_video=False, has_audio=True)

    assert choose_frame_size(OutputFormat.AUTO, [audio_only, _info(720, 1280)]) == (1080, 1920)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1080, 1920), 426, (240, 426)),
        ((1920, 1080), 320, (320, 180)),
        ((1080, 1080), 101, (100, 100)),
        ((1080, 1920), 1920, (1080, 1920)),
        ((1080, 1920), 4000, (1080, 1920)),
    ],
)
def test_scale_frame(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    """Scaled sizes fit the limit and stay even."""
    assert scale_frame(size, max_side) == expected


# ----- run_ffmpeg --------------------------------------------------------------------------


@pytest.mark.slow
def test_run_ffmpeg_failure_has_stderr_tail(tmp_path: Path) -> None:
    """A failing run raises RenderFailed with ffmpeg's error in detail, not in the message."""
    missing = tmp_path / "missing.mp4"

    with pytest.raises(RenderFailed) as caught:
        run_ffmpeg(["-i", str(missing), "-f", "null", "-"], timeout=30)

    assert "exit status" in caught.value.message
    assert str(missing) not in caught.value.message
    assert "No such file or directory" in caught.value.detail


@pytest.mark.slow
def test_run_ffmpeg_timeout_kills() -> None:
    """An endless input is killed at the timeout."""
    started = time.monotonic()

    with pytest.raises(RenderFailed, match="timed out"):
        run_ffmpeg(["-re", "-f", "lavfi", "-i", "testsrc2", "-f", "null", "-"], timeout=1.5)

    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_run_ffmpeg_reports_progress() -> None:
    """A real-time run of 5 s reports fractions between 0 and 1, at least 2 s apart."""
    calls: list[tuple[float, float]] = []

    run_ffmpeg(
        ["-re", "-f", "lavfi", "-i", "testsrc2=size=160x120:duration=5", "-f", "null", "-"],
        timeout=30,
        on_progress=lambda fraction: calls.append((time.monotonic(), fraction)),
        total_seconds=5.0,
    )

    assert calls, "on_progress was never called"
    assert all(0.0 <= fraction <= 1.0 for _, fraction in calls)
    assert all(b[0] - a[0] >= 1.9 for a, b in zip(calls, calls[1:], strict=False))
    assert calls[-1][1] > calls[0][1] or len(calls) == 1


# ----- render_montage ---------------------------------------------------------------------


@pytest.mark.slow
def test_render_output_format(media: dict[str, Path], tmp_path: Path) -> None:
    """The output is H.264 High yuv420p BT.709 at the plan size, with AAC 48 kHz stereo."""
    clips = _clips(media, "landscape", "portrait_short", "blue")
    plan = _plan(320, 568, _segments((0, 0.5, 20), (1, 0.0, 12), (2, 1.0, 25), (0, 2.0, 18)))
    out = tmp_path / "montage.mp4"
    poster = tmp_path / "poster.jpg"
    storyboard = tmp_path / "storyboard.jpg"
    fractions: list[float] = []

    render_montage(
        plan,
        audio_path=media["song"],
        clips=clips,
        out_path=out,
        poster_path=poster,
        storyboard_path=storyboard,
        on_progress=fractions.append,
    )

    info = probe_media(out)
    assert (info.width, info.height) == (320, 568)
    assert info.video_codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert info.color_transfer == "bt709"
    assert info.color_primaries == "bt709"
    assert info.audio_codec == "aac"
    assert info.sample_rate == 48000
    assert info.channels == 2
    assert info.fps == pytest.approx(30.0)
    assert abs(info.duration - plan.duration) <= 1 / plan.fps
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.profile == "High"
        assert stream.frames == plan.total_frames
    assert len(_decode_video(out)) == plan.total_frames

    with av.open(str(poster)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (320, 568)
    with av.open(str(storyboard)) as container:
        frame = next(container.decode(video=0))
        # Four 240x426 thumbnails in one row, 4 px apart and 4 px from the edges.
        assert (frame.width, frame.height) == (4 * 240 + 5 * 4, 426 + 2 * 4)
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    # The partial files beside the outputs were renamed into place.
    assert set(tmp_path.iterdir()) == {out, poster, storyboard}


@pytest.mark.slow
def test_render_cuts_on_exact_frames(media: dict[str, Path], tmp_path: Path) -> None:
    """Each output frame shows the clip of the segment that owns it."""
    clips = _clips(media, "red", "blue")
    plan = _plan(320, 180, _segments((0, 0.0, 7), (1, 0.5, 11), (0, 1.0, 5), (1, 0.0, 9)))
    out = tmp_path / "cuts.mp4"

    render_montage(plan, audio_path=media["song"], clips=clips, out_path=out)

    frames = _decode_video(out)
    assert len(frames) == plan.total_frames
    for segment in plan.segments:
        for index in range(segment.start_frame, segment.end_frame):
            red, _, blue = frames[index].reshape(-1, 3).mean(axis=0)
            if segment.clip == 0:
                assert red > 200, f"frame {index} is not red"
                assert blue < 50, f"frame {index} is not red"
            else:
                assert blue > 200, f"frame {index} is not blue"
                assert red < 50, f"frame {index} is not blue"


@pytest.mark.slow
def test_render_storyboard_cells(media: dict[str, Path], tmp_path: Path) -> None:
    """The storyboard shows one thumbnail per segment, in order, on a 6-column grid."""
    clips = _clips(media, "red", "blue")
    order = [0, 1, 1, 0, 1, 0, 0, 1]
    plan = _plan(320, 180, _segments(*((clip, 0.0, 4) for clip in order)))
    storyboard = tmp_path / "storyboard.jpg"

    render_montage(
        plan,
        audio_path=media["song"],
        clips=clips,
        out_path=tmp_path / "montage.mp4",
        storyboard_path=storyboard,
    )

    with av.open(str(storyboard)) as container:
        grid = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    columns, rows, pad, width, height = STORYBOARD_COLUMNS, 2, 4, 240, 136
    grid_height = rows * height + (rows + 1) * pad
    grid_width = columns * width + (columns + 1) * pad
    assert grid.shape == (grid_height, grid_width, 3)
    for number in range(rows * columns):
        row, column = divmod(number, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        red, _, blue = grid[top + 10 : top + height - 10, left + 10 : left + width - 10].mean(
            axis=(0, 1)
        )
        if number >= len(order):
            assert red < 40, f"cell {number} is not empty background"
            assert blue < 40, f"cell {number} is not empty background"
        elif order[number] == 0:
            assert red > 200, f"cell {number} is not red"
            assert blue < 60, f"cell {number} is not red"
        else:
            assert blue > 200, f"cell {number} is not blue"
            assert red < 60, f"cell {number} is not blue"


@pytest.mark.slow
def test_storyboard_size_cap(
    media: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A storyboard over the byte cap is encoded again at lower qualities, then kept."""
    clips = _clips(media, "landscape")
    plan = _plan(320, 180, _segments((0, 0.0, 6), (0, 1.0, 6), (0, 2.0, 6)))

    def storyboard_bytes(name: str) -> int:
        path = tmp_path / f"{name}.jpg"
        render_montage(
            plan,
            audio_path=media["song"],
            clips=clips,
            out_path=tmp_path / f"{name}.mp4",
            storyboard_path=path,
        )
        return path.stat().st_size

    first = storyboard_bytes("uncapped")
    monkeypatch.setattr(render, "STORYBOARD_MAX_BYTES", first - 1)
    second = storyboard_bytes("capped")
    monkeypatch.setattr(render, "STORYBOARD_MAX_BYTES", 1)
    with caplog.at_level(logging.WARNING, logger=render.__name__):
        last = storyboard_bytes("over")

    assert second < first
    assert last < second
    assert "at the lowest quality" in caplog.text


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [0]),
        (5, [0, 1, 2, 3, 4]),
        (48, list(range(48))),
        (49, [round(i * 48 / 47) for i in range(48)]),
        (480, [round(i * 479 / 47) for i in range(48)]),
    ],
)
def test_storyboard_segments(count: int, expected: list[int]) -> None:
    """Up to 48 segments all appear; beyond that 48 spread evenly, first and last included."""
    chosen = storyboard_segments(count)

    assert chosen == expected
    assert len(set(chosen)) == len(chosen)
    assert chosen[0] == 0
    assert chosen[-1] == count - 1


@pytest.mark.slow
def test_render_holds_short_clip(media: dict[str, Path], tmp_path: Path) -> None:
    """A 0.5 s clip in a 1 s slot plays at normal speed, then holds its last frame."""
    clips = _clips(media, "landscape", "portrait_short")
    plan = _plan(180, 320, _segments((0, 0.0, 6), (1, 0.0, 30), (0, 1.0, 6)))
    out = tmp_path / "held.mp4"

    render_montage(plan, audio_path=media["song"], clips=clips, out_path=out)

    frames = [frame.astype(int) for frame in _decode_video(out)[6:36]]
    # testsrc2 moves every frame (mean change ~3.7 levels); a held frame changes only by
    # encoder refinement (< 0.1).
    changes = [float(np.abs(a - b).mean()) for a, b in zip(frames, frames[1:], strict=False)]
    distinct = 1 + sum(1 for change in changes if change > 0.5)
    # 0.5 s of source at 30 fps is 15 frames; stretching it would make all 30 distinct.
    assert 14 <= distinct <= 16
    for frame in frames[16:]:
        assert float(np.abs(frame - frames[-1]).mean()) < 0.5


def _white_box(frame: np.ndarray) -> tuple[int, int]:
    """Return the (width, height) of the bounding box of bright pixels."""
    rows, cols = np.nonzero(frame.mean(axis=2) > 128)
    return int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


@pytest.mark.slow
def test_render_square_pixels_from_sar(tmp_path: Path, media: dict[str, Path]) -> None:
    """A circle stored squeezed with SAR 2:1 comes out round in square output pixels."""
    clip = tmp_path / "sar.mp4"
    # 320x360 coded at SAR 2:1 displays as 640x360 and the ellipse as a circle of radius 100.
    _ffmpeg(
        "-f", "lavfi", "-i", "color=color=black:size=320x360:rate=30:duration=1",
        "-vf", "geq=lum='if(lt(hypot((X-W/2)*2,Y-H/2),100),235,16)':cb=128:cr=128,setsar=2",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip),
    )  # fmt: skip
    info = probe_media(clip)
    assert (info.width, info.height) == (640, 360)
    plan = _plan(320, 320, _segments((0, 0.0, 3)))
    out = tmp_path / "round.mp4"

    render_montage(plan, audio_path=media["song"], clips={0: (clip, info)}, out_path=out)

    width, height = _white_box(_decode_video(out)[0])
    # Radius 100 in a 360-pixel-high square crop, scaled to 320: about 178 pixels across.
    assert abs(width - height) <= 3
    assert 170 <= height <= 185


@pytest.mark.slow
def test_render_applies_rotation(tmp_path: Path, media: dict[str, Path]) -> None:
    """A landscape-coded clip tagged with a 90 degree turn fills a portrait frame upright."""
    coded = tmp_path / "coded.mp4"
    rotated = tmp_path / "rotated.mp4"
    # Left half white: after the clockwise turn that a player applies, the top half is white.
    _ffmpeg(
        "-f", "lavfi", "-i", "color=color=black:size=640x360:rate=30:duration=1",
        "-vf", "drawbox=x=0:y=0:w=320:h=360:color=white:t=fill",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(coded),
    )  # fmt: skip
    _ffmpeg("-display_rotation", "-90", "-i", str(coded), "-c", "copy", str(rotated))
    info = probe_media(rotated)
    assert info.rotation == 90
    assert (info.width, info.height) == (360, 640)
    plan = _plan(180, 320, _segments((0, 0.0, 3)))
    out = tmp_path / "upright.mp4"

    render_montage(plan, audio_path=media["song"], clips={0: (rotated, info)}, out_path=out)

    frame = _decode_video(out)[0].mean(axis=2)
    assert frame[:150].mean() > 200
    assert frame[170:].mean() < 50


_LUMA_WEIGHTS = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}


def _convert_matrix(yuv: tuple[float, float, float], source: str, target: str) -> np.ndarray:
    """Convert one limited-range 8-bit Y'CbCr colour between matrices, through R'G'B'."""
    y, cb, cr = (yuv[0] - 16) / 219, (yuv[1] - 128) / 224, (yuv[2] - 128) / 224
    kr, kb = _LUMA_WEIGHTS[source]
    red = y + 2 * (1 - kr) * cr
    blue = y + 2 * (1 - kb) * cb
    green = (y - kr * red - kb * blue) / (1 - kr - kb)
    kr, kb = _LUMA_WEIGHTS[target]
    y = kr * red + (1 - kr - kb) * green + kb * blue
    cb = (blue - y) / (2 * (1 - kb))
    cr = (red - y) / (2 * (1 - kr))
    return np.array([16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr])


def _centre_yuv(path: Path) -> np.ndarray:
    """Return the mean Y, Cb and Cr of the centre of the first frame (8-bit 4:2:0)."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        planes = frame.to_ndarray(format="yuv420p")
    height, width = frame.height, frame.width
    luma = planes[:height]
    chroma = planes[height:].reshape(2, height // 2, width // 2)
    return np.array(
        [
            luma[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4].mean(),
            *(plane[height // 8 : 3 * height // 8, width // 8 : 3 * width // 8].mean()
              for plane in chroma),
        ]
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "tag", "matrix"),
    [
        ("1280x720", None, "bt709"),
        ("640x360", None, "bt601"),
        ("1280x720", "smpte170m", "bt601"),
        ("640x360", "bt709", "bt709"),
    ],
    ids=["untagged-hd", "untagged-sd", "tagged-601-hd", "tagged-709-sd"],
)
def test_render_keeps_colours(
    size: str, tag: str | None, matrix: str, tmp_path: Path, media: dict[str, Path]
) -> None:
    """A flat colour keeps its R'G'B' through the render: the clip is read with its own
    matrix (or, untagged, BT.709 for HD and BT.601 for SD) and written as BT.709."""
    # An orange that stays inside the R'G'B' cube under both matrices, and whose BT.709
    # values differ from its BT.601 ones by up to 22 steps.
    source = (150.0, 80.0, 50.0)
    clip = tmp_path / "flat.mp4"
    _ffmpeg(
        "-f", "lavfi", "-i", f"color=color=black:size={size}:rate=30:duration=1",
        "-vf", "format=yuv444p,geq=lum=150:cb=80:cr=50,format=yuv420p",
        "-c:v", "libx264", "-crf", "10", str(tmp_path / "untagged.mp4"),
    )  # fmt: skip
    # Tag the bitstream afterwards: an output -colorspace option would convert the pixels.
    code = {None: 2, "smpte170m": 6, "bt709": 1}[tag]
    vui = f"matrix_coefficients={code}:colour_primaries={code}:transfer_characteristics={code}"
    _ffmpeg(
        "-i", str(tmp_path / "untagged.mp4"), "-c", "copy",
        "-bsf:v", f"h264_metadata={vui}", str(clip),
    )  # fmt: skip
    info = probe_media(clip)
    assert info.color_space == tag
    assert np.allclose(_centre_yuv(clip), source, atol=1.0)
    plan = _plan(320, 180, _segments((0, 0.0, 3)))
    out = tmp_path / "flat-out.mp4"

    render_montage(plan, audio_path=media["song"], clips={0: (clip, info)}, out_path=out)

    expected = _convert_matrix(source, matrix, "bt709")
    assert np.allclose(_centre_yuv(out), expected, atol=2.0), (_centre_yuv(out), expected)
    # The two matrices give values far enough apart for the check above to tell them apart.
    assert np.abs(_convert_matrix(source, "bt601", "bt709") - source).max() > 20


@pytest.mark.slow
def test_render_audio_start_and_fade(media: dict[str, Path], tmp_path: Path) -> None:
    """The song plays from audio_start and fades to near silence at the end."""
    clips = _clips(media, "red")
    out = tmp_path / "audio.mp4"
    # The song is silent for 2 s, then a tone: from 1.5 s the first 0.5 s stay silent.
    plan = _plan(160, 90, _segments((0, 0.0, 90)), audio_start=1.5)

    render_montage(plan, audio_path=media["song"], clips=clips, out_path=out)

    samples, rate = _decode_audio(out)
    assert rate == 48000
    assert samples.shape[0] == 2

    def rms(start: float, end: float) -> float:
        window = samples[:, int(start * rate) : int(end * rate)]
        return float(np.sqrt(np.mean(window**2)))

    assert rms(0.0, 0.4) < 0.01
    assert rms(0.7, 1.5) > 0.2
    assert rms(2.95, 3.0) < 0.1 * rms(1.0, 1.5)


@pytest.mark.slow
def test_render_song_fades_out(tmp_path: Path, media: dict[str, Path]) -> None:
    """The song plays at full level until 1 s before the end, then fades out linearly."""
    song = tmp_path / "tone.wav"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=6", str(song))
    plan = _plan(160, 90, _segments((0, 0.0, 60), (0, 0.5, 60)))
    out = tmp_path / "fade.mp4"

    render_montage(plan, audio_path=song, clips=_clips(media, "red"), out_path=out)

    samples, rate = _decode_audio(out)
    end = samples.shape[1] / rate
    assert end == pytest.approx(plan.duration, abs=0.03)

    def rms(start: float, stop: float) -> float:
        window = samples[:, int((end - start) * rate) : int((end - stop) * rate)]
        return float(np.sqrt(np.mean(window**2)))

    full = rms(2.0, 1.0)
    assert full > 0.05
    assert rms(1.2, 1.0) > 0.9 * full
    # A linear fade leaves half the level in the middle and about 12 % in the last 0.2 s.
    assert 0.4 * full < rms(0.55, 0.45) < 0.6 * full
    assert rms(0.2, 0.0) < 0.2 * full


@pytest.mark.slow
def test_render_missing_clip_fails(media: dict[str, Path], tmp_path: Path) -> None:
    """A plan naming a clip that was not passed fails before ffmpeg runs."""
    clips = _clips(media, "red")
    plan = _plan(160, 90, _segments((0, 0.0, 10), (3, 0.0, 10)))

    with pytest.raises(RenderFailed, match="clip 3"):
        render_montage(plan, audio_path=media["song"], clips=clips, out_path=tmp_path / "x.mp4")

    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_render_failure_leaves_no_files(
    workers: int, media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ffmpeg fails on one clip, the error names its segment and no file is left."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(media["red"].read_bytes()[:2000])
    clips = {0: (media["red"], probe_media(media["red"])), 1: (broken, probe_media(media["red"]))}
    plan = _plan(160, 90, _segments((0, 0.0, 10), (0, 0.5, 10), (1, 0.0, 10), (0, 1.0, 10)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # A private temp root, so render folders of tests running in parallel do not count.
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))

    with pytest.raises(RenderFailed, match="segment 3 of 4"):
        render_montage(
            plan,
            audio_path=media["song"],
            clips=clips,
            out_path=out_dir / "x.mp4",
            poster_path=out_dir / "poster.jpg",
            storyboard_path=out_dir / "storyboard.jpg",
            workers=workers,
        )

    assert not list(out_dir.iterdir())
    assert not list(temp_root.iterdir())


# ----- crafted inputs -------------------------------------------------------------------


class FifoWatch:
    """Report whether any process opens a FIFO for reading while the watch runs.

    A non-blocking open for writing succeeds only while a reader has the FIFO open (or is
    waiting in open), so polling it detects a read attempt without feeding any data.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.005)
                continue
            self.opened = True
            os.close(fd)

    def __enter__(self) -> FifoWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def bait_fifo(tmp_path: Path) -> Iterator[Path]:
    fifo = tmp_path / "bait.mp4"
    os.mkfifo(fifo)
    yield fifo


CRAFTED = {
    "ffconcat-as-mp4": ("clip.mp4", "ffconcat version 1.0\nfile bait.mp4\n"),
    "hls-as-m3u8": (
        "clip.m3u8",
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXTINF:10,\nbait.mp4\n#EXT-X-ENDLIST\n",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_input_needs_guard(kind: str, tmp_path: Path, bait_fifo: Path) -> None:
    """Without the input guard, ffmpeg follows the crafted file to the FIFO it names."""
    name, text = CRAFTED[kind]
    crafted = tmp_path / name
    crafted.write_text(text)

    with FifoWatch(bait_fifo) as watch:
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-i", str(crafted), "-f", "null", "-"],
            capture_output=True,
            timeout=30,
            check=False,
        )

    assert watch.opened, "the unguarded run never opened the FIFO, so this check proves nothing"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_input_rejected(
    kind: str, media: dict[str, Path], tmp_path: Path, bait_fifo: Path
) -> None:
    """A playlist or concat list posing as a clip fails without reading the file it names."""
    name, text = CRAFTED[kind]
    crafted = tmp_path / name
    crafted.write_text(text)
    # The probe facts of a real clip, as if the crafted file had passed probing.
    clips = {0: (crafted, probe_media(media["red"]))}
    plan = _plan(160, 90, _segments((0, 0.0, 10)))

    with FifoWatch(bait_fifo) as watch:
        with pytest.raises(RenderFailed, match="segment 1 of 1"):
            render_montage(plan, audio_path=media["song"], clips=clips, out_path=tmp_path / "x.mp4")
        guarded = subprocess.run(
            [ffmpeg_exe(), "-nostdin", *FFMPEG_INPUT_GUARD, "-i", str(crafted), "-f", "null", "-"],
            capture_output=True,
            timeout=30,
            check=False,
        )

    assert guarded.returncode != 0
    assert not watch.opened


# ----- corpus -----------------------------------------------------------------------------


def _corpus_file(name: str) -> Path:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"media corpus file not found: {path}")
    return path


def _displayed_first_frame(path: Path, info: MediaInfo, width: int, height: int) -> np.ndarray:
    """Return the clip's first frame as a player shows it, cropped to cover `width`x`height`.

    PyAV decodes the frame without any of the renderer's filters. The rotation from the
    frame's display matrix and the probed pixel aspect are applied here with numpy, then
    the centre crop, sampled to the output size as grey levels.
    """
    with av.open(str(path)) as container:
        frame = next(container.decode(container.streams.video[0]))
        # av_display_rotation_get() counts counter-clockwise, like np.rot90.
        turns = round(frame.rotation / 90)
        image = np.rot90(frame.to_ndarray(format="gray").astype(float), k=turns)
    sar = info.sample_aspect_ratio[0] / info.sample_aspect_ratio[1]
    # The pixel aspect stretches coded columns, which are rows after a quarter turn.
    column_scale, row_scale = (sar, 1.0) if turns % 2 == 0 else (1.0, sar)
    shown_width, shown_height = image.shape[1] * column_scale, image.shape[0] * row_scale
    target = width / height
    if shown_width / shown_height > target:
        crop_width, crop_height = shown_height * target, shown_height
    else:
        crop_width, crop_height = shown_width, shown_width / target
    left, top = (shown_width - crop_width) / 2, (shown_height - crop_height) / 2
    columns = (left + (np.arange(width) + 0.5) * crop_width / width) / column_scale
    rows = (top + (np.arange(height) + 0.5) * crop_height / height) / row_scale
    return image[np.ix_(rows.astype(int), columns.astype(int))]


def _blocks(image: np.ndarray, size: int = 10) -> np.ndarray:
    """Average `size` x `size` blocks, so scaler and encoder detail do not count."""
    height, width = image.shape[0] // size * size, image.shape[1] // size * size
    trimmed = image[:height, :width]
    return trimmed.reshape(height // size, size, width // size, size).mean(axis=(1, 3))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _check_corpus_render(path: Path, info: MediaInfo, out: Path, plan: MontagePlan) -> None:
    """Check format, size and length of a rendered corpus clip, and its first frame's framing.

    The first output frame must match the clip's first frame as a player shows it, after
    the same centre crop, and match it worse when turned upside down. That catches a
    missing or reversed rotation, a stretched pixel aspect and an off-centre crop.
    """
    result = probe_media(out)
    assert result.video_codec == "h264"
    assert (result.width, result.height) == (plan.width, plan.height)
    assert result.width % 2 == 0
    assert result.height % 2 == 0
    assert result.pix_fmt == "yuv420p"
    assert result.color_transfer == "bt709"
    assert result.fps == pytest.approx(plan.fps)
    assert abs(result.duration - plan.duration) <= 1 / plan.fps
    with av.open(str(out)) as container:
        assert sorted(stream.type for stream in container.streams) == ["audio", "video"]
    frames = _decode_video(out)
    assert len(frames) == plan.total_frames
    # A broken tone map or range conversion flattens the picture. The last frame comes from
    # the middle of the clip, past the fade-in from black that some clips start with.
    assert float(np.std(frames[-1])) > 5.0

    reference = _blocks(_displayed_first_frame(path, info, plan.width, plan.height))
    if reference.std() < 10:
        return  # a black or flat first frame (a fade-in) shows no orientation
    rendered = _blocks(frames[0].mean(axis=2))
    upright = _correlation(rendered, reference)
    upside_down = _correlation(rendered, reference[::-1, ::-1])
    assert upright > 0.9, f"first frame does not match the upright source ({upright:.3f})"
    assert upright > upside_down + 0.3
    if not info.is_hdr:  # tone mapping changes the levels on purpose
        assert float(np.abs(rendered - reference).mean()) < 24


@pytest.mark.slow
@pytest.mark.parametrize("name", CORPUS_VIDEO_FILES)
def test_render_corpus_clip(name: str, media: dict[str, Path], tmp_path: Path) -> None:
    """Every corpus video renders as a clip: 1 s of 240x426 in two segments."""
    path = _corpus_file(name)
    info = probe_media(path)
    plan = _plan(240, 426, _segments((0, 0.0, 15), (0, info.duration / 2, 15)))
    out = tmp_path / "corpus.mp4"

    render_montage(plan, audio_path=media["song"], clips={0: (path, info)}, out_path=out)

    _check_corpus_render(path, info, out, plan)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "width", "height"),
    [
        ("phone-portrait-rotate90-4k60-h264.mp4", 426, 240),
        ("iphone-hlg10-hevc-rotate90-editlist.mp4", 240, 240),
        ("bbb-sar1137x800-start10s-editlist-noaudio.mp4", 240, 240),
    ],
    ids=["rotated-in-landscape", "rotated-hdr-in-square", "anamorphic-in-square"],
)
def test_render_corpus_frames(
    name: str, width: int, height: int, media: dict[str, Path], tmp_path: Path
) -> None:
    """Corpus clips fill landscape and square frames upright, in one 0.5 s segment."""
    path = _corpus_file(name)
    info = probe_media(path)
    plan = _plan(width, height, _segments((0, 0.0, 15)))
    out = tmp_path / "frame.mp4"

    render_montage(plan, audio_path=media["song"], clips={0: (path, info)}, out_path=out)

    _check_corpus_render(path, info, out, plan)


@pytest.mark.slow
def test_render_seek_fallback(tmp_path: Path, media: dict[str, Path]) -> None:
    """A clip whose marked keyframes do not decode alone still renders clean frames.

    Seeking into the corpus cockatoo MP4 decodes to green and grey blocks, so the renderer
    must notice the corrupt frames and decode the clip from its start instead.
    """
    path = _corpus_file("cockatoo-h264-yuv444p-20fps-mono16k.mp4")
    info = probe_media(path)
    # 16:9 output, so the cover scale keeps the whole 1280x720 picture.
    plan = _plan(320, 180, _segments((0, 7.0, 3)))
    out = tmp_path / "seek.mp4"

    render_montage(plan, audio_path=media["song"], clips={0: (path, info)}, out_path=out)

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        reference = next(
            frame.to_ndarray(format="rgb24")
            for frame in container.decode(stream)
            if frame.time is not None and frame.time >= 7.0
        )
    rendered = _decode_video(out)[0]
    reference_means = reference.reshape(-1, 3).mean(axis=0)
    rendered_means = rendered.reshape(-1, 3).mean(axis=0)
    assert np.abs(reference_means - rendered_means).max() < 6.0


@pytest.mark.slow
@pytest.mark.parametrize("song", ["bear-id3v2-apic-cover.mp3", "bear-flac-png-cover.flac"])
def test_render_song_with_cover_art(song: str, tmp_path: Path, media: dict[str, Path]) -> None:
    """A song's cover art stays out of the output, which has one video and one audio stream."""
    path = _corpus_file(song)
    clips = _clips(media, "red")
    # 4 s of output from 0.5 s into a 2.7 s song: the end is padded with silence.
    plan = _plan(160, 90, _segments((0, 0.0, 120)), audio_start=0.5)
    out = tmp_path / "cover.mp4"

    render_montage(plan, audio_path=path, clips=clips, out_path=out)

    with av.open(str(out)) as container:
        kinds = sorted(stream.type for stream in container.streams)
        video = container.streams.video[0]
        assert video.codec_context.width == 160
        assert video.frames == 120
    assert kinds == ["audio", "video"]
    samples, rate = _decode_audio(out)
    assert samples.shape[1] == pytest.approx(4.0 * rate, abs=1024)
