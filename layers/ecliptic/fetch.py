"""Fetch a media URL into the media bucket without opening a door to internal networks.

Defences against server-side request forgery, in the order they apply:

- Only `https://` URLs. Plain `http://` and loopback addresses are allowed only when
  `allow_loopback` is on, which only the local runtime does. URLs with user info are rejected.
- A host is an IP literal or a DNS name. IPv4 literals in the legacy spellings that URL
  parsers and `inet_aton` accept (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) are parsed
  as the address they spell, checked, and then rejected unless written in dotted decimal.
- Every address a name resolves to must pass `address_allowed`, and the connection goes to
  that checked address: no second DNS lookup can swap it (DNS rebinding).
- Redirects are followed by hand and every hop is checked again, at most `max_redirects`.
- The size cap applies to Content-Length and again while streaming. One deadline covers the
  whole download, redirects included, and a watchdog shuts the socket down when it passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from ecliptic.errors import MediaFetchFailed, MediaRejected
from ecliptic.storage import MediaStore

if TYPE_CHECKING:
    from ecliptic.config import Settings

logger = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
# Bytes passed to the `head_check` callback: enough for every container signature we test.
HEAD_BYTES = 512
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that are never fetched, from the IANA IPv4 and IPv6 special-purpose address
# registries. `ipaddress.is_global` covers most of them too, but its tables changed between
# Python releases (3.11.10, 3.12.4), so the list is spelled out here.
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network", includes the unspecified address
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT (Alibaba Cloud metadata is 100.100.100.200)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: AWS, GCP and Azure metadata at 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (Oracle Cloud metadata 192.0.0.192)
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo included
        "2001:db8::/32",  # documentation
        "5f00::/16",  # segment routing (SRv6) SIDs
        "fc00::/7",  # unique local (AWS metadata over IPv6 is fd00:ec2::254)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class FetchLimits:
    """Caps for one download; `from_settings` fills them from the service settings."""

    max_bytes: int
    timeout_seconds: float
    read_timeout_seconds: float = 20.0
    max_redirects: int = 3
    allow_loopback: bool = False
    ca_bundle: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, max_bytes: int) -> FetchLimits:
        return cls(
            max_bytes=max_bytes,
            timeout_seconds=settings.fetch_timeout_seconds,
            read_timeout_seconds=settings.fetch_read_timeout_seconds,
            max_redirects=settings.fetch_max_redirects,
            allow_loopback=settings.allow_loopback_urls,
            ca_bundle=settings.fetch_ca_bundle,
        )


@dataclass(frozen=True)
class FetchResult:
    size: int
    sha256: str
    content_type: str
    final_url: str


# ----- address policy -------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address a NAT64 or 6to4 address leads to, if it is one."""
    if address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_allowed(address: IPAddress, *, allow_loopback: bool) -> bool:
    """Return True when `address` is a public unicast address (or loopback, if allowed)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        if address.ipv4_mapped is not None:
            return address_allowed(address.ipv4_mapped, allow_loopback=allow_loopback)
        embedded = _embedded_ipv4(address)
        if embedded is not None and not address_allowed(embedded, allow_loopback=False):
            return False
    if address.is_loopback:
        return allow_loopback
    if any(address in network for network in _FORBIDDEN_NETWORKS):
        return False
    return address.is_global and not address.is_multicast


def _ipv4_number(text: str) -> int | None:
    """Parse one part of a legacy IPv4 spelling: decimal, `0x` hex or leading-zero octal."""
    if text[:2].lower() == "0x":
        digits, base = text[2:] or "0", 16
    elif len(text) > 1 and text.startswith("0"):
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    try:
        return int(digits, base) if digits.isalnum() and digits.isascii() else None
    except ValueError:
        return None


def parse_ip_host(host: str) -> IPAddress | None:
    """Return the address an IP-literal host spells, or None when `host` is a DNS name.

    Follows the WHATWG URL rule: a host whose last label is a number is an IPv4 address,
    in any of the legacy spellings (1 to 4 parts, each decimal, hex or octal).

    Raises
    ------
    MediaFetchFailed
        The host looks numeric but spells no valid address, or has an IPv6 zone id.
    """
    if ":" in host:
        if "%" in host:
            raise MediaFetchFailed("Media URLs must not use IPv6 zone ids.")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as error:
            raise MediaFetchFailed(f"The host {host!r} is not a valid IPv6 address.") from error
    labels = host.rstrip(".").split(".")
    last = labels[-1]
    if not (last.isascii() and last.isdigit()) and _ipv4_number(last) is None:
        return None
    numbers = [_ipv4_number(label) for label in labels] if len(labels) <= 4 else [None]
    if any(number is None for number in numbers):
        raise MediaFetchFailed(f"The host {host!r} is not a valid IPv4 address.")
    *leading, last = [number for number in numbers if number is not None]
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        raise MediaFetchFailed(f"The host {host!r} is not a valid IPv4 address.")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ascii_host(host: str) -> str:
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise MediaFetchFailed(f"The host {host!r} is not a valid host name.") from error
    labels = ascii_host.rstrip(".").split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise MediaFetchFailed(f"The host {host!r} is not a valid host name.")
    return ascii_host


def _forbidden(host: str) -> MediaFetchFailed:
    return MediaFetchFailed(
        f"The host {host!r} is or resolves to a private, loopback, link-local or reserved "
        "address; media URLs must point at a public server."
    )


def resolve_checked(host: str, port: int, *, allow_loopback: bool) -> IPAddress:
    """Return the address to connect to for `host`, rejecting the host if any is forbidden.

    Raises
    ------
    MediaFetchFailed
        The host is invalid, cannot be resolved, or has a forbidden address.
    """
    literal = parse_ip_host(host)
    if literal is not None:
        if not address_allowed(literal, allow_loopback=allow_loopback):
            raise _forbidden(host)
        if isinstance(literal, ipaddress.IPv4Address) and str(literal) != host.rstrip("."):
            raise MediaFetchFailed(
                f"The host {host!r} spells an IPv4 address in a legacy form; write it as "
                f"{literal}."
            )
        return literal

    name = _ascii_host(host)
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise MediaFetchFailed(f"The host {host!r} could not be resolved.") from error
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise MediaFetchFailed(f"The host {host!r} has no addresses.")
    for address in addresses:
        if not address_allowed(address, allow_loopback=allow_loopback):
            logger.warning("forbidden address", extra={"host": host, "address": str(address)})
            raise _forbidden(host)
    return addresses[0]


# ----- connections ----------------------------------------------------------------------


class _Deadline:
    """One deadline for a whole download: when it passes, a timer shuts the open socket down.

    Socket timeouts bound each single wait. A server that sends one byte just before every
    timeout never trips them, so the total time needs this timer.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                _shutdown(self._socket)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    # The plain socket method: `SSLSocket.shutdown` would also drop the TLS object under
    # the feet of the thread that is blocked reading from it. A closed socket is fine.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _connect(
    address: IPAddress, port: int, limits: FetchLimits, deadline: _Deadline
) -> socket.socket:
    timeout = max(0.001, min(limits.read_timeout_seconds, deadline.remaining()))
    sock = socket.create_connection((str(address), port), timeout)
    sock.settimeout(limits.read_timeout_seconds)
    deadline.attach(sock)
    return sock


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with SNI and certificate checks against the host name."""

    def __init__(
        self,
        host: str,
        address: IPAddress,
        port: int,
        limits: FetchLimits,
        deadline: _Deadline,
    ) -> None:
        context = ssl.create_default_context(cafile=limits.ca_bundle)
        super().__init__(host, port, timeout=limits.read_timeout_seconds, context=context)
        self._address = address
        self._limits = limits
        self._deadline = deadline

    def connect(self) -> None:
        sock = _connect(self._address, self.port, self._limits, self._deadline)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        self._deadline.attach(self.sock)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP to a checked loopback address (local runtime only)."""

    def __init__(
        self,
        host: str,
        address: IPAddress,
        port: int,
        limits: FetchLimits,
        deadline: _Deadline,
    ) -> None:
        super().__init__(host, port, timeout=limits.read_timeout_seconds)
        self._address = address
        self._limits = limits
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = _connect(self._address, self.port, self._limits, self._deadline)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    address: IPAddress
    path: str


