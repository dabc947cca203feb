"""Fetch a media URL into the media bucket without opening a door to internal networks.

Every host is resolved once, every resolved address is checked, and the connection goes to
the checked address only (no second DNS lookup between check and connect). Redirects are
followed by hand so each hop is checked again. Plain HTTP and loopback addresses are
allowed only when `allow_loopback_urls` is on, which only the local runtime does.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from ecliptic.errors import MediaFetchFailed, MediaRejected
from ecliptic.storage import MediaStore

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
CHUNK_SIZE = 1024 * 1024
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout_seconds: float
    allow_loopback: bool = False


@dataclass(frozen=True)
class FetchResult:
    size: int
    sha256: str
    content_type: str
    final_url: str


def address_allowed(address: IPAddress, *, allow_loopback: bool) -> bool:
    """Return True when `address` is a public unicast address (or loopback, if allowed)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return allow_loopback
    # `is_global` is False for private, link-local (metadata services), CGNAT, reserved,
    # documentation and unspecified ranges; multicast needs its own check.
    return address.is_global and not address.is_multicast


def resolve_checked(host: str, port: int, *, allow_loopback: bool) -> IPAddress:
    """Resolve `host` and return its first address, rejecting the host if any is forbidden."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise MediaFetchFailed(f"The host {host!r} could not be resolved.") from error
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise MediaFetchFailed(f"The host {host!r} has no addresses.")
    for address in addresses:
        if not address_allowed(address, allow_loopback=allow_loopback):
            raise MediaFetchFailed(
                f"The host {host!r} resolves to a private or reserved address; "
                "media URLs must point at a public server."
            )
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with SNI and certificate checks against the host name."""

    def __init__(self, host: str, address: IPAddress, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, address: IPAddress, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self._address), self.port), self.timeout)


def _open(
    url: str, limits: FetchLimits
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """Follow redirects by hand and return an open connection at the final response."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        scheme = parts.scheme.lower()
        if scheme != "https" and not (scheme == "http" and limits.allow_loopback):
            raise MediaFetchFailed(f"Only https:// media URLs are accepted, got {scheme}://.")
        if not parts.hostname:
            raise MediaFetchFailed("The media URL has no host name.")
        if parts.username or parts.password:
            raise MediaFetchFailed("Media URLs must not carry user names or passwords.")
        port = parts.port or (443 if scheme == "https" else 80)
        address = resolve_checked(parts.hostname, port, allow_loopback=limits.allow_loopback)
        if scheme == "http" and not address.is_loopback:
            raise MediaFetchFailed("Plain http:// is accepted only for local test servers.")

        connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = connection_class(parts.hostname, address, port, limits.timeout_seconds)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        connection.request("GET", path, headers={"User-Agent": "ecliptic-fetch/1", "Accept": "*/*"})
        response = connection.getresponse()
        if response.status in _REDIRECT_STATUSES:
            location = response.getheader("Location")
            connection.close()
            if not location:
                raise MediaFetchFailed("The media server sent a redirect without a Location.")
            current = urljoin(current, location)
            logger.info("following redirect", extra={"location": current})
            continue
        if response.status != 200:
            connection.close()
            raise MediaFetchFailed(
                f"The media server answered HTTP {response.status} for {_display(current)}; "
                "check that the URL serves the file directly."
            )
        return connection, response, current
    raise MediaFetchFailed(f"The media URL redirected more than {MAX_REDIRECTS} times.")


def _display(url: str) -> str:
    # Query strings often hold signatures or tokens; keep them out of messages and logs.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{parts.path}"


def fetch_to_store(
    url: str,
    store: MediaStore,
    key: str,
    *,
    limits: FetchLimits,
    content_type_check: Callable[[str], None] | None = None,
) -> FetchResult:
    """Stream `url` into `key`, computing sha256 on the way.

    Raises
    ------
    MediaFetchFailed
        Forbidden scheme or address, HTTP error, too many redirects, timeout.
    MediaRejected
        The file is larger than `limits.max_bytes` or has a non-media content type.
    """
    deadline = time.monotonic() + limits.timeout_seconds
    try:
        connection, response, final_url = _open(url, limits)
    except (OSError, http.client.HTTPException) as error:
        raise MediaFetchFailed(
            f"Downloading {_display(url)} failed: {error.__class__.__name__}."
        ) from error

    digest = hashlib.sha256()
    content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if content_type_check is not None:
        content_type_check(content_type)
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        connection.close()
        raise MediaRejected(
            f"{_display(final_url)} is {int(declared)} bytes, over the {limits.max_bytes}-byte cap."
        )

    try:
        with store.open_multipart(key, content_type or "application/octet-stream") as writer:
            while True:
                if time.monotonic() > deadline:
                    raise MediaFetchFailed(
                        f"Downloading {_display(final_url)} took longer than "
                        f"{limits.timeout_seconds:.0f} s."
                    )
                chunk = response.read(CHUNK_SIZE)
                if not chunk:
                    break
                if writer.size + len(chunk) > limits.max_bytes:
                    raise MediaRejected(
                        f"{_display(final_url)} is larger than the {limits.max_bytes}-byte cap."
                    )
                digest.update(chunk)
                writer.write(chunk)
            size = writer.close()
    except (OSError, http.client.HTTPException) as error:
        raise MediaFetchFailed(
            f"Downloading {_display(final_url)} failed: {error.__class__.__name__}."
        ) from error
    finally:
        connection.close()

    if size == 0:
        raise MediaRejected(f"{_display(final_url)} is empty.")
    return FetchResult(
        size=size,
        sha256=digest.hexdigest(),
        content_type=content_type or "application/octet-stream",
        final_url=final_url,
    )

