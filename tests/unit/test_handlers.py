"""Unit tests of the built-in handlers, called directly with a real ``HandlerContext``.

The HTTP tests talk only to servers started here on 127.0.0.1; no test sends traffic to any
other address (the refusals under test happen before a socket connects, which is asserted).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import marshmallow
import pytest
import requests

import taskmill_handlers
from taskmill.handlers import HandlerContext
from taskmill.handlers import HandlerSpec
from taskmill_handlers import http_request
from taskmill_handlers.echo import echo_handler
from taskmill_handlers.fail import fail_handler
from taskmill_handlers.http_request import MAX_BODY_BYTES
from taskmill_handlers.http_request import ForbiddenAddress
from taskmill_handlers.http_request import HTTPServerError
from taskmill_handlers.http_request import http_request_handler
from taskmill_handlers.http_request import is_forbidden_address
from taskmill_handlers.sleep import sleep_handler

# --- helpers -------------------------------------------------------------------------------------


class Probe:
    """Records progress reports and answers cancel checks for a ``HandlerContext``."""

    def __init__(self, cancel_after: float | None = None) -> None:
        self.progress: list[float] = []
        self.started = time.monotonic()
        self.cancel_after = cancel_after

    def report(self, value: float) -> None:
        self.progress.append(value)

    def cancelled(self) -> bool:
        return self.cancel_after is not None and time.monotonic() - self.started >= self.cancel_after


def make_ctx(attempt: int = 1, probe: Probe | None = None, type_: str = "test") -> HandlerContext:
    """A real context whose progress and cancel callables are backed by ``probe``."""
    probe = probe or Probe()
    return HandlerContext(
        uuid.uuid4(),
        attempt,
        type_=type_,
        report_progress=probe.report,
        check_cancel=probe.cancelled,
    )


def run(spec: HandlerSpec, payload: Any, *, attempt: int = 1, probe: Probe | None = None) -> Any:
    """Validate ``payload`` as at submit time, then run the handler on what the schema loaded."""
    return spec(make_ctx(attempt, probe, spec.name), spec.load_payload(payload))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that stops reading at its cap resets the connection: that is expected."""