def check_url(url: str, limits: FetchLimits) -> _Target:
    """Check one URL (scheme, user info, host, every address) without connecting.

    Raises
    ------
    MediaFetchFailed
        The URL breaks a rule, which the message names.
    """
    try:
        parts = urlsplit(url)
        port_number = parts.port
    except ValueError as error:
        raise MediaFetchFailed(f"The media URL is malformed: {error}.") from error
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and limits.allow_loopback):
        raise MediaFetchFailed(f"Only https:// media URLs are accepted, got {scheme}://.")
    if parts.username is not None or parts.password is not None:
        raise MediaFetchFailed("Media URLs must not carry user names or passwords.")
    if not parts.hostname:
        raise MediaFetchFailed("The media URL has no host name.")
    port = port_number or (443 if scheme == "https" else 80)
    address = resolve_checked(parts.hostname, port, allow_loopback=limits.allow_loopback)
    if scheme == "http" and not address.is_loopback:
        raise MediaFetchFailed("Plain http:// is accepted only for local test servers.")
    literal = parse_ip_host(parts.hostname)
    host = parts.hostname if literal is not None else _ascii_host(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(scheme=scheme, host=host, port=port, address=address, path=path)


def _open(
    url: str, limits: FetchLimits, deadline: _Deadline
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """Follow redirects by hand and return an open connection at the final response."""
    current = url
    for _ in range(limits.max_redirects + 1):
        target = check_url(current, limits)
        connection_class = (
            _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        )
        connection = connection_class(target.host, target.address, target.port, limits, deadline)
        try:
            connection.request(
                "GET",
                target.path,
                headers={
                    "User-Agent": "ecliptic-fetch/1",
                    "Accept": "audio/*, video/*, */*;q=0.1",
                    "Accept-Encoding": "identity",
                },
            )
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        if response.status in _REDIRECT_STATUSES:
            location = response.getheader("Location")
            connection.close()
            if not location:
                raise MediaFetchFailed("The media server sent a redirect without a Location.")
            current = urljoin(current, location.strip())
            logger.info("following redirect", extra={"location": display_url(current)})
            continue
        if response.status != 200:
            connection.close()
            raise MediaFetchFailed(
                f"The media server returned HTTP {response.status} for {display_url(current)}; "
                "check that the URL serves the file directly."
            )
        return connection, response, current
    raise MediaFetchFailed(f"The media URL redirected more than {limits.max_redirects} times.")


def display_url(url: str) -> str:
    """Return `url` without query string, fragment or user info, for messages and logs."""
    # Query strings often hold signatures or tokens.
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the media URL"
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


# ----- download -------------------------------------------------------------------------


def fetch_to_store(
    url: str,
    store: MediaStore,
    key: str,
    *,
    limits: FetchLimits,
    content_type_check: Callable[[str, str], str] | None = None,
    head_check: Callable[[bytes], None] | None = None,
) -> FetchResult:
    """Stream `url` into `key`, computing sha256 on the way.

    `content_type_check(content_type, final_url)` runs on the response headers and returns
    the content type to store; `head_check(first_bytes)` runs on the first `HEAD_BYTES`
    bytes. Both raise to reject the file.

    Raises
    ------
    MediaFetchFailed
        Forbidden scheme or address, HTTP error, too many redirects, timeout, cut-off body.
    MediaRejected
        The file is larger than `limits.max_bytes`, empty, or rejected by a check.
    TransientStepError
        Writing to media storage failed.
    """
    deadline = _Deadline(limits.timeout_seconds)
    started = time.monotonic()
    logger.info("download started", extra={"url": display_url(url), "key": key})
    try:
        result = _fetch(url, store, key, limits, deadline, content_type_check, head_check)
    except (MediaFetchFailed, MediaRejected) as error:
        # A socket shut down by the deadline reads as an early end of the file.
        if deadline.expired:
            raise _timed_out(url, limits) from error
        raise
    except (OSError, http.client.HTTPException, ValueError) as error:
        # ValueError: http.client reading a socket that the deadline shut down.
        if deadline.expired:
            raise _timed_out(url, limits) from error
        if isinstance(error, TimeoutError):
            raise MediaFetchFailed(
                f"The server of {display_url(url)} sent nothing for "
                f"{limits.read_timeout_seconds:g} s."
            ) from error
        if isinstance(error, ssl.SSLCertVerificationError):
            raise MediaFetchFailed(
                f"The TLS certificate of {display_url(url)} is not valid: "
                f"{error.verify_message}."
            ) from error
        raise MediaFetchFailed(
            f"Downloading {display_url(url)} failed: {error.__class__.__name__}."
        ) from error
    finally:
        deadline.cancel()
    logger.info(
        "download finished",
        extra={"key": key, "bytes": result.size, "seconds": round(time.monotonic() - started, 3)},
    )
    return result


def _timed_out(url: str, limits: FetchLimits) -> MediaFetchFailed:
    return MediaFetchFailed(
        f"Downloading {display_url(url)} took longer than {limits.timeout_seconds:g} s; "
        "use a faster host or a smaller file."
    )


def _fetch(
    url: str,
    store: MediaStore,
    key: str,
    limits: FetchLimits,
    deadline: _Deadline,
    content_type_check: Callable[[str, str], str] | None,
    head_check: Callable[[bytes], None] | None,
) -> FetchResult:
    connection, response, final_url = _open(url, limits, deadline)
    try:
        content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise MediaRejected(
                f"{display_url(final_url)} is sent with Content-Encoding {encoding!r}; "
                "media must be served as the raw file."
            )
        if content_type_check is not None:
            content_type = content_type_check(content_type, final_url)
        declared = response.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > limits.max_bytes:
            raise MediaRejected(
                f"{display_url(final_url)} is {int(declared)} bytes, more than the "
                f"{limits.max_bytes} bytes allowed.",
                detail={"size": int(declared)},
            )

        digest = hashlib.sha256()
        head = bytearray()
        checked_head = head_check is None
        with store.open_multipart(key, content_type or "application/octet-stream") as writer:
            while chunk := response.read1(CHUNK_SIZE):
                if writer.size + len(chunk) > limits.max_bytes:
                    raise MediaRejected(
                        f"{display_url(final_url)} is larger than the {limits.max_bytes} "
                        "bytes allowed.",
                        detail={"size": writer.size + len(chunk)},
                    )
                if not checked_head:
                    head += chunk[: HEAD_BYTES - len(head)]
                    if len(head) >= HEAD_BYTES and head_check is not None:
                        head_check(bytes(head))
                        checked_head = True
                digest.update(chunk)
                writer.write(chunk)
            if response.length:
                # http.client returns b"" when the peer closes early; `length` counts the rest.
                raise MediaFetchFailed(
                    f"The server of {display_url(final_url)} closed the connection "
                    f"{response.length} bytes before the end of the file."
                )
            if writer.size == 0:
                raise MediaRejected(f"{display_url(final_url)} is empty.")
            if not checked_head and head_check is not None:
                head_check(bytes(head))
            size = writer.close()
    finally:
        connection.close()

    return FetchResult(
        size=size,
        sha256=digest.hexdigest(),
        content_type=content_type or "application/octet-stream",
        final_url=final_url,
    )
