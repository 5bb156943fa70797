"""The dashboard in headless Chromium against a real `taskmill run`.

Debian's ``chromium`` driven by Playwright for Python (never ``playwright install``): see
../shared/LIBRARIES.md. Screenshots of each main page go to ``test-artifacts/dashboard/`` (or
``$TASKMILL_TEST_ARTIFACTS/dashboard``) and are checked to be non-blank.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT
from tests.e2e.conftest import Installation
from tests.e2e.conftest import taskmill_run
from tests.services import postgres_url
from tests.services import scratch_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("TASKMILL_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "dashboard"

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
if not Path(CHROMIUM).exists():  # pragma: no cover - .ci/run installs it
    pytest.skip("apt-get install -y chromium", allow_module_level=True)


# ---- screenshots -------------------------------------------------------------------------------


def png_luma(data: bytes) -> list[int]:
    """The luminance of every pixel of an 8-bit RGB/RGBA PNG (what Chromium writes), decoded with
    the standard library only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    luma: list[int] = []
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rgb = range(0, stride, channels)
        luma.extend((299 * line[i] + 587 * line[i + 1] + 114 * line[i + 2]) // 1000 for i in rgb)
        prev = line
    return luma


def shoot(page: Any, name: str) -> Path:
    """Save a full-page screenshot and insist it shows something (not one flat colour)."""
    folder = getattr(page, "artifacts", ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    data = page.screenshot(path=str(path), full_page=True)
    luma = png_luma(data)
    mean = sum(luma) / len(luma)
    variance = sum((v - mean) ** 2 for v in luma) / len(luma)
    assert variance > 50, f"{name}: the screenshot looks blank (variance {variance:.1f})"
    dark = sum(1 for v in luma if v < 128) / len(luma)
    assert 0.001 < dark < 0.9, f"{name}: {dark:.3%} dark pixels"
    return path


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """`taskmill run` on the embedded default (SQLite), and on PostgreSQL."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'taskmill.db'}"
        else:
            url = stack.enter_context(scratch_database(postgres_url()))
        workdir = tmp_path_factory.mktemp("run")
        run = stack.enter_context(taskmill_run(workdir, {"TASKMILL_DATABASE_URL": url}))
        run.artifacts = ARTIFACTS / request.param  # type: ignore[attr-defined]
        yield run


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, site: Installation, *, phone: bool = False) -> Any:
    size = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
    context = browser.new_context(viewport=size)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("dialog", lambda d: d.accept())  # the confirmations of cancel and delete
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.console_errors = errors  # type: ignore[attr-defined]
    page.artifacts = site.artifacts  # type: ignore[attr-defined]
    return page


def sign_in(page: Any, site: Installation, key: str) -> None:
    page.goto(site.base + "/")
    assert "/dashboard/sign-in" in page.url
    page.fill("#api_key", key)
    page.press("#api_key", "Enter")  # the keyboard is enough
    page.wait_for_url(re.compile(r".*/dashboard/$"))


def create_key(site: Installation, tenant: str, role: str) -> str:
    r = site.post("/api/v1/api-keys", {"tenant": tenant, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def admin(browser: Any, site: Installation) -> Iterator[Any]:
    page = new_page(browser, site)
    sign_in(page, site, site.key)
    yield page
    page.context.close()


def expect() -> Any:
    return sync_api.expect


# ---- the journeys ------------------------------------------------------------------------------


def test_sign_in_shows_the_overview_with_live_workers(admin: Any, site: Installation) -> None:
    expect()(admin.locator("h1")).to_have_text("Overview")
    expect()(admin.locator("#workers-table tbody tr").first).to_be_visible()
    shoot(admin, "overview")
    csp = admin.request.get(site.base + "/dashboard/").headers["content-security-policy"]
    assert "unsafe-inline" not in csp
    assert admin.console_errors == []  # the CSP blocked nothing: no inline code anywhere


def test_submit_from_the_form_and_see_it_complete_without_reload(admin: Any, site: Installation) -> None:
    admin.goto(site.base + "/dashboard/handlers/sleep")
    shoot(admin, "handler-form")
    admin.fill("[name='p.seconds']", "2")
    admin.click("[data-testid=submit]")
    admin.wait_for_url(re.compile(r".*/dashboard/tasks/[0-9a-f-]{36}$"))
    task_url = admin.url
    admin.evaluate("window.__still_here = true")  # gone if the page reloads
    expect()(admin.locator("[data-field=status]")).to_have_text("completed", timeout=30_000)
    assert admin.evaluate("window.__still_here === true") and admin.url == task_url
    expect()(admin.locator("pre.json").nth(1)).to_contain_text('"slept"')
    shoot(admin, "task")


def test_cancel_a_running_task(admin: Any, site: Installation) -> None:
    task = site.post("/api/v1/tasks", {"type": "sleep", "payload": {"seconds": 60}}).json()
    site.wait_task(task["id"], {"running"})
    admin.goto(f"{site.base}/dashboard/tasks/{task['id']}")
    expect()(admin.locator("[data-field=status]")).to_have_text("running")
    admin.click("[data-testid=cancel]")
    expect()(admin.locator("[data-field=status]")).to_have_text("cancelled", timeout=20_000)
    assert site.wait_task(task["id"], {"cancelled"})["status"] == "cancelled"
    expect()(admin.locator("[data-testid=cancel]")).to_have_count(0)


def test_requeue_a_dead_letter_with_a_count(admin: Any, site: Installation) -> None:
    body = {"type": "fail", "payload": {"message": "dashboard", "times": 1}, "max_retries": 0}
    task = site.post("/api/v1/tasks", body).json()
    site.wait_task(task["id"], {"failed"})
    admin.goto(site.base + "/dashboard/dead-letters")
    expect()(admin.locator("table.list").first).to_contain_text("RuntimeError")
    shoot(admin, "dead-letters")
    admin.click("[data-testid='requeue-group-RuntimeError']")
    expect()(admin.locator("[data-testid=confirm-count]")).to_contain_text("Requeue 1 failed task")
    admin.click("[data-testid=confirm-requeue]")
    expect()(admin.locator(".flash")).to_contain_text("Requeued 1 task")
    done = site.wait_task(task["id"], {"completed"})
    assert done["result"] == {"attempts": 2}


def test_pause_and_resume_a_queue(admin: Any, site: Installation) -> None:
    admin.goto(site.base + "/dashboard/queues")
    admin.click("[data-testid=pause-default]")
    expect()(admin.locator(".badge.paused")).to_have_count(1)
    paused = {q["name"]: q["paused"] for q in site.get("/api/v1/queues").json()}
    assert paused["default"] is True
    shoot(admin, "queues")
    task = site.post("/api/v1/tasks", {"type": "echo", "payload": {}}).json()
    admin.click("[data-testid=resume-default]")
    expect()(admin.locator(".badge.paused")).to_have_count(0)
    assert site.wait_task(task["id"], {"completed"})["status"] == "completed"


def test_other_pages_render(admin: Any, site: Installation) -> None:
    for path, name, heading in [
        ("/dashboard/tasks", "tasks", "Tasks"),
        ("/dashboard/workers", "workers", "Workers"),
        ("/dashboard/handlers", "handlers", "Handlers"),
        ("/dashboard/schedules", "schedules", "Schedules"),
        ("/dashboard/workflows", "workflows", "Workflows"),
    ]:
        admin.goto(site.base + path)
        expect()(admin.locator("h1")).to_contain_text(heading)
        shoot(admin, name)
    assert admin.console_errors == []


def test_open_a_workflow_graph(admin: Any, site: Installation) -> None:
    r = site.post(
        "/api/v1/workflows",
        {
            "name": "diamond",
            "tasks": [
                {"key": "a", "type": "echo"},
                {"key": "b", "type": "echo", "depends_on": ["a"]},
                {"key": "c", "type": "sleep", "payload": {"seconds": 1}, "depends_on": ["a"]},
                {"key": "d", "type": "echo", "depends_on": ["b", "c"]},
            ],
        },
    )
    if r.status_code == 404:
        pytest.skip("this installation has no workflows")
    assert r.status_code == 201, r.text
    workflow = r.json()
    admin.goto(site.base + "/dashboard/workflows")
    admin.click(f"a[href$='{workflow['id']}']")
    graph = admin.locator("[data-testid=workflow-graph]")
    expect()(graph).to_be_visible()
    expect()(graph.locator("a.node")).to_have_count(4)
    expect()(graph.locator("path.edge")).to_have_count(4)
    shoot(admin, "workflow")


def test_viewer_sees_no_buttons_and_a_forged_post_is_refused(browser: Any, site: Installation) -> None:
    task = site.post("/api/v1/tasks", {"type": "sleep", "payload": {"seconds": 30}}).json()
    page = new_page(browser, site)
    try:
        sign_in(page, site, create_key(site, "default", "viewer"))
        page.goto(f"{site.base}/dashboard/tasks/{task['id']}")
        expect()(page.locator("h1")).to_contain_text(task["id"])
        expect()(page.locator("[data-testid=cancel]")).to_have_count(0)
        expect()(page.locator("nav")).not_to_contain_text("Dead letters")
        csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
        forged = page.request.post(
            f"{site.base}/dashboard/tasks/{task['id']}/cancel", form={"csrf_token": csrf}, max_redirects=0
        )
        assert forged.status == 403
        assert site.get(f"/api/v1/tasks/{task['id']}").json()["status"] in ("queued", "running")
    finally:
        page.context.close()
        site.delete(f"/api/v1/tasks/{task['id']}")


def test_another_tenants_task_is_not_reachable(browser: Any, site: Installation) -> None:
    other_key = create_key(site, "other", "submitter")
    r = site.http.post(
        site.base + "/api/v1/tasks", json={"type": "echo"}, headers={"Authorization": f"Bearer {other_key}"}
    )
    theirs = r.json()
    page = new_page(browser, site)
    try:
        sign_in(page, site, create_key(site, "default", "operator"))
        response = page.goto(f"{site.base}/dashboard/tasks/{theirs['id']}")
        assert response is not None and response.status == 404
        expect()(page.locator("h1")).to_have_text("Not found")
    finally:
        page.context.close()


def test_phone_sized_screen_and_sign_out(browser: Any, site: Installation) -> None:
    page = new_page(browser, site, phone=True)
    try:
        sign_in(page, site, site.key)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the overview scrolls sideways on a phone ({width}px)"
        shoot(page, "overview-phone")
        page.click("[data-testid=sign-out]")
        page.wait_for_url(re.compile(r".*/dashboard/sign-in$"))
        expect()(page.locator(".flash")).to_contain_text("signed out")
        page.goto(site.base + "/dashboard/tasks")
        assert "/dashboard/sign-in" in page.url
    finally:
        page.context.close()
