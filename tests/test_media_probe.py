"""probe_media on the shared media corpus and on files that are not media."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecliptic.errors import MediaRejected
from ecliptic.media.ffmpeg import FFMPEG_INPUT_GUARD, INPUT_GUARD_OPTIONS, ffmpeg_exe
from ecliptic.media.probe import probe_media

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "media-corpus"

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"media corpus not found at {CORPUS}")

# file, display (width, height) or None, rotation, has_video, has_audio, video_index
CASES = [
    ("phone-portrait-rotate90-4k60-h264.mp4", (2160, 3840), 90, True, True, 0),
    ("iphone-hlg10-hevc-rotate90-editlist.mp4", (1080, 1920), 90, True, True, 0),
    ("iphone-dolbyvision-hlg-rotate90-0.1s.mov", (720, 1280), 90, True, True, 0),
    ("friday-audio-stream-first-30fps.mp4", (640, 480), 0, True, True, 1),
    ("bbb-sar1137x800-start10s-editlist-noaudio.mp4", (1137, 640), 0, True, False, 0),
    ("bear-odd-161x121-vp9-noaudio.webm", (161, 121), 0, True, False, 0),
    ("desk-h264-ac3-mono-bogus-avgfps.mkv", (1080, 720), 0, True, True, 0),
    ("gopro-max-848x480-3datastreams.mp4", (848, 480), 0, True, True, 0),
    ("newtons-cradle-variable-delay.gif", (200, 150), 0, True, False, 0),
    ("bear-id3v2-apic-cover.mp3", None, 0, False, True, None),
    ("bear-flac-png-cover.flac", None, 0, False, True, None),
    ("song-outfoxing-the-fox-97s-id3.mp3", None, 0, False, True, None),
    ("lofi-melody-loop-7.5s-f32le.wav", None, 0, False, True, None),
]


@needs_corpus
@pytest.mark.parametrize(
    ("name", "display", "rotation", "has_video", "has_audio", "video_index"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_probe_corpus_file(
    name: str,
    display: tuple[int, int] | None,
    rotation: int,
    has_video: bool,
    has_audio: bool,
    video_index: int | None,
) -> None:
    """Display size, rotation and stream choice match the corpus manifest."""
    info = probe_media(CORPUS / name)

    assert info.has_video is has_video
    assert info.has_audio is has_audio
    assert info.video_index == video_index
    assert info.rotation == rotation
    if display is None:
        assert info.width is None
        assert info.height is None
    else:
        assert (info.width, info.height) == display
    assert info.duration > 0


@needs_corpus
def test_probe_rotated_coded_size() -> None:
    """A rotated phone clip keeps its coded landscape size next to the portrait display."""
    info = probe_media(CORPUS / "phone-portrait-rotate90-4k60-h264.mp4")

    assert (info.coded_width, info.coded_height) == (3840, 2160)
    assert (info.width, info.height) == (2160, 3840)


@needs_corpus
def test_probe_bogus_average_fps() -> None:
    """The Matroska clip reporting avg_frame_rate 1000 is measured at about 30 fps."""
    info = probe_media(CORPUS / "desk-h264-ac3-mono-bogus-avgfps.mkv")

    assert info.fps is not None
    assert 29.0 < info.fps < 31.0
    assert info.start_time == pytest.approx(0.067, abs=0.001)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "fps"),
    [
        ("roadtrip-vp9-10bit-23.976fps-noaudio.webm", 23.976),
        ("concert-1080p50-h264-pcm-s16le.mov", 50.0),
        ("forest-hdr10-av1-10bit-59.94fps.mp4", 59.94),
        ("friday-audio-stream-first-30fps.mp4", 30.0),
    ],
)
def test_probe_frame_rate(name: str, fps: float) -> None:
    """Constant-rate clips report their nominal rate."""
    info = probe_media(CORPUS / name)

    assert info.fps == pytest.approx(fps, abs=0.01)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "transfer", "primaries", "hdr"),
    [
        ("iphone-hlg10-hevc-rotate90-editlist.mp4", "arib-std-b67", "bt2020", True),
        ("rooftop-hdr10-pq-hevc-hev1-vfr.mp4", "smpte2084", "bt2020", True),
        ("forest-hdr10-av1-10bit-59.94fps.mp4", "smpte2084", "bt2020", True),
        ("bbb-hevc-aac5.1-start1.48s.ts", "bt709", "bt709", False),
        ("concert-1080p50-h264-pcm-s16le.mov", "iec61966-2-4", "bt709", False),
    ],
)
def test_probe_color_tags(name: str, transfer: str, primaries: str, hdr: bool) -> None:
    """Colour tags use ffmpeg's names, and HDR follows the transfer function."""
    info = probe_media(CORPUS / name)

    assert info.color_transfer == transfer
    assert info.color_primaries == primaries
    assert info.is_hdr is hdr


