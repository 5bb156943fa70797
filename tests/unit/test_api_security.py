"""taskmill_auth and the hardening around it: API keys, JWT attacks, rate limits and quotas,
``TASKMILL_AUTH=none``, mass assignment, security headers, the audit log, the CLI, no pickle."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import taskmill_auth
import taskmill_auth.apikeys as apikeys
from taskmill.errors import ConfigError
from taskmill.models import Role
from taskmill.runtime import build_runtime
from taskmill_auth import create_api_key
from taskmill_auth.store import auth_store
from tests.unit.conftest import JWT_SECRET
from tests.unit.conftest import build_secured_app

ROOT = Path(__file__).resolve().parents[2]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- API keys ----------------------------------------------------------------------------------------


def test_key_format_and_storage(secured):
    created = create_api_key(secured.runtime, "acme", "viewer", "ci")
    assert re.fullmatch(r"tm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", created["key"])
    stored = {k.id: k for k in secured.runtime.storage.keys.list()}[created["id"]]
    assert created["key"] not in json.dumps(stored.__dict__, default=str)
    assert stored.key_hash == apikeys.hash_key("unit-test-secret", created["key"])
    assert created["key"].split("_")[1] == stored.prefix


def test_a_key_authenticates_by_bearer_and_x_api_key(secured):
    key = secured.keys[("viewer", "acme")]
    assert secured.client.get("/api/v1/tasks", headers=bearer(key)).status_code == 200
    assert secured.client.get("/api/v1/tasks", headers={"X-API-Key": key}).status_code == 200
    wrong = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    assert secured.client.get("/api/v1/tasks", headers=bearer(wrong)).status_code == 401


def test_keys_through_the_api_are_shown_once_and_revocable(secured):
    admin = secured.headers("admin")
    r = secured.client.post("/api/v1/api-keys", headers=admin, json={"tenant": "acme", "role": "submitter"})
    assert r.status_code == 201
    created = r.get_json()
    assert set(created) == {"id", "name", "tenant", "role", "key", "created_at"}
    listed = secured.client.get("/api/v1/api-keys", headers=admin).get_json()
    assert created["key"] not in json.dumps(listed)
    assert all("key" not in k and "key_hash" not in k for k in listed)
    mine = [k for k in listed if k["id"] == created["id"]][0]
    assert mine["last_used_at"] is None
    assert secured.client.get("/api/v1/tasks", headers=bearer(created["key"])).status_code == 200
    listed = secured.client.get("/api/v1/api-keys", headers=admin).get_json()
    assert [k for k in listed if k["id"] == created["id"]][0]["last_used_at"] is not None
    assert secured.client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin).status_code == 204
    assert secured.client.get("/api/v1/tasks", headers=bearer(created["key"])).status_code == 401
    assert secured.client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin).status_code == 404
    r = secured.client.post("/api/v1/api-keys", headers=admin, json={"tenant": "acme", "role": "root"})
    assert r.status_code == 422
    r = secured.client.post(
        "/api/v1/api-keys", headers=admin, json={"tenant": "acme", "role": "viewer", "key_hash": "x"}
    )
    assert r.status_code == 422


def test_revocation_reaches_other_processes_within_the_cache_ttl(secured, monkeypatch, tmp_path):
    monkeypatch.setattr(apikeys, "CACHE_TTL", 0.3)
    other = build_secured_app(tmp_path / "s0.db")  # a second api process on the same database
    try:
        created = create_api_key(secured.runtime, "acme", "viewer")
        client = other.test_client()
        assert client.get("/api/v1/tasks", headers=bearer(created["key"])).status_code == 200
        taskmill_auth.revoke_api_key(secured.runtime, created["id"])
        # cached in the other process until the TTL runs out, then refused
        deadline = time.monotonic() + 2
        while client.get("/api/v1/tasks", headers=bearer(created["key"])).status_code == 200:
            assert time.monotonic() < deadline, "revocation never took effect"
            time.sleep(0.05)
    finally:
        other.extensions["taskmill"].close()


def test_last_used_is_written_at_most_once_a_minute(secured, monkeypatch):
    touched = []
    keys = auth_store(secured.runtime).keys
    original = keys.touch
    monkeypatch.setattr(keys, "touch", lambda i, w: (touched.append(i), original(i, w)))
    key = secured.keys[("viewer", "other")]
    for _ in range(20):
        assert secured.client.get("/api/v1/queues", headers=bearer(key)).status_code == 200
    assert touched == [secured.key_ids[("viewer", "other")]]


def test_a_validated_key_is_cached(secured, monkeypatch):
    calls = []
    keys = auth_store(secured.runtime).keys
    original = keys.find
    monkeypatch.setattr(keys, "find", lambda p: (calls.append(p), original(p))[1])
    key = secured.keys[("submitter", "other")]
    for _ in range(10):
        secured.client.get("/api/v1/queues", headers=bearer(key))
    assert len(calls) == 1


def test_keys_are_never_logged(secured, caplog):
    caplog.set_level(logging.DEBUG)
    admin = secured.headers("admin")
    created = secured.client.post("/api/v1/api-keys", headers=admin, json={"tenant": "a", "role": "viewer"})
    key = created.get_json()["key"]
    secured.client.get("/api/v1/tasks", headers=bearer(key))
    secured.client.get("/api/v1/tasks", headers=bearer(key[:-1] + "x"))
    assert key[4:] not in caplog.text and key[17:] not in caplog.text


# ---- bootstrap ---------------------------------------------------------------------------------------


def _runtime(tmp_path, **overrides):
    settings = {
        "database_url": f"sqlite:///{tmp_path}/boot.db",
        "load_plugins": ["sql", "auth"],
        "secret_key": "unit-test-secret",
        **overrides,
    }
    from taskmill.config import load_settings

    return build_runtime(load_settings(overrides=settings), upgrade=True)


def test_bootstrap_creates_one_admin_key_once(tmp_path):
    rt = _runtime(tmp_path)
    try:
        lines = rt.host.bootstrap(rt)
        keys = [line.split(": ", 1)[1] for line in lines if line.startswith("Admin API key: ")]
        assert len(keys) == 1 and re.fullmatch(r"tm_\w{12}_[\w-]{43}", keys[0])
        assert any("taskmill api-keys create" in line for line in lines)
        assert rt.host.bootstrap(rt) == []
        (stored,) = rt.storage.keys.list()
        assert stored.role is Role.ADMIN and stored.tenant == "default"
        # with every key revoked, a restart does not hand out a new admin key
        rt.storage.keys.revoke(stored.id)
        assert rt.host.bootstrap(rt) == []
    finally:
        rt.close()


def test_bootstrap_races_create_one_key(tmp_path):
    runtimes = [_runtime(tmp_path) for _ in range(4)]
    results: list[list[str]] = []
    barrier = threading.Barrier(len(runtimes))

    def boot(rt):
        barrier.wait()
        results.append(rt.host.bootstrap(rt))

    threads = [threading.Thread(target=boot, args=(rt,)) for rt in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sum(1 for lines in results if lines) == 1
        assert len(runtimes[0].storage.keys.list()) == 1
    finally:
        for rt in runtimes:
            rt.close()


def test_no_bootstrap_key_without_auth(tmp_path):
    rt = _runtime(tmp_path, auth="none")
    try:
        assert rt.host.bootstrap(rt) == []
    finally:
        rt.close()


# ---- JWT ---------------------------------------------------------------------------------------------


CLAIMS = {"sub": "billing", "tenant": "acme", "role": "submitter"}


def _jwt(claims, key=JWT_SECRET, alg="HS256", headers=None):
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, key, algorithm=alg, headers=headers)


def _status(client, token):
    return client.get("/api/v1/tasks", headers=bearer(token)).status_code


def test_a_valid_hs256_jwt_is_a_principal(secured):
    r = secured.client.post("/api/v1/tasks", headers=bearer(_jwt(CLAIMS)), json={"type": "t.echo"})
    assert r.status_code == 201 and r.get_json()["tenant"] == "acme"
    assert _status(secured.client, _jwt({**CLAIMS, "role": "viewer"})) == 200


@pytest.mark.parametrize(
    "claims",
    [
        {**CLAIMS, "role": "superuser"},
        {**CLAIMS, "role": None},
        {"sub": "x", "role": "admin"},
        {"sub": "x", "role": "admin", "tenant": ""},
        {"sub": "x", "role": "admin", "tenant": ["acme"]},
        {"tenant": "acme", "role": "admin"},
        {**CLAIMS, "sub": 42},
        {**CLAIMS, "exp": int(time.time()) - 3600},
        {**CLAIMS, "nbf": int(time.time()) + 3600},
    ],
    ids=[
        "unknown-role",
        "null-role",
        "no-tenant",
        "empty-tenant",
        "list-tenant",
        "no-sub",
        "int-sub",
        "expired",
        "not-yet-valid",
    ],
)
def test_bad_claims_are_401(secured, claims):
    assert _status(secured.client, _jwt(claims)) == 401


def test_exp_is_required(secured):
    token = jwt.encode(CLAIMS, JWT_SECRET, algorithm="HS256")
    assert _status(secured.client, token) == 401


def test_alg_none_is_refused(secured):
    token = jwt.encode({**CLAIMS, "exp": int(time.time()) + 60}, None, algorithm="none")
    assert _status(secured.client, token) == 401
    forged = _jwt(CLAIMS).rsplit(".", 1)[0] + "."
    assert _status(secured.client, forged) == 401


def test_clock_skew_is_bounded_by_the_leeway(make_secured):
    s = make_secured(jwt_leeway=30)
    assert _status(s.client, _jwt({**CLAIMS, "exp": int(time.time()) - 10})) == 200
    assert _status(s.client, _jwt({**CLAIMS, "exp": int(time.time()) - 60})) == 401


def test_issuer_and_audience_are_checked_when_configured(make_secured):
    s = make_secured(jwt_issuer="https://idp.example", jwt_audience="taskmill")
    good = {**CLAIMS, "iss": "https://idp.example", "aud": "taskmill"}
    assert _status(s.client, _jwt(good)) == 200
    assert _status(s.client, _jwt({**good, "iss": "https://evil.example"})) == 401
    assert _status(s.client, _jwt({**good, "aud": "another-service"})) == 401
    assert _status(s.client, _jwt(CLAIMS)) == 401  # neither


@pytest.fixture(scope="module")
def rsa_keys():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem.decode()


def test_rs256_and_algorithm_confusion(make_secured, rsa_keys):
    private, public_pem = rsa_keys
    s = make_secured(jwt_secret="", jwt_public_key=public_pem)
    assert _status(s.client, _jwt(CLAIMS, private, "RS256")) == 200
    # an HS256 token "signed" with the public key as HMAC secret: the classic confusion attack
    import hashlib
    import hmac

    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps({**CLAIMS, "exp": int(time.time()) + 60}).encode())
    signing_input = header + b"." + body
    sig = jwt.utils.base64url_encode(hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest())
    assert _status(s.client, (signing_input + b"." + sig).decode()) == 401
    # and an HS256 token signed with some secret is refused when only RS256 is configured
    assert _status(s.client, _jwt(CLAIMS)) == 401
    # another RSA key
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _status(s.client, _jwt(CLAIMS, stranger, "RS256")) == 401


def test_jwts_are_refused_when_not_configured(make_secured):
    s = make_secured(jwt_secret="")
    assert _status(s.client, _jwt(CLAIMS)) == 401


def test_jwt_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        build_secured_app(tmp_path / "x.db", jwt_secret="short")
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY"):
        build_secured_app(tmp_path / "y.db", jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n")


# ---- auth none ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "example.com", "::"])
def test_auth_none_is_refused_off_loopback(make_app, host):
    with pytest.raises(ConfigError, match="TASKMILL_AUTH"):
        make_app(auth="none", host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_auth_none_on_loopback_warns_loudly(make_app, host, caplog):
    caplog.set_level(logging.WARNING)
    make_app(auth="none", host=host)
    assert "TASKMILL_AUTH=none" in caplog.text


# ---- rate limits and quotas --------------------------------------------------------------------------


def test_rate_limit_is_per_key_429_with_retry_after_and_recovers(make_secured):
    # a 3-second window, so a slow (loaded) machine still fits four requests in one window
    s = make_secured(rate_limit="3 per 3 seconds")
    key = s.headers("viewer")
    codes = [s.client.get("/api/v1/queues", headers=key).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = s.client.get("/api/v1/queues", headers=key)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 4
    assert r.get_json()["code"] == 429
    # another key has its own budget; public routes are not counted
    assert s.client.get("/api/v1/queues", headers=s.headers("viewer", "other")).status_code == 200
    assert s.client.get("/health/live").status_code == 200
    # the sliding window empties within two windows
    deadline = time.monotonic() + 7
    while s.client.get("/api/v1/queues", headers=key).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_tenant_quota_is_429_with_retry_after_and_recovers(make_secured):
    s = make_secured(tenant_max_pending=2)
    key = s.headers("submitter")
    first = [s.client.post("/api/v1/tasks", headers=key, json={"type": "t.echo"}) for _ in range(2)]
    assert [r.status_code for r in first] == [201, 201]
    r = s.client.post("/api/v1/tasks", headers=key, json={"type": "t.echo"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    r = s.client.post("/api/v1/tasks/batch", headers=key, json={"tasks": [{"type": "t.echo"}]})
    assert r.status_code == 429
    # another tenant is not affected
    other = s.headers("submitter", "other")
    assert s.client.post("/api/v1/tasks", headers=other, json={"type": "t.echo"}).status_code == 201
    # finishing one frees a slot
    s.client.delete(f"/api/v1/tasks/{first[0].get_json()['id']}", headers=key)
    assert s.client.post("/api/v1/tasks", headers=key, json={"type": "t.echo"}).status_code == 201


# ---- hardening -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["tenant", "status", "attempts", "result", "worker", "id", "error"])
def test_mass_assignment_is_refused(secured, field, tasks_in_db):
    values = {"tenant": "other", "status": "completed", "attempts": 5, "result": {"x": 1}, "worker": "w"}
    body = {"type": "t.echo", field: values.get(field, "x")}
    key = secured.headers("submitter")
    r = secured.client.post("/api/v1/tasks", headers=key, json=body)
    assert r.status_code == 422 and field in r.get_json()["errors"]
    r = secured.client.post("/api/v1/tasks/batch", headers=key, json={"tasks": [body]})
    assert r.status_code == 422
    assert tasks_in_db(secured.runtime) == 0


def test_security_headers_on_html_pages(secured):
    r = secured.client.get("/api/v1/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in directives["script-src"] and "unsafe-eval" not in csp
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in r.get_data(as_text=True)  # every script is a file of this host


def test_any_html_response_gets_the_strict_policy(secured):
    from taskmill.app import HTML_SECURITY_HEADERS

    r = secured.client.get("/no/such/page", headers={"Accept": "text/html"})
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    if r.mimetype == "text/html":
        assert r.headers["Content-Security-Policy"] == HTML_SECURITY_HEADERS["Content-Security-Policy"]
    r = secured.client.get("/api/v1/tasks", headers=secured.headers("viewer"))
    assert r.headers["X-Content-Type-Options"] == "nosniff"


_PICKLE = re.compile(
    r"^\s*(import|from)\s+(c?pickle|_pickle|dill|cloudpickle|shelve|jsonpickle)\b"
    r"|\b(c?pickle|dill|cloudpickle|jsonpickle)\.(loads?|dumps?|Unpickler|Pickler)\b"
    r"|\b(PickleSerializer|DefaultSerializer)\b",
    re.MULTILINE,
)


def _sources() -> list[Path]:
    dirs = [ROOT / d for d in ("core", "plugins", "handlers", "web", "scripts")]
    return sorted(p for d in dirs if d.exists() for p in d.rglob("*.py"))


def test_no_pickle_anywhere():
    """JSON only: no module imports or calls pickle (or a pickling serializer), RQ's included."""
    sources = _sources()
    assert len(sources) > 20
    offenders = [
        f"{p.relative_to(ROOT)}: {m.group(0).strip()}"
        for p in sources
        for m in _PICKLE.finditer(p.read_text())
    ]
    assert offenders == []


