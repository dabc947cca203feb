"""Shared fixtures: the local stack, a loopback media server, small generated media, a
recorder of outgoing connections and a fake chain RPC endpoint."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecliptic.local.cli import LocalStack, MediaFileServer
from ecliptic.media.ffmpeg import ffmpeg_exe

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = REPO_ROOT.parent / "shared" / "media-corpus"


def corpus_file(name: str) -> Path:
    """Return a media-corpus file, skipping the test when the corpus is not beside the repo."""
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"media corpus file {name} not found under {CORPUS} (it ships separately)")
    return path


@pytest.fixture(scope="session")
def corpus():
    """The `corpus_file` lookup, as a fixture for test modules."""
    return corpus_file


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def small_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An 8 s beat track at 120 BPM and two short clips, one landscape and one portrait."""
    from ecliptic.local.samples import make_song

    folder = tmp_path_factory.mktemp("small-media")
    song = make_song(folder / "beat-120.mp3", bpm=120.0, seconds=8.0)
    wide = folder / "wide.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=4",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(wide))
    tall = folder / "tall.webm"
    _ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=180x320:rate=30,trim=duration=3",
            "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", str(tall))
    text = folder / "notes.txt"
    text.write_text("this is not media\n" * 100)
    return {"song": song, "wide": wide, "tall": tall, "text": text}


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    """The local runtime and API server, with a small output frame to keep renders fast."""
    with LocalStack(output_max_side=320) as running:
        yield running