@needs_corpus
def test_probe_audio_facts() -> None:
    """Audio-only files report rate, channels and their container start time."""
    mono = probe_media(CORPUS / "bbb-aac-mono-8khz-start0.256s.m4a")
    surround = probe_media(CORPUS / "bbb-opus-5.1-48khz.ogg")

    assert (mono.sample_rate, mono.channels, mono.audio_index) == (8000, 1, 0)
    assert mono.start_time == pytest.approx(0.256)
    assert (surround.sample_rate, surround.channels) == (48000, 6)
    assert surround.audio_codec == "opus"


@needs_corpus
def test_probe_sar_and_pix_fmt() -> None:
    """Non-square pixels widen the display size and the SAR is kept."""
    info = probe_media(CORPUS / "bbb-sar1137x800-start10s-editlist-noaudio.mp4")

    assert info.sample_aspect_ratio == (1137, 800)
    assert (info.coded_width, info.coded_height) == (800, 640)
    assert info.start_time == pytest.approx(10.0)
    assert info.pix_fmt == "yuv420p"


def test_probe_text_file_rejected(tmp_path: Path) -> None:
    """A text file is rejected with a message naming it."""
    path = tmp_path / "notes.mp4"
    path.write_bytes(b"this is not a video, just some text\n" * 50)

    with pytest.raises(MediaRejected, match=r"notes\.mp4 is not a decodable audio or video"):
        probe_media(path)


def test_probe_missing_file_rejected(tmp_path: Path) -> None:
    """A path that does not exist is rejected, not raised as OSError."""
    with pytest.raises(MediaRejected, match="missing.mp4"):
        probe_media(tmp_path / "missing.mp4")


@pytest.mark.parametrize("name", ["clip.mp4", "clip.m3u8"])
def test_probe_hls_playlist_rejected(tmp_path: Path, name: str) -> None:
    """An HLS playlist is not media, whatever its file name."""
    (tmp_path / "other.ts").write_bytes(b"\x47" * 188 * 4)
    playlist = tmp_path / name
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXTINF:10,\nother.ts\n#EXT-X-ENDLIST\n"
    )

    with pytest.raises(MediaRejected, match=name.replace(".", r"\.")):
        probe_media(playlist)


def test_probe_ffconcat_list_rejected(tmp_path: Path) -> None:
    """An ffconcat list renamed to .mp4 is rejected by the demuxer allowlist."""
    listing = tmp_path / "clip.mp4"
    listing.write_text("ffconcat version 1.0\nfile other.mp4\n")

    with pytest.raises(MediaRejected, match=r"clip\.mp4"):
        probe_media(listing)


def test_input_guard_options_match() -> None:
    """The ffmpeg argv guard and the PyAV options carry the same allowlists."""
    assert FFMPEG_INPUT_GUARD[:2] == ["-protocol_whitelist", "file"]
    assert "-format_whitelist" in FFMPEG_INPUT_GUARD
    assert INPUT_GUARD_OPTIONS["protocol_whitelist"] == "file"
    for demuxer in ("hls", "concat", "image2", "dash"):
        assert demuxer not in INPUT_GUARD_OPTIONS["format_whitelist"].split(",")


def test_ffmpeg_exe_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ECLIPTIC_FFMPEG wins, and a path that is not executable is reported."""
    real = ffmpeg_exe()
    ffmpeg_exe.cache_clear()
    try:
        monkeypatch.setenv("ECLIPTIC_FFMPEG", real)
        assert ffmpeg_exe() == real
        ffmpeg_exe.cache_clear()

        monkeypatch.setenv("ECLIPTIC_FFMPEG", str(tmp_path / "no-ffmpeg"))
        with pytest.raises(RuntimeError, match="ECLIPTIC_FFMPEG"):
            ffmpeg_exe()
    finally:
        ffmpeg_exe.cache_clear()