def test_rq_and_pika_are_configured_for_json():
    """RQ pickles by default: a module that uses RQ queues, jobs or workers must name a JSON
    serializer; pika messages are published as JSON."""
    problems = []
    for path in _sources():
        text = path.read_text()
        uses_rq = re.search(r"^\s*(from rq\b|import rq\b)", text, re.MULTILINE)
        if uses_rq and re.search(r"\b(Queue|Job|Worker)\(", text) and "serializer" not in text:
            problems.append(f"{path.relative_to(ROOT)}: builds RQ objects without a serializer")
        if re.search(r"^\s*import pika\b", text, re.MULTILINE) and "basic_publish" in text:
            if "application/json" not in text and "json" not in text:
                problems.append(f"{path.relative_to(ROOT)}: publishes with pika but never JSON")
    assert problems == []


# ---- audit ----------------------------------------------------------------------------------------------


def test_audit_log_records_who_did_what(secured, drive):
    c = secured.client
    sub = secured.headers("submitter")
    task = c.post("/api/v1/tasks", headers=sub, json={"type": "t.echo"}).get_json()
    c.post("/api/v1/tasks/batch", headers=sub, json={"tasks": [{"type": "t.echo"}] * 3})
    c.delete(f"/api/v1/tasks/{task['id']}", headers=sub)
    c.post(f"/api/v1/tasks/{task['id']}/retry", headers=sub)
    drive(secured.runtime, task["id"], "failed")
    c.post("/api/v1/dead-letters/requeue", headers=secured.headers("operator"), json={"ids": [task["id"]]})
    admin = secured.headers("admin")
    c.post("/api/v1/queues/default/pause", headers=admin)
    c.post("/api/v1/queues/default/resume", headers=admin)
    made = c.post("/api/v1/api-keys", headers=admin, json={"tenant": "acme", "role": "viewer"}).get_json()
    c.delete(f"/api/v1/api-keys/{made['id']}", headers=admin)
    c.get("/api/v1/tasks", headers=sub)  # reads are not audited
    r = c.get("/api/v1/audit?page_size=100", headers=admin)
    assert r.status_code == 200 and "X-Pagination" in r.headers
    entries = list(reversed(r.get_json()))
    assert [e["action"] for e in entries] == [
        "task.submit",
        "task.submit_batch",
        "task.cancel",
        "task.retry",
        "dead_letters.requeue",
        "queue.pause",
        "queue.resume",
        "api_key.create",
        "api_key.revoke",
    ]
    submit = entries[0]
    assert submit["actor"] == f"key:{secured.key_ids[('submitter', 'acme')]}"
    assert submit["tenant"] == "acme" and submit["target"] == task["id"]
    assert entries[1]["details"]["count"] == 3
    assert entries[7]["tenant"] == "acme" and entries[7]["details"]["actor_tenant"] == "root"
    assert made["key"] not in json.dumps(entries)
    acme_only = c.get("/api/v1/audit?tenant=other", headers=admin).get_json()
    assert acme_only == []
    assert c.get("/api/v1/audit", headers=secured.headers("operator")).status_code == 403


