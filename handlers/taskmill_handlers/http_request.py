"""The ``http.request`` handler: one outbound HTTP call, guarded against SSRF.

Every connection goes through :class:`_GuardedHTTPConnection` (or its HTTPS twin): the host
name is resolved once, every resolved address is checked *before* any connection is made, the
socket connects to a checked address (Host header and TLS SNI keep the name), and the peer
address of the connected socket is checked again. A DNS answer that changes between the check
and the connection (rebinding) therefore cannot reach a forbidden address. Redirects are
followed by hand, at most :data:`MAX_REDIRECTS`, each hop through the same guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.message
import functools
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin
from urllib.parse import urlsplit

import requests
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import validate
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import NameResolutionError
from urllib3.exceptions import NewConnectionError
from urllib3.util.connection import allowed_gai_family

from taskmill import HandlerContext
from taskmill import Retry
from taskmill import TaskmillError
from taskmill import __version__
from taskmill import handler

__all__ = [
    "ForbiddenAddress",
    "address_policy",
    "guarded_session",
    "HTTPServerError",
    "HttpRequestSchema",
    "http_request_handler",
    "is_forbidden_address",
    "METHODS",
    "MAX_BODY_BYTES",
    "MAX_REDIRECTS",
]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
"""The HTTP methods a payload may use."""

MAX_BODY_BYTES = 1024 * 1024
"""At most this many bytes of a response body are read; the rest is never read."""

MAX_REDIRECTS = 5
"""Redirect hops followed before the attempt fails."""

MAX_TIMEOUT = 300
"""The longest ``timeout`` a payload may ask for, in seconds."""

MAX_RETRY_AFTER = 3600.0
"""A server's ``Retry-After`` is honoured up to this many seconds."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "transfer-encoding"})
_HEADER_NAME = validate.Regexp(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", error="Not a valid header name.")

_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, …
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class ForbiddenAddress(TaskmillError):  # noqa: N818 - the name is part of the API (error.type)
    """The request would reach a private, loopback, link-local or metadata address.

    The attempt fails without retry (``no_retry``): asking again cannot make the address public.
    Allowed only with ``TASKMILL_HTTP_ALLOW_PRIVATE=1``.
    """

    no_retry = True


class HTTPServerError(Retry):
    """The server answered 5xx; the attempt failed and is retried (after ``Retry-After`` if sent)."""

    def __init__(self, message: str, status: int, delay: float | None = None) -> None:
        super().__init__(message, delay=delay)
        self.status = status


# --- the address guard -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _allow_private() -> bool:
    """Whether the settings allow private addresses (``TASKMILL_HTTP_ALLOW_PRIVATE``); read once."""
    from taskmill.plugin_api import read_spec
    from taskmill_handlers.settings import HTTP_SETTINGS

    return bool(read_spec(HTTP_SETTINGS).allow_private)


_POLICY: contextvars.ContextVar[tuple[bool, str] | None] = contextvars.ContextVar(
    "taskmill_address_policy", default=None
)
"""``(allow_private, setting name)`` set by :func:`address_policy`; None means http.request's."""


@contextlib.contextmanager
def address_policy(allow_private: bool, setting: str) -> Iterator[None]:
    """Judge the connections made in this block by ``allow_private`` instead of the settings.

    Other callers of the guarded session (webhook delivery) have their own switch; ``setting``
    names it in the :class:`ForbiddenAddress` message.

    Args:
        allow_private: True lifts the address check, as ``TASKMILL_HTTP_ALLOW_PRIVATE=1`` does.
        setting: the environment variable that would lift it.
    """
    token = _POLICY.set((allow_private, setting))
    try:
        yield
    finally:
        _POLICY.reset(token)


def _is_forbidden_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip in _METADATA_ADDRESSES:
        return True
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return True
    return isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local


def is_forbidden_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is one ``http.request`` refuses by default.

    Refused: private, loopback, link-local, multicast, reserved, unspecified, shared (CGNAT) and
    other non-global addresses, and the cloud metadata addresses. An IPv6 address that embeds an
    IPv4 one (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``)
    is judged by the IPv4 address; 6to4 and Teredo are refused when the embedded address is.

    Args:
        address: an IPv4 or IPv6 address, optionally with a ``%zone`` suffix.

    Returns:
        True when a connection to it must be refused. Unparseable input counts as forbidden.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # judged by the IPv4 address it stands for
            return _is_forbidden_ip(ip.ipv4_mapped)
        if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
            return _is_forbidden_ip(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_PREFIX:  # well-known NAT64 prefix: judged by the IPv4 address it reaches
            return _is_forbidden_ip(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded: list[ipaddress.IPv4Address] = []
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if any(_is_forbidden_ip(v4) for v4 in embedded):
            return True
    return _is_forbidden_ip(ip)


def _check_address(address: str, port: int) -> None:
    """Refuse a connection to ``address``:``port`` unless it is public or private is allowed.

    Every connection ``http.request`` makes passes here twice: for each resolved address before
    connecting, and for the peer address once connected.

    Raises:
        ForbiddenAddress: the address is forbidden and ``http_allow_private`` (or the switch of
            the enclosing :func:`address_policy`) is off.
    """
    policy = _POLICY.get()
    allowed, setting = policy if policy is not None else (_allow_private(), "TASKMILL_HTTP_ALLOW_PRIVATE")
    if allowed:
        return
    if is_forbidden_address(address):
        raise ForbiddenAddress(
            f"refusing to connect to {address} (port {port}): private, loopback, link-local or "
            f"metadata addresses are not allowed ({setting})",
            address=address,
            port=port,
        )


class _GuardedConnectionMixin:
    """Replaces urllib3's ``_new_conn``: resolve once, check, connect to a checked address."""

    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        host = self.host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        for info in infos:  # every answer is checked before anything is connected
            _check_address(str(info[4][0]), self.port)
        error: OSError | None = None
        for family, socktype, proto, _canonname, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, (int, float)):
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
                _check_address(str(sock.getpeername()[0]), self.port)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
            ) from error
        raise NewConnectionError(  # type: ignore[arg-type]
            self, f"Failed to establish a new connection: {error}"
        ) from error


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    """A requests adapter whose pools only make guarded connections and never use a proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise ForbiddenAddress("http.request does not go through proxies")


def guarded_session() -> requests.Session:
    """A requests session whose every connection passes the address guard; no proxies, no netrc."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    adapter = _GuardedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"taskmill/{__version__}"
    return session


# --- the payload -------------------------------------------------------------------------------


def _validate_url(value: str) -> None:
    """Reject anything but an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValidationError(f"Not a valid URL: {exc}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Not a valid http or https URL.")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValidationError("Not a valid URL: it contains whitespace or control characters.")


def _validate_header_value(value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValidationError("Header values may not contain CR, LF or NUL.")


class HttpRequestSchema(Schema):
    """Payload of ``http.request``: url, method, headers, JSON body and timeout."""

    url = fields.String(required=True, validate=[validate.Length(max=8192), _validate_url])
    method = fields.String(load_default="GET", validate=validate.OneOf(METHODS))
    headers = fields.Dict(
        keys=fields.String(validate=_HEADER_NAME),
        values=fields.String(validate=_validate_header_value),
        load_default=dict,
    )
    body = fields.Raw(load_default=None, allow_none=True)
    timeout = fields.Float(
        load_default=10.0,
        allow_nan=False,
        validate=validate.Range(min=0, max=MAX_TIMEOUT, min_inclusive=False),
    )


# --- the handler -------------------------------------------------------------------------------


def _remaining(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"the request took longer than its timeout of {timeout:g} s")
    return left


def _read_capped(response: requests.Response, deadline: float, timeout: float) -> tuple[bytes, bool]:
    """Read at most :data:`MAX_BODY_BYTES` of the (decoded) body; True when there was more."""
    buffer = bytearray()
    for chunk in response.iter_content(chunk_size=64 * 1024):
        buffer += chunk
        if len(buffer) > MAX_BODY_BYTES:
            return bytes(buffer[:MAX_BODY_BYTES]), True
        _remaining(deadline, timeout)
    return bytes(buffer), False


def _decode_body(content: bytes, content_type: str, truncated: bool) -> Any:
    """Parse JSON when the response says it is JSON (and is complete), else decode text."""
    message = email.message.Message()
    message["content-type"] = content_type or "application/octet-stream"
    media_type = message.get_content_type()
    if not truncated and content and (media_type == "application/json" or media_type.endswith("+json")):
        try:
            return json.loads(content)
        except ValueError:
            pass
    charset = message.get_content_charset() or "utf-8"
    try:
        return content.decode(charset, errors="replace")
    except LookupError:
        return content.decode("utf-8", errors="replace")


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return min(float(value.strip()), MAX_RETRY_AFTER)
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _follow(
    status: int, method: str, body: Any, headers: dict[str, str], old_url: str, new_url: str
) -> tuple[str, Any, dict[str, str]]:
    """The method, body and headers of the next hop (browser rules, like requests)."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = {k: v for k, v in headers.items() if k.lower() not in _BODY_HEADERS}
    if _origin(old_url) != _origin(new_url):
        headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
    return method, body, headers


@handler("http.request", schema=HttpRequestSchema)
def http_request_handler(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Make one HTTP(S) request and return its status, headers and body.

    A 5xx answer, a connection error or a timeout fails the attempt (it is retried). Private,
    loopback, link-local and cloud metadata addresses are refused, also after DNS resolution and
    on every redirect (at most 5), unless ``TASKMILL_HTTP_ALLOW_PRIVATE=1``; a refusal fails the
    task at once with ``ForbiddenAddress``. At most 1 MiB of the body is read.

    Args:
        ctx: the task's context.
        payload: ``{"url", "method": "GET", "headers": {}, "body": null, "timeout": 10}``.

    Returns:
        ``{"status", "headers", "body", "url", "truncated"}``: ``body`` is the parsed JSON when
        the response is JSON, else text; ``url`` is the final URL after redirects;
        ``truncated`` says the body was longer than 1 MiB and was cut.

    Raises:
        ForbiddenAddress: the URL or a redirect leads to a forbidden address (no retry).
        HTTPServerError: the server answered 5xx (retried, after ``Retry-After`` if given).
        requests.RequestException, TimeoutError: the request failed or took too long.
    """
    url = str(payload["url"])
    method = str(payload.get("method") or "GET").upper()
    headers = dict(payload.get("headers") or {})
    body = payload.get("body")
    timeout = float(payload.get("timeout") or 10.0)
    deadline = time.monotonic() + timeout
    with guarded_session() as session:
        for hop in range(MAX_REDIRECTS + 1):
            _validate_url_or_refuse(url)
            request = requests.Request(method, url, headers=headers, json=body)
            prepared = session.prepare_request(request)
            response = session.send(
                prepared,
                stream=True,
                allow_redirects=False,
                timeout=_remaining(deadline, timeout),
            )
            try:
                status = response.status_code
                location = response.headers.get("Location")
                if status in _REDIRECT_STATUSES and location:
                    if hop == MAX_REDIRECTS:
                        raise requests.TooManyRedirects(
                            f"more than {MAX_REDIRECTS} redirects, last to {location}"
                        )
                    next_url = urljoin(url, location)
                    ctx.logger.debug("following a %s redirect to %s", status, next_url)
                    method, body, headers = _follow(status, method, body, headers, url, next_url)
                    url = next_url
                    continue
                if status >= 500:
                    raise HTTPServerError(
                        f"HTTP {status} from {url}",
                        status=status,
                        delay=_retry_after(response.headers.get("Retry-After")),
                    )
                content, truncated = _read_capped(response, deadline, timeout)
                return {
                    "status": status,
                    "headers": dict(response.headers),
                    "body": _decode_body(content, response.headers.get("Content-Type", ""), truncated),
                    "url": url,
                    "truncated": truncated,
                }
            finally:
                response.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _validate_url_or_refuse(url: str) -> None:
    """A redirect may point anywhere: only http(s) URLs are followed.

    Raises:
        ForbiddenAddress: the URL is not an absolute http(s) URL with a host.
    """
    try:
        _validate_url(url)
    except ValidationError as exc:
        raise ForbiddenAddress(f"refusing to request {url!r}: {exc.messages[0]}") from None