class Server:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 with canned routes: path → (status, headers, body)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]] = {}
        self.hits: list[tuple[str, str, dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.hits.append((self.command, self.path, dict(self.headers), body))
                route = server.routes.get(self.path.split("?", 1)[0])
                status, headers, content = route(self) if route else (404, {}, b"not found")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(content)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client stopped reading at its cap, as it should

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route(
        self,
        path: str,
        status: int = 200,
        headers: dict[str, str] | None = None,
        body: bytes | str | Any = b"",
    ) -> None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        content = body.encode() if isinstance(body, str) else body
        self.routes[path] = lambda _req: (status, dict(headers or {}), content)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture
def other_server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


@pytest.fixture(autouse=True)
def private_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with the default: private addresses refused (no settings read)."""
    monkeypatch.setattr(http_request, "_allow_private", lambda: False)


@pytest.fixture
def allow_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_request, "_allow_private", lambda: True)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every socket connect; any connect to a non-loopback address fails the test."""
    calls: list[Any] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        calls.append(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        assert host in ("127.0.0.1", "::1"), f"test tried to connect to {address!r}"
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return calls


# --- plugin --------------------------------------------------------------------------------------


def test_plugin_declares_every_builtin_handler() -> None:
    specs = taskmill_handlers.taskmill_handlers()
    assert [s.name for s in specs] == ["echo", "sleep", "fail", "http.request", "taskmill.webhook"]
    for spec in specs:
        assert isinstance(spec, HandlerSpec)
        assert spec.description and "\n\n" not in spec.description


# --- echo ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [{"a": [1, 2, {"b": None}]}, [1, "x"], "text", 3, None, {}])
def test_echo_returns_its_payload(payload: Any) -> None:
    assert run(echo_handler, payload) == payload


# --- sleep ---------------------------------------------------------------------------------------


def test_sleep_sleeps_and_reports_progress() -> None:
    probe = Probe()
    start = time.monotonic()
    result = run(sleep_handler, {"seconds": 1.3}, probe=probe)
    elapsed = time.monotonic() - start
    assert 1.3 <= elapsed < 2.0
    assert 1.3 <= result["slept"] < 2.0
    assert probe.progress[0] == 0.0  # at the start
    assert len(probe.progress) == 2  # and once a second
    assert 0.7 <= probe.progress[1] <= 1.0
    assert probe.progress == sorted(probe.progress)


def test_sleep_zero_returns_at_once() -> None:
    assert run(sleep_handler, {"seconds": 0})["slept"] < 0.05


def test_sleep_returns_early_when_cancelled() -> None:
    probe = Probe(cancel_after=0.3)
    start = time.monotonic()
    result = run(sleep_handler, {"seconds": 30}, probe=probe)
    elapsed = time.monotonic() - start
    assert elapsed < 0.3 + 0.2
    assert 0.3 <= result["slept"] < 0.5


def test_sleep_cancelled_before_start_does_not_sleep() -> None:
    result = run(sleep_handler, {"seconds": 30}, probe=Probe(cancel_after=0))
    assert result["slept"] < 0.05


# --- fail ----------------------------------------------------------------------------------------


def test_fail_fails_every_attempt_by_default() -> None:
    for attempt in (1, 2, 10):
        with pytest.raises(RuntimeError, match="^failed on purpose$"):
            run(fail_handler, {}, attempt=attempt)


def test_fail_times_counts_attempts() -> None:
    payload = {"message": "boom", "times": 2}
    with pytest.raises(RuntimeError, match="^boom$"):
        run(fail_handler, payload, attempt=1)
    with pytest.raises(RuntimeError, match="^boom$"):
        run(fail_handler, payload, attempt=2)
    assert run(fail_handler, payload, attempt=3) == {"attempts": 3}
    assert run(fail_handler, payload, attempt=4) == {"attempts": 4}


def test_fail_times_zero_never_fails() -> None:
    assert run(fail_handler, {"times": 0}, attempt=1) == {"attempts": 1}


# --- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "payload", "field"),
    [
        (sleep_handler, {"seconds": 1, "extra": 1}, "extra"),
        (sleep_handler, {"seconds": -1}, "seconds"),
        (sleep_handler, {"seconds": 86401}, "seconds"),
        (sleep_handler, {"seconds": "soon"}, "seconds"),
        (sleep_handler, {}, "seconds"),
        (fail_handler, {"times": -1}, "times"),
        (fail_handler, {"times": 1.5}, "times"),
        (fail_handler, {"why": "x"}, "why"),
        (http_request_handler, {"url": "http://example.com/", "method": "BREW"}, "method"),
        (http_request_handler, {"url": "ftp://example.com/file"}, "url"),
        (http_request_handler, {"url": "file:///etc/passwd"}, "url"),
        (http_request_handler, {"url": "example.com/no-scheme"}, "url"),
        (http_request_handler, {"url": "http://example.com:99999/"}, "url"),
        (http_request_handler, {"url": "http://example.com/", "timeout": 0}, "timeout"),
        (http_request_handler, {"url": "http://example.com/", "timeout": 301}, "timeout"),
        (http_request_handler, {"url": "http://example.com/", "headers": {"X": "a\r\nB: c"}}, "headers"),
        (http_request_handler, {"url": "http://example.com/", "headers": {"X": 1}}, "headers"),
        (http_request_handler, {"url": "http://example.com/", "follow": True}, "follow"),
    ],
)
def test_schema_rejects_bad_payloads(spec: HandlerSpec, payload: Any, field: str) -> None:
    with pytest.raises(marshmallow.ValidationError) as info:
        spec.load_payload(payload)
    assert field in info.value.messages


def test_http_schema_fills_defaults() -> None:
    loaded = http_request_handler.load_payload({"url": "https://example.com/x?y=1"})
    assert loaded == {
        "url": "https://example.com/x?y=1",
        "method": "GET",
        "headers": {},
        "body": None,
        "timeout": 10.0,
    }


# --- http.request against a local server ---------------------------------------------------------


def test_http_get_json(server: Server, allow_private: None) -> None:
    server.route("/data", body={"ok": True, "n": [1, 2]}, headers={"X-Reply": "yes"})
    result = run(http_request_handler, {"url": server.url("/data?q=1"), "headers": {"X-Test": "1"}})
    assert result["status"] == 200
    assert result["body"] == {"ok": True, "n": [1, 2]}
    assert result["headers"]["X-Reply"] == "yes"
    assert result["truncated"] is False
    method, path, headers, _ = server.hits[0]
    assert (method, path, headers["X-Test"]) == ("GET", "/data?q=1", "1")
    assert headers["User-Agent"].startswith("taskmill/")


def test_http_post_json_body_and_text_reply(server: Server, allow_private: None) -> None:
    server.route("/echo", status=201, headers={"Content-Type": "text/plain; charset=utf-8"}, body="créé")
    result = run(
        http_request_handler,
        {"url": server.url("/echo"), "method": "POST", "body": {"a": 1}, "timeout": 5},
    )
    assert (result["status"], result["body"]) == (201, "créé")
    method, _, headers, body = server.hits[0]
    assert method == "POST"
    assert json.loads(body) == {"a": 1}
    assert headers["Content-Type"] == "application/json"


def test_http_head_has_empty_body(server: Server, allow_private: None) -> None:
    server.route("/h", headers={"Content-Length": "5"}, body=b"hello")
    result = run(http_request_handler, {"url": server.url("/h"), "method": "HEAD"})
    assert (result["status"], result["body"]) == (200, "")


def test_http_4xx_is_a_result_not_a_failure(server: Server, allow_private: None) -> None:
    server.route("/missing", status=404, body={"error": "nope"})
    result = run(http_request_handler, {"url": server.url("/missing")})
    assert result["status"] == 404 and result["body"] == {"error": "nope"}


def test_http_5xx_fails_the_attempt(server: Server, allow_private: None) -> None:
    server.route("/boom", status=500, body="oops")
    with pytest.raises(HTTPServerError, match="HTTP 500") as info:
        run(http_request_handler, {"url": server.url("/boom")})
    assert info.value.status == 500 and info.value.delay is None
    assert not getattr(info.value, "no_retry", False)


def test_http_503_honours_retry_after(server: Server, allow_private: None) -> None:
    server.route("/busy", status=503, headers={"Retry-After": "7"})
    with pytest.raises(HTTPServerError) as info:
        run(http_request_handler, {"url": server.url("/busy")})
    assert info.value.delay == 7.0


def test_http_connection_refused_fails_the_attempt(allow_private: None) -> None:
    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        run(http_request_handler, {"url": f"http://127.0.0.1:{port}/"})


def test_http_timeout_fails_the_attempt(server: Server, allow_private: None) -> None:
    def slow(_req: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.0)
        return 200, {}, b"late"

    server.routes["/slow"] = slow
    start = time.monotonic()
    with pytest.raises((requests.Timeout, TimeoutError)):
        run(http_request_handler, {"url": server.url("/slow"), "timeout": 0.3})
    assert time.monotonic() - start < 0.9


def test_http_follows_a_redirect_chain(server: Server, allow_private: None) -> None:
    server.route("/r1", status=302, headers={"Location": "/r2"})
    server.route("/r2", status=301, headers={"Location": server.url("/r3")})
    server.route("/r3", status=307, headers={"Location": "/final"})
    server.route("/final", body={"done": True})
    result = run(http_request_handler, {"url": server.url("/r1")})
    assert result["status"] == 200 and result["body"] == {"done": True}
    assert result["url"] == server.url("/final")
    assert [hit[1] for hit in server.hits] == ["/r1", "/r2", "/r3", "/final"]


def test_http_303_turns_post_into_get(server: Server, allow_private: None) -> None:
    server.route("/form", status=303, headers={"Location": "/done"})
    server.route("/done", body={"ok": 1})
    run(http_request_handler, {"url": server.url("/form"), "method": "POST", "body": {"x": 1}})
    assert [(hit[0], hit[1], hit[3]) for hit in server.hits] == [
        ("POST", "/form", b'{"x": 1}'),
        ("GET", "/done", b""),
    ]


def test_http_too_many_redirects(server: Server, allow_private: None) -> None:
    server.route("/loop", status=302, headers={"Location": "/loop"})
    with pytest.raises(requests.TooManyRedirects):
        run(http_request_handler, {"url": server.url("/loop")})
    assert len(server.hits) == 6  # the request and 5 redirects, no more


def test_http_redirect_to_another_scheme_is_refused(server: Server, allow_private: None) -> None:
    server.route("/r", status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(ForbiddenAddress):
        run(http_request_handler, {"url": server.url("/r")})


def test_http_body_over_the_cap_is_truncated(server: Server, allow_private: None) -> None:
    big = b"x" * (MAX_BODY_BYTES * 3)
    server.route("/big", headers={"Content-Type": "text/plain"}, body=big)
    result = run(http_request_handler, {"url": server.url("/big")})
    assert result["status"] == 200
    assert result["truncated"] is True
    assert len(result["body"]) == MAX_BODY_BYTES


def test_http_truncated_json_is_returned_as_text(server: Server, allow_private: None) -> None:
    server.route("/bigjson", body=["y" * 1000] * 2000)
    result = run(http_request_handler, {"url": server.url("/bigjson")})
    assert result["truncated"] is True
    assert isinstance(result["body"], str) and len(result["body"]) == MAX_BODY_BYTES


def test_http_body_is_read_in_bounded_chunks(
    server: Server, allow_private: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler stops reading at the cap: it never pulls the rest of a large body."""
    server.route("/huge", headers={"Content-Type": "text/plain"}, body=b"z" * (8 * MAX_BODY_BYTES))
    read: list[int] = []
    real_iter = requests.Response.iter_content

    def counting(self: requests.Response, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        for chunk in real_iter(self, *args, **kwargs):
            read.append(len(chunk))
            yield chunk

    monkeypatch.setattr(requests.Response, "iter_content", counting)
    result = run(http_request_handler, {"url": server.url("/huge")})
    assert result["truncated"] is True
    assert sum(read) <= MAX_BODY_BYTES + 64 * 1024


# --- the SSRF guard ------------------------------------------------------------------------------


def test_loopback_is_refused_by_default(server: Server, connects: list[Any]) -> None:
    server.route("/", body={"secret": 1})
    with pytest.raises(ForbiddenAddress) as info:
        run(http_request_handler, {"url": server.url("/")})
    assert info.value.no_retry is True
    assert type(info.value).__name__ == "ForbiddenAddress"
    assert connects == [] and server.hits == []


def test_forbidden_address_is_never_retried() -> None:
    assert ForbiddenAddress.no_retry is True
    assert not getattr(HTTPServerError, "no_retry", False)


def test_loopback_is_allowed_when_private_is_allowed(server: Server, allow_private: None) -> None:
    server.route("/", body={"secret": 1})
    assert run(http_request_handler, {"url": server.url("/")})["body"] == {"secret": 1}


def test_a_name_that_resolves_to_loopback_is_refused(server: Server, connects: list[Any]) -> None:
    server.route("/", body={"secret": 1})
    with pytest.raises(ForbiddenAddress):
        run(http_request_handler, {"url": server.url("/", host="localhost")})
    assert connects == [] and server.hits == []


def test_ipv6_loopback_is_refused(connects: list[Any]) -> None:
    with pytest.raises(ForbiddenAddress):
        run(http_request_handler, {"url": "http://[::1]:9/"})
    assert connects == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1:8080/",
        "http://0.0.0.0/",
        "http://100.100.100.200/",
    ],
)
def test_metadata_and_private_addresses_are_refused_before_connecting(url: str, connects: list[Any]) -> None:
    with pytest.raises(ForbiddenAddress):
        http_request_handler(make_ctx(), {"url": url})
    assert connects == []


def test_ipv4_mapped_ipv6_is_refused(server: Server, connects: list[Any]) -> None:
    """``[::ffff:127.0.0.1]`` is loopback in disguise (the schema rejects it; a redirect need not)."""
    with pytest.raises(ForbiddenAddress):
        http_request_handler(make_ctx(), {"url": f"http://[::ffff:127.0.0.1]:{server.port}/"})
    with pytest.raises(ForbiddenAddress):
        http_request_handler(make_ctx(), {"url": "http://[::ffff:169.254.169.254]/"})
    assert connects == [] and server.hits == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::",
        "not-an-ip",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(address)


def test_redirect_from_an_allowed_host_to_a_private_address_is_refused(
    server: Server, other_server: Server, connects: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop stands for a public host: only its exact address and port are let through."""
    real_check = http_request._check_address

    def check(address: str, port: int) -> None:
        if address == "127.0.0.1" and port == server.port:
            return
        real_check(address, port)

    monkeypatch.setattr(http_request, "_check_address", check)
    other_server.route("/internal", body={"secret": 1})
    server.route("/public", body={"ok": True})
    server.route("/go", status=302, headers={"Location": other_server.url("/internal")})
    server.route("/meta", status=301, headers={"Location": "http://169.254.169.254/latest/"})
    server.route("/local", status=307, headers={"Location": f"http://localhost:{other_server.port}/"})

    assert run(http_request_handler, {"url": server.url("/public")})["body"] == {"ok": True}
    for path in ("/go", "/meta", "/local"):
        with pytest.raises(ForbiddenAddress):
            run(http_request_handler, {"url": server.url(path)})
    assert other_server.hits == []
    assert {address[1] for address in connects} == {server.port}


def test_the_connected_peer_is_checked_against_dns_rebinding(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that passes the check but then lands on a forbidden peer is refused after connect."""
    server.route("/", body={"secret": 1})
    real_check = http_request._check_address
    seen: list[str] = []

    def check(address: str, port: int) -> None:
        seen.append(address)
        if len(seen) == 1:
            return  # the resolution "passes" (a rebinding DNS answered a public address first)
        real_check(address, port)

    monkeypatch.setattr(http_request, "_check_address", check)
    with pytest.raises(ForbiddenAddress):
        run(http_request_handler, {"url": server.url("/")})
    assert seen == ["127.0.0.1", "127.0.0.1"]  # checked at resolution, then the peer
    assert server.hits == []


def test_environment_proxies_are_ignored(
    server: Server, allow_private: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    server.route("/", body={"direct": True})
    assert run(http_request_handler, {"url": server.url("/")})["body"] == {"direct": True}


def test_allow_private_reads_the_settings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real, cached function
    from taskmill import config

    calls: list[int] = []
    real = config.load_settings

    def counting_load_settings(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(environ={"TASKMILL_HTTP_ALLOW_PRIVATE": "1"})

    monkeypatch.setattr(config, "load_settings", counting_load_settings)
    http_request._allow_private.cache_clear()
    try:
        assert http_request._allow_private() is True
        assert http_request._allow_private() is True
        assert calls == [1]
    finally:
        http_request._allow_private.cache_clear()