def test_a_jwt_actor_is_its_subject(secured):
    token = secured.jwt({"sub": "billing-svc", "tenant": "acme", "role": "submitter"})
    secured.client.post("/api/v1/tasks", headers=bearer(token), json={"type": "t.echo"})
    (entry,) = secured.client.get("/api/v1/audit", headers=secured.headers("admin")).get_json()
    assert entry["actor"] == "jwt:billing-svc"


# ---- CLI -------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    from taskmill.cli import cli as group

    taskmill_auth.taskmill_cli(group)
    env = {
        "TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "TASKMILL_SECRET_KEY": "unit-test-secret",
        "TASKMILL_LOAD_PLUGINS": "sql,auth",
    }
    runner = CliRunner(env=env)
    return lambda *args: runner.invoke(group, list(args), catch_exceptions=False)


def test_cli_creates_lists_and_revokes_keys(cli, tmp_path):
    r = cli("api-keys", "create", "--tenant", "acme", "--role", "operator", "--name", "ops", "--json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)
    assert set(created) == {"id", "key", "tenant", "role", "name"}
    assert created["tenant"] == "acme" and created["role"] == "operator" and created["name"] == "ops"
    plain = cli("api-keys", "create", "--tenant", "acme", "--role", "viewer")
    assert re.search(r"^API key: tm_\w{12}_[\w-]{43}$", plain.output, re.MULTILINE)
    listed = cli("api-keys", "list")
    assert created["id"] in listed.output and created["key"] not in listed.output
    assert cli("api-keys", "create", "--tenant", "acme", "--role", "boss").exit_code != 0
    assert cli("api-keys", "revoke", created["id"]).exit_code == 0
    assert cli("api-keys", "revoke", created["id"]).exit_code != 0
    # the key works against an app on the same database until revoked
    app = build_secured_app(tmp_path / "cli.db")
    try:
        assert app.test_client().get("/api/v1/tasks", headers=bearer(created["key"])).status_code == 401
    finally:
        app.extensions["taskmill"].close()
    audit = cli("audit", "--tenant", "acme", "--json")
    actions = [e["action"] for e in json.loads(audit.output)]
    assert actions == ["api_key.revoke", "api_key.create", "api_key.create"]
    assert cli("audit", "--limit", "1").exit_code == 0
    assert json.loads(cli("audit", "list", "--tenant", "acme", "--json").output) == json.loads(audit.output)