@pytest.fixture
def media_server() -> Iterator[MediaFileServer]:
    with MediaFileServer() as server:
        yield server


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every outgoing connection; only 127.0.0.1 may actually be reached.

    A connection to any other address fails the test before a packet is sent.
    """
    attempts: list[tuple[str, int]] = []
    real_create = socket.create_connection
    real_connect = socket.socket.connect

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append((str(address[0]), int(address[1])))
        if address[0] != "127.0.0.1":
            raise AssertionError(f"the test tried to connect to {address}")
        return real_create(address, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] != "127.0.0.1":
            attempts.append((str(address[0]), int(address[1])))
            raise AssertionError(f"the test tried to connect to {address}")
        real_connect(self, address)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


class FakeChain:
    """A JSON-RPC endpoint on 127.0.0.1 that plays a token contract's EIP-3009 state.

    It serves `eth_chainId`, `eth_getBlockByNumber` (`latest`, `finalized` or a number),
    `eth_call` for `authorizationState` at the block asked for, `eth_getLogs` for the
    authorization events and `eth_getTransactionReceipt`. Blocks come every 2 s, the newest
    has the timestamp `now`, and the finalized one is `finality_blocks` behind it. `use` and
    `cancel` put an authorization's event in a block. `fail` makes every call return
    that HTTP status, or a JSON-RPC error when it is 200. `delay_seconds` delays every
    response.
    """

    latest = 30_000_000
    block_seconds = 2

    def __init__(self, asset: str, chain_id: int = 8453) -> None:
        from http.server import ThreadingHTTPServer

        self.asset = asset.lower()
        self.chain_id = chain_id
        self.now = int(time.time())
        self.finality_blocks = 0
        # (authorizer, nonce) -> its event: block, transaction and receipt logs
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        # Logs that every eth_getLogs call returns first, whatever its filter.
        self.extra_logs: list[dict[str, Any]] = []
        self.fail: int | None = None
        self.delay_seconds = 0.0
        self.calls: list[tuple[str, list[Any]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rpc"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.daemon = True

    def __enter__(self) -> FakeChain:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def block_time(self, number: int) -> int:
        return self.now - (self.latest - number) * self.block_seconds

    def block_at(self, moment: float) -> int:
        return self.latest - int((self.now - moment) // self.block_seconds)

    # ----- events and their logs ------------------------------------------------------

    @staticmethod
    def topic(value: str) -> str:
        return "0x" + value.lower()[2:].rjust(64, "0")

    def authorization_log(
        self, authorizer: str, nonce: str, index: int, *, cancelled: bool = False
    ) -> dict[str, Any]:
        from ecliptic.x402.chain import AUTHORIZATION_CANCELED_TOPIC, AUTHORIZATION_USED_TOPIC

        kind = AUTHORIZATION_CANCELED_TOPIC if cancelled else AUTHORIZATION_USED_TOPIC
        return {
            "address": self.asset,
            "topics": [kind, self.topic(authorizer), nonce.lower()],
            "logIndex": hex(index),
        }

    def transfer_log(self, sender: str, to: str, value: int, index: int) -> dict[str, Any]:
        from ecliptic.x402.chain import TRANSFER_TOPIC

        return {
            "address": self.asset,
            "topics": [TRANSFER_TOPIC, self.topic(sender), self.topic(to)],
            "data": "0x" + value.to_bytes(32, "big").hex(),
            "logIndex": hex(index),
        }

    def use(
        self,
        authorizer: str,
        nonce: str,
        *,
        block: int,
        transaction: str,
        to: str,
        value: int,
        logs: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record a transferWithAuthorization of `value` to `to` in `block`.

        `logs` replaces the receipt's logs, which are otherwise the AuthorizationUsed and
        the Transfer at log indexes 3 and 4.
        """
        if logs is None:
            logs = [
                self.authorization_log(authorizer, nonce, 3),
                self.transfer_log(authorizer, to, value, 4),
            ]
        self.events[(authorizer.lower(), nonce.lower())] = {
            "block": block,
            "transaction": transaction,
            "logs": logs,
        }

    def cancel(self, authorizer: str, nonce: str, *, block: int) -> None:
        self.events[(authorizer.lower(), nonce.lower())] = {
            "block": block,
            "transaction": "0x" + "cc" * 32,
            "logs": [self.authorization_log(authorizer, nonce, 0, cancelled=True)],
        }

    # ----- JSON-RPC -----------------------------------------------------------------

    def result(self, method: str, params: list[Any]) -> Any:
        """Return the JSON-RPC result of one call, and record the call."""
        self.calls.append((method, params))
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "eth_getBlockByNumber":
            tag = params[0]
            if tag == "latest":
                number = self.latest
            elif tag == "finalized":
                number = self.latest - self.finality_blocks
            else:
                number = int(tag, 16)
            return {"number": hex(number), "timestamp": hex(self.block_time(number))}
        if method == "eth_call":
            call, block = params
            data = bytes.fromhex(call["data"][2:])
            event = self.events.get(("0x" + data[16:36].hex(), "0x" + data[36:68].hex()))
            used = (
                call["to"].lower() == self.asset
                and event is not None
                and event["block"] <= int(block, 16)
            )
            return "0x" + int(used).to_bytes(32, "big").hex()
        if method == "eth_getLogs":
            query = params[0]
            start, end = int(query["fromBlock"], 16), int(query["toBlock"], 16)
            kinds, *wanted = query["topics"]
            found = list(self.extra_logs)
            for event in self.events.values():
                if not start <= event["block"] <= end:
                    continue
                for entry in event["logs"]:
                    if (
                        query["address"].lower() == entry["address"]
                        and entry["topics"][0] in kinds
                        and entry["topics"][1:3] == wanted
                    ):
                        found.append(
                            {
                                **entry,
                                "transactionHash": event["transaction"],
                                "blockNumber": hex(event["block"]),
                            }
                        )
            return found
        if method == "eth_getTransactionReceipt":
            for event in self.events.values():
                if event["transaction"] == params[0]:
                    return {"status": "0x1", "logs": event["logs"]}
            return None
        raise AssertionError(f"unexpected JSON-RPC method {method}")

    def _handler(self) -> type:
        from http.server import BaseHTTPRequestHandler

        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(fake.delay_seconds)
                status = fake.fail or 200
                if fake.fail == 200:
                    body = {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32000,
                            "message": "header not found"}}  # fmt: skip
                elif fake.fail:
                    body = {"error": "unavailable"}
                else:
                    result = fake.result(request["method"], request["params"])
                    body = {"jsonrpc": "2.0", "id": request["id"], "result": result}
                raw = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up after its timeout

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler
