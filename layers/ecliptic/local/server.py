"""A local HTTP server that speaks the real API through the real API handler.

Each request becomes an API Gateway HTTP API (payload format 2.0) event for the handler that
`template.yaml` names for `ApiFunction`. The handler's response becomes the HTTP response.
The server also serves the media bucket under `/files/`, which the local runtime uses as
its public base URL, so the output URLs that jobs return download with curl. `PUT /files/<key>`
stands in for R2 presigned uploads: the server sets the runtime's `upload_url_base` to its own
`/files` URL, so `POST /uploads` hands out URLs here, and it stores a PUT only when its
signature is one `ecliptic.uploads` made.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ecliptic.local.runtime import LocalRuntime

logger = logging.getLogger(__name__)

FILES_PREFIX = "/files/"
# API Gateway HTTP APIs reject request bodies over 10 MB before the request reaches Lambda.
MAX_BODY_BYTES = 10 * 1024 * 1024
_TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded")


def api_gateway_event(
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    *,
    host: str,
    source_ip: str,
) -> dict[str, Any]:
    """Build the payload-2.0 event API Gateway would send for this request."""
    parts = urlsplit(target)
    lowered = {name.lower(): value for name, value in headers.items()}
    lowered.setdefault("x-forwarded-proto", "http")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    content_type = lowered.get("content-type", "")
    is_text = not body or content_type.startswith(_TEXT_TYPES)
    if is_text and body:
        try:
            body.decode()
        except UnicodeDecodeError:
            # Not UTF-8 after all: API Gateway passes such a body base64-encoded.
            is_text = False
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": unquote(parts.path) or "/",
        "rawQueryString": parts.query,
        "headers": lowered,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": method,
                "path": unquote(parts.path) or "/",
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": not is_text,
    }
    if query:
        event["queryStringParameters"] = query
    if body:
        event["body"] = body.decode() if is_text else base64.b64encode(body).decode()
    return event


class _Server(ThreadingHTTPServer):
    # http.server listens with a backlog of 5; bursts of parallel clients need more.
    request_queue_size = 64


class LocalApiServer:
    """Serves the API on 127.0.0.1; `start()` runs it on a background thread."""

    def __init__(self, runtime: LocalRuntime, port: int = 0) -> None:
        self.runtime = runtime
        self.httpd = _Server(("127.0.0.1", port), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None
        # Read when the runtime starts, so create the server before starting the runtime.
        runtime.extra_env.setdefault(
            "ECLIPTIC_UPLOAD_URL_BASE", self.url + FILES_PREFIX.rstrip("/")
        )

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        logger.info("local API listening", extra={"url": self.url})

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("http %s", format % args)

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path.startswith(FILES_PREFIX):
                    self._serve_file()
                else:
                    self._call_api("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._call_api("POST")

            def do_PUT(self) -> None:  # noqa: N802
                if self.path.startswith(FILES_PREFIX):
                    self._receive_upload()
                else:
                    self._call_api("PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                self._call_api("DELETE")

            def do_OPTIONS(self) -> None:  # noqa: N802
                self._call_api("OPTIONS")

            def _read_body(self) -> bytes | None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send_json(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        b'{"error":{"code":"payload_too_large","message":"Request bodies are '
                        b'limited to 10 MB; send media by URL."}}',
                    )
                    return None
                return self.rfile.read(length) if length else b""

            def _call_api(self, method: str) -> None:
                body = self._read_body()
                if body is None:
                    return
                event = api_gateway_event(
                    method,
                    self.path,
                    dict(self.headers.items()),
                    body,
                    host=self.headers.get("Host", f"127.0.0.1:{server.port}"),
                    source_ip=self.client_address[0],
                )
                started = time.monotonic()
                response = server.runtime.invoke_api(event)
                status = int(response.get("statusCode", 500))
                payload = response.get("body") or ""
                data = (
                    base64.b64decode(payload)
                    if response.get("isBase64Encoded")
                    else payload.encode()
                )
                self.send_response(status)
                for name, value in (response.get("headers") or {}).items():
                    self.send_header(name, value)
                for name, values in (response.get("multiValueHeaders") or {}).items():
                    for value in values:
                        self.send_header(name, value)
                for cookie in response.get("cookies") or []:
                    self.send_header("Set-Cookie", cookie)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                logger.debug(
                    "api request",
                    extra={"method": method, "path": self.path, "status": status,
                           "ms": round((time.monotonic() - started) * 1000)},
                )

            def _receive_upload(self) -> None:
                from ecliptic.errors import EclipticError
                from ecliptic.uploads import receive_local_upload

                parts = urlsplit(self.path)
                raw_length = self.headers.get("Content-Length")
                try:
                    receive_local_upload(
                        unquote(parts.path[len(FILES_PREFIX):]),
                        parts.query,
                        self.headers.get("Content-Type"),
                        int(raw_length) if raw_length and raw_length.isdigit() else None,
                        self.rfile,
                    )
                except EclipticError as error:
                    # R2 rejects a request that does not match its presigned URL with 403.
                    status = HTTPStatus.FORBIDDEN if error.status < 500 else HTTPStatus(500)
                    logger.info("local upload rejected", extra={"code": error.code})
                    self.close_connection = True
                    self._send_json(status, json.dumps(error.to_body()).encode())
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve_file(self) -> None:
                key = unquote(urlsplit(self.path).path[len(FILES_PREFIX):])
                found = server.runtime.read_object(key)
                if found is None:
                    self._send_json(
                        HTTPStatus.NOT_FOUND,
                        b'{"error":{"code":"not_found","message":"No such file."}}',
                    )
                    return
                data, content_type = found
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_json(self, status: HTTPStatus, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
