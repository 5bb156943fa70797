"""The dashboard's roles are the API's: each page and form declares the role of the API call that
does the same thing, and each role below it is refused (403) with a valid session and token."""

from __future__ import annotations

import re
from typing import Any

import pytest

from taskmill.api.auth import iter_route_roles
from taskmill.models import Role
from tests.unit.conftest import Secured

# dashboard endpoint → (API method, the API rule's prefix and suffix)
SAME_AS_API = {
    "dashboard.overview": ("GET", "/api/v1/queues", ""),
    "dashboard.live_overview": ("GET", "/api/v1/queues", ""),
    "dashboard.queues": ("GET", "/api/v1/queues", ""),
    "dashboard.tasks": ("GET", "/api/v1/tasks", ""),
    "dashboard.task": ("GET", "/api/v1/tasks/<taskid:task_id>", ""),
    "dashboard.live_task": ("GET", "/api/v1/tasks/<taskid:task_id>", ""),
    "dashboard.events": ("GET", "/api/v1/events", ""),
    "dashboard.cancel": ("DELETE", "/api/v1/tasks/<taskid:task_id>", ""),
    "dashboard.retry": ("POST", "/api/v1/tasks/<taskid:task_id>/retry", ""),
    "dashboard.submit": ("POST", "/api/v1/tasks", ""),
    "dashboard.dead_letters": ("GET", "/api/v1/dead-letters", ""),
    "dashboard.confirm_requeue": ("GET", "/api/v1/dead-letters", ""),
    "dashboard.requeue_one": ("POST", "/api/v1/dead-letters/requeue", ""),
    "dashboard.requeue_matching": ("POST", "/api/v1/dead-letters/requeue", ""),
    "dashboard.pause_queue": ("POST", "/api/v1/queues/<", "/pause"),
    "dashboard.resume_queue": ("POST", "/api/v1/queues/<", "/resume"),
    "dashboard.workers": ("GET", "/api/v1/workers", ""),
    "dashboard.handlers": ("GET", "/api/v1/handlers", ""),
    "dashboard.handler": ("GET", "/api/v1/handlers", ""),
    "dashboard.schedules": ("GET", "/api/v1/schedules", ""),
    "dashboard.pause_schedule": ("POST", "/api/v1/schedules/<", "/pause"),
    "dashboard.resume_schedule": ("POST", "/api/v1/schedules/<", "/resume"),
    "dashboard.delete_schedule": ("DELETE", "/api/v1/schedules/<", ">"),
    "dashboard.workflows": ("GET", "/api/v1/workflows", ""),
    "dashboard.workflow": ("GET", "/api/v1/workflows/<", ">"),
}
PUBLIC = {"dashboard.static_file", "dashboard.sign_in", "dashboard.sign_in_post", "dashboard.sign_out"}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An auth-on app of the whole installed distribution (the API and the dashboard)."""
    from tests.unit.conftest import build_secured_app

    secured = Secured(build_secured_app(tmp_path_factory.mktemp("roles") / "r.db", load_plugins=["taskmill"]))
    yield secured
    secured.runtime.close()


def _api_role(app: Any, method: str, prefix: str, suffix: str) -> Role | str | None:
    for r in iter_route_roles(app):
        if r.method != method or not r.rule.startswith(prefix):
            continue
        rest = r.rule[len(prefix) :]
        one_segment = suffix and rest.endswith(suffix) and "/" not in rest[: -len(suffix)]
        if (not suffix and not rest) or one_segment:
            return r.role
    return None


def test_every_dashboard_route_has_the_role_of_its_api_call(whole: Secured) -> None:
    seen = set()
    mismatches = []
    for r in iter_route_roles(whole.app):
        if not r.endpoint.startswith("dashboard."):
            continue
        seen.add(r.endpoint)
        if r.endpoint in PUBLIC:
            assert r.role == "public", r
            continue
        assert r.endpoint in SAME_AS_API, f"map {r.endpoint} to the API call it mirrors"
        api = _api_role(whole.app, *SAME_AS_API[r.endpoint])
        if api is None:
            continue  # that part of the API is not in this installation yet
        if r.role != api:
            mismatches.append((r.endpoint, r.role, api))
    assert mismatches == []
    assert {"dashboard.cancel", "dashboard.pause_queue", "dashboard.requeue_matching"} <= seen


FORMS = [
    ("/dashboard/tasks/{task}/cancel", Role.SUBMITTER),
    ("/dashboard/tasks/{task}/retry", Role.SUBMITTER),
    ("/dashboard/handlers/t.echo", Role.SUBMITTER),
    ("/dashboard/dead-letters/{task}/requeue", Role.OPERATOR),
    ("/dashboard/dead-letters/requeue", Role.OPERATOR),
    ("/dashboard/queues/default/pause", Role.ADMIN),
    ("/dashboard/queues/default/resume", Role.ADMIN),
]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SUBMITTER, Role.OPERATOR])
def test_roles_below_a_forms_role_are_refused(make_secured: Any, role: Role) -> None:
    web = make_secured(load_plugins=["sql", "auth", "web"])
    task = web.submit("acme")
    client = web.app.test_client()
    page = client.get("/dashboard/sign-in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    key = web.keys[(role.value, "acme")]
    r = client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": csrf})
    assert r.status_code == 303
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/dashboard/").text).group(1)
    for path, needed in FORMS:
        if role.includes(needed):
            continue
        r = client.post(path.format(task=task.id), data={"csrf_token": csrf})
        assert r.status_code == 403, (role, path, r.status_code)
