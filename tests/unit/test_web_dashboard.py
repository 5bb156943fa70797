"""The dashboard through Flask's test client: sign-in, session, CSRF, CSP, roles and tenants."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
import zlib
from typing import Any

import pytest

from taskmill.api.auth import undeclared_routes
from taskmill.models import DeadLetterQuery
from taskmill.models import TaskStatus
from taskmill_auth.store import auth_store
from tests.unit.conftest import Secured

PAGES = [
    "/dashboard/",
    "/dashboard/tasks",
    "/dashboard/queues",
    "/dashboard/workers",
    "/dashboard/handlers",
    "/dashboard/handlers/t.strict",
    "/dashboard/dead-letters",
    "/dashboard/schedules",
    "/dashboard/workflows",
]


@pytest.fixture
def web(make_secured: Any) -> Secured:
    """An auth-on app with the dashboard plugin and a key per role and tenant."""
    return make_secured(load_plugins=["sql", "auth", "web"])


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(web: Secured, role: str, tenant: str = "acme", client: Any = None) -> Any:
    """A test client signed in with the key of ``role``@``tenant`` (admins: tenant root)."""
    client = client or web.app.test_client()
    page = client.get("/dashboard/sign-in")
    assert page.status_code == 200
    key = web.keys[(role, "root" if role == "admin" else tenant)]
    r = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303, r.text
    return client


def token(client: Any, path: str = "/dashboard/") -> str:
    return csrf_of(client.get(path).text)


def test_root_redirects_to_the_dashboard(web: Secured) -> None:
    r = web.client.get("/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/dashboard/")


def test_every_dashboard_route_declares_a_role(web: Secured) -> None:
    assert [r for r in undeclared_routes(web.app) if r.rule.startswith("/dashboard") or r.rule == "/"] == []


def test_pages_need_a_session_and_send_to_sign_in(web: Secured) -> None:
    for path in PAGES:
        r = web.client.get(path)
        assert r.status_code == 302, path
        assert "/dashboard/sign-in" in r.headers["Location"]
    assert web.client.get("/dashboard/live/overview.json").status_code == 401


def test_sign_in_sets_a_strict_session_cookie_without_the_key(web: Secured) -> None:
    client = web.app.test_client()
    page = client.get("/dashboard/sign-in")
    assert 'name="api_key"' in page.text
    key = web.keys[("viewer", "acme")]
    r = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    cookie = [h for h in r.headers.getlist("Set-Cookie") if h.startswith("taskmill_session=")][-1]
    attrs = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path"} <= attrs and "secure" not in attrs
    assert "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    payload = value.split(".")[1] if not value.startswith(".") else value.split(".")[1]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    if value.startswith("."):
        raw = zlib.decompress(raw)
    assert key.encode() not in raw and key not in value  # the key is stored encrypted
    assert client.get("/dashboard/").status_code == 200


def test_cookie_is_secure_over_https(web: Secured) -> None:
    client = web.app.test_client()
    page = client.get("/dashboard/sign-in", base_url="https://localhost")
    r = client.post(
        "/dashboard/sign-in",
        data={"api_key": web.keys[("viewer", "acme")], "csrf_token": csrf_of(page.text)},
        base_url="https://localhost",
    )
    cookie = [h for h in r.headers.getlist("Set-Cookie") if h.startswith("taskmill_session=")][-1]
    assert "Secure" in cookie


def test_wrong_key_is_refused_with_a_readable_message(web: Secured) -> None:
    client = web.app.test_client()
    page = client.get("/dashboard/sign-in")
    r = client.post("/dashboard/sign-in", data={"api_key": "tm_nope", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 401 and "not accepted" in r.text
    assert client.get("/dashboard/").status_code == 302


def test_sign_in_without_csrf_token_is_refused(web: Secured) -> None:
    client = web.app.test_client()
    client.get("/dashboard/sign-in")
    r = client.post("/dashboard/sign-in", data={"api_key": web.keys[("admin", "root")]})
    assert r.status_code == 403
    assert client.get("/dashboard/").status_code == 302


def test_post_with_another_sessions_token_is_refused(web: Secured) -> None:
    task = web.submit("acme")
    alice = sign_in(web, "submitter")
    mallory = sign_in(web, "submitter")
    stolen = token(mallory)
    r = alice.post(f"/dashboard/tasks/{task.id}/cancel", data={"csrf_token": stolen})
    assert r.status_code == 403 and "expired" in r.text
    r = alice.post(f"/dashboard/tasks/{task.id}/cancel", data={})
    assert r.status_code == 403
    assert web.runtime.lifecycle.get(task.id, None).status is TaskStatus.QUEUED


@pytest.mark.parametrize("path", PAGES)
def test_csp_without_unsafe_inline_and_no_inline_code(web: Secured, path: str) -> None:
    client = sign_in(web, "admin")
    r = client.get(path)
    assert r.status_code == 200, r.text
    csp = r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
    assert "http" not in csp  # no other host
    html = r.text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # every script is a file
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not url.startswith(("http:", "https:", "//")), url  # every asset from this host


def test_static_files_are_served_from_the_package(web: Secured) -> None:
    for name in ("dashboard.js", "dashboard.css", "icon.svg"):
        with web.client.get(f"/dashboard/static/{name}") as r:
            assert r.status_code == 200 and r.data
            assert "max-age" in r.headers["Cache-Control"]
    assert web.client.get("/dashboard/static/../session.py").status_code == 404
    assert web.client.get("/dashboard/static/nope.js").status_code == 404


def test_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(web: Secured) -> None:
    task = web.submit("acme")
    client = sign_in(web, "viewer")
    page = client.get(f"/dashboard/tasks/{task.id}")
    assert page.status_code == 200
    assert 'data-testid="cancel"' not in page.text and 'data-testid="retry"' not in page.text
    assert "/cancel" not in page.text
    assert "Pause" not in client.get("/dashboard/queues").text
    assert "Submit a task" not in client.get("/dashboard/handlers").text
    csrf = token(client)  # a valid session and token: only the role is missing
    r = client.post(f"/dashboard/tasks/{task.id}/cancel", data={"csrf_token": csrf})
    assert r.status_code == 403 and "submitter" in r.text
    r = client.post("/dashboard/handlers/t.echo", data={"csrf_token": csrf, "payload_json": "{}"})
    assert r.status_code == 403
    r = client.post("/dashboard/queues/default/pause", data={"csrf_token": csrf})
    assert r.status_code == 403
    assert client.get("/dashboard/dead-letters").status_code == 403
    assert web.runtime.lifecycle.get(task.id, None).status is TaskStatus.QUEUED
    assert web.runtime.storage.queues.paused() == set()


def test_another_tenants_task_is_not_found_by_url(web: Secured) -> None:
    theirs = web.submit("other")
    client = sign_in(web, "operator", "acme")
    assert client.get(f"/dashboard/tasks/{theirs.id}").status_code == 404
    assert client.get(f"/dashboard/live/tasks/{theirs.id}.json").status_code == 404
    assert client.get(f"/dashboard/tasks/{uuid.uuid4()}").status_code == 404
    assert client.get("/dashboard/tasks/not-a-uuid").status_code == 404
    csrf = token(client)
    for action in ("tasks/{}/cancel", "tasks/{}/retry", "dead-letters/{}/requeue"):
        path = "/dashboard/" + action.format(theirs.id)
        assert client.post(path, data={"csrf_token": csrf}).status_code == 404
    listing = client.get("/dashboard/tasks").text
    assert str(theirs.id) not in listing and str(web.submit("acme").id) in client.get("/dashboard/tasks").text
    admin = sign_in(web, "admin")
    assert admin.get(f"/dashboard/tasks/{theirs.id}").status_code == 200


def test_submitter_cancels_and_the_audit_log_says_who(web: Secured) -> None:
    task = web.submit("acme")
    client = sign_in(web, "submitter")
    page = client.get(f"/dashboard/tasks/{task.id}")
    assert 'data-testid="cancel"' in page.text
    r = client.post(f"/dashboard/tasks/{task.id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert web.runtime.lifecycle.get(task.id, None).status is TaskStatus.CANCELLED
    entries, _ = auth_store(web.runtime).audit.list(offset=0, limit=50, tenant=None)
    actions = {(e["action"], e["target"]) for e in entries}
    assert ("task.cancel", str(task.id)) in actions
    assert "Cancelled" in client.get(r.headers["Location"]).text


def test_submit_from_the_form_built_from_the_schema(web: Secured) -> None:
    client = sign_in(web, "submitter")
    page = client.get("/dashboard/handlers/t.strict")
    assert 'name="p.n"' in page.text and 'type="number"' in page.text and 'max="10"' in page.text
    csrf = csrf_of(page.text)
    bad = client.post("/dashboard/handlers/t.strict", data={"csrf_token": csrf, "p.n": "11"})
    assert bad.status_code == 422 and "payload" in bad.text
    ok = client.post("/dashboard/handlers/t.strict", data={"csrf_token": csrf, "p.n": "7", "tags": "a, b"})
    assert ok.status_code == 303
    task_id = ok.headers["Location"].rsplit("/", 1)[1]
    task = web.runtime.lifecycle.get(uuid.UUID(task_id), "acme")
    assert task.payload == {"n": 7} and task.queue == "strict" and task.tags == ["a", "b"]
    free = client.post("/dashboard/handlers/t.echo", data={"csrf_token": csrf, "payload_json": '{"x": [1]}'})
    assert free.status_code == 303


def test_queue_pause_needs_admin(web: Secured) -> None:
    operator = sign_in(web, "operator")
    r = operator.post("/dashboard/queues/default/pause", data={"csrf_token": token(operator)})
    assert r.status_code == 403
    admin = sign_in(web, "admin")
    r = admin.post("/dashboard/queues/default/pause", data={"csrf_token": token(admin)})
    assert r.status_code == 303 and web.runtime.storage.queues.paused() == {"default"}
    r = admin.post("/dashboard/queues/default/resume", data={"csrf_token": token(admin)})
    assert web.runtime.storage.queues.paused() == set()


def test_dead_letters_grouped_then_requeued_by_filter_with_a_count(web: Secured, drive: Any) -> None:
    failed = [drive(web.runtime, web.submit("acme").id) for _ in range(3)]
    drive(web.runtime, web.submit("other").id)
    client = sign_in(web, "operator")
    page = client.get("/dashboard/dead-letters")
    assert "RuntimeError" in page.text
    confirm = client.get("/dashboard/dead-letters/requeue?error_type=RuntimeError")
    assert re.search(r"Requeue <strong>3</strong> failed tasks", confirm.text)  # not the other tenant's
    r = client.post(
        "/dashboard/dead-letters/requeue",
        data={"csrf_token": csrf_of(confirm.text), "error_type": "RuntimeError", "expected": "3"},
    )
    assert r.status_code == 303
    for t in failed:
        assert web.runtime.lifecycle.get(t.id, None).status is TaskStatus.QUEUED
    theirs = web.runtime.storage.tasks.find_failed(DeadLetterQuery(tenant="other", limit=10))
    assert len(theirs) == 1


def test_revoked_key_ends_the_session(web: Secured) -> None:
    from taskmill_auth import revoke_api_key

    client = sign_in(web, "viewer")
    assert client.get("/dashboard/").status_code == 200
    revoke_api_key(web.runtime, web.key_ids[("viewer", "acme")])
    r = client.get("/dashboard/")
    assert r.status_code == 302 and "sign-in" in r.headers["Location"]


def test_sign_out(web: Secured) -> None:
    client = sign_in(web, "viewer")
    page = client.get("/dashboard/")
    assert 'data-testid="sign-out"' in page.text
    r = client.post("/dashboard/sign-out", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert client.get("/dashboard/").status_code == 302


def test_sign_in_next_never_leaves_the_dashboard(web: Secured) -> None:
    client = web.app.test_client()
    page = client.get("/dashboard/sign-in?next=https://evil.example/")
    assert "evil" not in page.text
    key = web.keys[("viewer", "acme")]
    form = {"api_key": key, "csrf_token": csrf_of(page.text), "next": "//evil.example"}
    r = client.post("/dashboard/sign-in", data=form)
    assert r.headers["Location"].endswith("/dashboard/")


def test_task_list_pages_by_keyset_without_duplicates(web: Secured) -> None:
    ids = {str(web.submit("acme", payload={"i": i, "user": f"u{i % 7}"}).id) for i in range(120)}
    web.submit("other")
    client = sign_in(web, "viewer")
    seen: list[str] = []
    url = "/dashboard/tasks"
    for _ in range(5):
        html = client.get(url).text
        seen += re.findall(r'href="/dashboard/tasks/([0-9a-f-]{36})"', html)
        nxt = re.search(r'rel="next" href="([^"]+)"', html)
        if not nxt:
            break
        url = nxt.group(1).replace("&amp;", "&")
    assert len(seen) == len(set(seen)) == 120 and set(seen) == ids
    html = client.get("/dashboard/tasks?q=user=u3").text
    found = re.findall(r'href="/dashboard/tasks/([0-9a-f-]{36})"', html)
    assert len(found) == len([i for i in range(120) if i % 7 == 3])
    one = sorted(ids)[0]
    r = client.get(f"/dashboard/tasks?q={one}")
    assert r.status_code == 302 and r.headers["Location"].endswith(one)


def test_overview_aggregate_refreshes_at_most_once_a_second(web: Secured) -> None:
    web.submit("acme")
    web.submit("other")
    overview = web.app.extensions["taskmill.web"]["overview"]
    client = sign_in(web, "viewer")
    before = overview.refreshes
    for _ in range(20):
        data = client.get("/dashboard/live/overview.json").get_json()
    assert overview.refreshes - before <= 2  # twenty views, one refresh (two if a second ticked)
    [queue] = data["queues"]
    assert queue["depth"]["queued"] == 1  # acme's only; the other tenant's is not counted
    time.sleep(1.05)
    web.submit("acme")
    data = client.get("/dashboard/live/overview.json").get_json()
    assert data["queues"][0]["depth"]["queued"] == 2
    assert sum(data["series"]["submitted"]) == 2


def test_empty_states_read_well(web: Secured) -> None:
    client = sign_in(web, "admin")
    assert "No queue has seen a task yet" in client.get("/dashboard/").text
    assert "No task yet" in client.get("/dashboard/tasks").text
    assert "No dead letter" in client.get("/dashboard/dead-letters").text
    assert "No worker is running" in client.get("/dashboard/workers").text


def _first_chunks(response: Any, wanted: str, limit: int = 50) -> str:
    seen = ""
    for _, chunk in zip(range(limit), response.response, strict=False):
        seen += chunk.decode() if isinstance(chunk, bytes) else chunk
        if wanted in seen:
            break
    return seen


def test_event_streams_follow_the_sessions_tenant(web: Secured) -> None:
    mine = web.submit("acme")
    theirs = web.submit("other")
    client = sign_in(web, "viewer")
    assert client.get(f"/dashboard/events?task_id={theirs.id}").status_code == 404
    r = client.get("/dashboard/events?view=overview", buffered=False)
    try:
        assert r.status_code == 200 and r.mimetype == "text/event-stream"
        text = _first_chunks(r, "event: overview")
        data = json.loads(text.split("event: overview\ndata: ", 1)[1].split("\n", 1)[0])
        assert [q["depth"]["queued"] for q in data["queues"]] == [1]  # acme's task only
    finally:
        r.close()
    r = client.get(f"/dashboard/events?task_id={mine.id}", buffered=False)
    try:
        assert r.status_code == 200
        web.runtime.lifecycle.cancel(mine.id, None)
        assert "event: task.cancelled" in _first_chunks(r, "event: task.cancelled")
    finally:
        r.close()


def test_schedules_listed_paused_resumed_and_deleted(web: Secured) -> None:
    headers = web.headers("operator")
    r = web.client.post(
        "/api/v1/schedules", json={"name": "nightly", "cron": "0 3 * * *", "type": "t.echo"}, headers=headers
    )
    if r.status_code == 404:
        pytest.skip("this core has no schedules")
    assert r.status_code == 201, r.text
    theirs = web.client.post(
        "/api/v1/schedules",
        json={"name": "theirs", "interval": 60, "type": "t.echo"},
        headers=web.headers("operator", "other"),
    )
    assert theirs.status_code == 201
    client = sign_in(web, "operator")
    page = client.get("/dashboard/schedules")
    assert "nightly" in page.text and "0 3 * * *" in page.text and "theirs" not in page.text
    csrf = csrf_of(page.text)
    assert client.post("/dashboard/schedules/nightly/pause", data={"csrf_token": csrf}).status_code == 303
    assert 'class="badge paused"' in client.get("/dashboard/schedules").text
    assert client.post("/dashboard/schedules/theirs/pause", data={"csrf_token": csrf}).status_code == 404
    assert client.post("/dashboard/schedules/nightly/resume", data={"csrf_token": csrf}).status_code == 303
    assert client.post("/dashboard/schedules/nightly/delete", data={"csrf_token": csrf}).status_code == 303
    assert '<th scope="row">nightly' not in client.get("/dashboard/schedules").text
    assert sign_in(web, "viewer").get("/dashboard/schedules").status_code == 403  # the API's role


def test_workflow_graph_page(web: Secured) -> None:
    body = {"tasks": [{"key": "a", "type": "t.echo"}, {"key": "b", "type": "t.echo", "depends_on": ["a"]}]}
    r = web.client.post("/api/v1/workflows", json=body, headers=web.headers("submitter"))
    if r.status_code == 404:
        pytest.skip("this core has no workflows")
    assert r.status_code == 201, r.text
    workflow_id = r.json["id"]
    client = sign_in(web, "viewer")
    assert workflow_id in client.get("/dashboard/workflows").text
    page = client.get(f"/dashboard/workflows/{workflow_id}")
    assert page.status_code == 200
    assert page.text.count('class="node n-') == 2 and page.text.count('class="edge"') == 1
    assert client.get(f"/dashboard/tasks?workflow={workflow_id}").text.count('href="/dashboard/tasks/') == 2
    other = sign_in(web, "viewer", "other")
    assert other.get(f"/dashboard/workflows/{workflow_id}").status_code == 404
