"""`ecliptic`: run the service locally (serve), make one montage (montage), or a demo (demo).

Every command starts the local runtime: the template's handlers and state machine on moto,
with ffmpeg from PATH or from the imageio-ffmpeg package. Nothing reaches the network;
payments are signed with a throwaway key and settled by the offline facilitator.
"""

from __future__ import annotations

import argparse
import logging
import mimetypes
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

logger = logging.getLogger("ecliptic.cli")

POLL_SECONDS = 0.5
DEMO_MAX_SIDE = 1280
FINAL_STATUSES = {"succeeded", "failed"}


class CliError(Exception):
    """A failure to report on stderr with exit status 1."""


# ----- serving local files --------------------------------------------------------------


class MediaFileServer:
    """Serves chosen local files at unguessable loopback URLs, as a media host would."""

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("media server %s", format % args)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                token = self.path.strip("/").split("/", 1)[0]
                path = server.files.get(token)
                if path is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with path.open("rb") as handle:
                    shutil.copyfileobj(handle, self.wfile)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: Path) -> str:
        token = secrets.token_urlsafe(12)
        self.files[token] = path
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{token}/{quote(path.name)}"

    def __enter__(self) -> MediaFileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ----- the local stack ------------------------------------------------------------------


class LocalStack:
    """The local runtime plus the API server, started and stopped together."""

    def __init__(
        self,
        port: int = 0,
        output_max_side: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        from ecliptic.local.runtime import LocalRuntime
        from ecliptic.local.server import FILES_PREFIX, LocalApiServer

        self.runtime = LocalRuntime(output_max_side=output_max_side, extra_env=extra_env)
        self.server = LocalApiServer(self.runtime, port=port)
        # The server's port is known once it is bound, before the runtime reads its settings.
        self.runtime.public_base_url = self.server.url + FILES_PREFIX.rstrip("/")

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> LocalStack:
        self.runtime.start()
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.runtime.stop()


# ----- montage --------------------------------------------------------------------------


def submit_paid(api_url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a montage the way an x402 client does: get the 402 challenge, sign, resend."""
    import requests

    from ecliptic.x402.client import LocalPayer
    from ecliptic.x402.encoding import decode_json_header

    url = f"{api_url}/montages"
    challenge = requests.post(url, json=body, timeout=30)
    if challenge.status_code != HTTPStatus.PAYMENT_REQUIRED:
        raise CliError(f"the montage request was rejected ({challenge.status_code}): "
                       f"{_error_message(challenge)}")
    requirements = decode_json_header(challenge.headers["PAYMENT-REQUIRED"])

    payer = LocalPayer()
    name, value = payer.payment_header(requirements, version=2)
    response = requests.post(url, json=body, headers={name: value}, timeout=60)
    if response.status_code != HTTPStatus.ACCEPTED:
        raise CliError(f"the montage request was rejected ({response.status_code}): "
                       f"{_error_message(response)}")
    logger.info("paid with throwaway key %s", payer.address)
    return response.json()


def _error_message(response: Any) -> str:
    """Return the `message` of an API error body, or the start of the raw body."""
    try:
        error = response.json()
    except ValueError:
        return response.text[:1000]
    if isinstance(error.get("error"), dict):
        return str(error["error"].get("message", error))
    return str(error.get("error") or error)[:1000]


def wait_for_job(api_url: str, job_id: str, *, show_progress: bool) -> dict[str, Any]:
    """Poll `GET /jobs/{jobId}` until the job ends, showing its progress on stderr.

    On a terminal one line is redrawn; otherwise each change gets its own line.
    """
    import requests

    redraw = sys.stderr.isatty()
    last_state = ""
    while True:
        job = requests.get(f"{api_url}/jobs/{job_id}", timeout=30).json()
        status = job.get("status", "?")
        state = f"{job_id}  {status:<10} {job.get('progress', 0):>3}%"
        if show_progress and state != last_state:
            sys.stderr.write(f"\r{state}" if redraw else f"{state}\n")
            sys.stderr.flush()
            last_state = state
        if status in FINAL_STATUSES:
            if show_progress and redraw:
                sys.stderr.write("\n")
            return job
        time.sleep(POLL_SECONDS)


def download(url: str, out: Path) -> None:
    import requests

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    with requests.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        with partial.open("wb") as handle:
            for chunk in response.iter_content(chunk_size=1024 * 1024):
                handle.write(chunk)
    partial.replace(out)


def _check_media(audio: Path, videos: Sequence[Path]) -> None:
    """Probe the files before paying, so a file that cannot be used costs nothing."""
    from ecliptic.errors import MediaRejected
    from ecliptic.media.probe import probe_media

    for path, wanted in [(audio, "audio"), *[(video, "video") for video in videos]]:
        try:
            info = probe_media(path)
        except MediaRejected as error:
            raise CliError(
                f"{path} is not {wanted} that ffmpeg can decode: {error.message}"
            ) from error
        if wanted == "audio" and not info.has_audio:
            raise CliError(f"{path} has no audio stream; --audio needs a song file")
        if wanted == "video" and not info.has_video:
            raise CliError(f"{path} has no video stream; --video needs a video clip")


def run_montage(
    audio: Path,
    videos: Sequence[Path],
    out: Path,
    *,
    prompt: str | None = None,
    username: str | None = None,
    output_format: str = "auto",
    duration: float | None = None,
    max_side: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Make one montage through the local stack and write it to `out`; return the job."""
    for path in (audio, *videos):
        if not path.is_file():
            raise CliError(f"{path} does not exist or is not a file")
    _check_media(audio, videos)

    with LocalStack(output_max_side=max_side) as stack, MediaFileServer() as files:
        body: dict[str, Any] = {
            "audio": {"url": files.add(audio), "filename": audio.name},
            "videos": [{"url": files.add(video), "filename": video.name} for video in videos],
            "format": output_format,
        }
        if prompt:
            body["prompt"] = prompt
        if username:
            body["username"] = username
        if duration:
            body["durationSeconds"] = duration

        accepted = submit_paid(stack.url, body)
        job = wait_for_job(stack.url, accepted["jobId"], show_progress=show_progress)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise CliError(
                f"job {job['jobId']} failed: {error.get('code', 'unknown')}: "
                f"{error.get('message', 'no message')}"
            )
        download(job["output"]["videoUrl"], out)
    return job


# ----- commands -------------------------------------------------------------------------


def command_serve(args: argparse.Namespace) -> None:
    with LocalStack(port=args.port, output_max_side=args.max_side) as stack:
        sys.stderr.write(
            f"Ecliptic API on {stack.url} (local runtime: moto + in-process handlers).\n"
            f"Try: curl -s {stack.url}/jobs?limit=5   Stop with Ctrl-C.\n"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            sys.stderr.write("stopping\n")


def command_montage(args: argparse.Namespace) -> None:
    job = run_montage(
        Path(args.audio),
        [Path(video) for video in args.video],
        Path(args.out),
        prompt=args.prompt,
        username=args.username,
        output_format=args.format,
        duration=args.duration,
        max_side=args.max_side,
        show_progress=not args.quiet,
    )
    _report(job, Path(args.out))


def command_demo(args: argparse.Namespace) -> None:
    from ecliptic.local.samples import make_sample_media

    sys.stderr.write("Generating sample media (a synthetic beat track and four clips)...\n")
    with tempfile.TemporaryDirectory(prefix="ecliptic-demo-") as folder:
        media = make_sample_media(Path(folder))
        job = run_montage(
            media.song,
            media.clips,
            Path(args.out),
            prompt="Punchy cuts on every kick, bright colours first.",
            username="demo",
            output_format=args.format,
            max_side=args.max_side,
            show_progress=not args.quiet,
        )
    _report(job, Path(args.out))


def _report(job: dict[str, Any], out: Path) -> None:
    output = job["output"]
    sys.stderr.write(
        f"Montage {output['width']}x{output['height']}, {output['duration']:.2f} s, "
        f"planner {job.get('planner', '?')}, job {job['jobId']}\n"
    )
    sys.stdout.write(f"{out.resolve()}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecliptic",
        description="Run the Ecliptic montage service locally: the deployed template, state "
        "machine and handlers on moto, with real ffmpeg. No AWS account or Docker needed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at info level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API on 127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    serve.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="cap the output frame's longer side, pixels (default 1920, full size)",
    )
    serve.set_defaults(func=command_serve)

    montage = commands.add_parser(
        "montage", help="make one montage from local files and write the MP4"
    )
    montage.add_argument("--audio", required=True, help="song file (mp3, m4a, wav, flac, ogg)")
    montage.add_argument(
        "--video", required=True, action="append", help="clip file; repeat for more clips"
    )
    montage.add_argument("--prompt", help="creative brief, up to 1000 characters")
    montage.add_argument("--username", help="display name used in the output's object key")
    montage.add_argument(
        "--format",
        default="auto",
        choices=["auto", "portrait", "landscape", "square"],
        help="output frame (default auto: the clips' majority orientation)",
    )
    montage.add_argument(
        "--duration",
        type=float,
        help="cut the montage to this many seconds (3 to 600); it never runs past the song "
        "or ECLIPTIC_MAX_DURATION_SECONDS",
    )
    montage.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="cap the output frame's longer side, pixels (default 1920, full size)",
    )
    montage.add_argument("--out", required=True, help="where to write the MP4")
    montage.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    montage.set_defaults(func=command_montage)

    demo = commands.add_parser(
        "demo", help="generate sample media and make a montage of it"
    )
    demo.add_argument("--out", default="out/demo-montage.mp4", help="where to write the MP4")
    demo.add_argument(
        "--format", default="auto", choices=["auto", "portrait", "landscape", "square"]
    )
    demo.add_argument(
        "--max-side",
        type=int,
        default=DEMO_MAX_SIDE,
        help=f"cap the output frame's longer side, pixels (default {DEMO_MAX_SIDE})",
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    demo.set_defaults(func=command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # moto's state machine engine logs every caught task error with its internals. The
        # job's own error, printed at the end, explains what went wrong.
        logging.getLogger("moto").setLevel(logging.CRITICAL)
    # The handlers log JSON through Powertools on stdout; keep stdout for the result.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO" if args.verbose else "ERROR")
    try:
        args.func(args)
    except CliError as error:
        sys.stderr.write(f"\nerror: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
