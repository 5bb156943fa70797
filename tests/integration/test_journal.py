"""The events journal: written with each change, fed to observers by the manager, pruned.

On SQLite and on a real PostgreSQL; the SIGKILL test runs a real process on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import update

import taskmill.worker
from taskmill import hookimpl
from taskmill.config import Settings
from taskmill.errors import Conflict
from taskmill.journal import CURSOR
from taskmill.journal import JournalFeed
from taskmill.manager import Manager
from taskmill.models import ApiKey
from taskmill.models import EventQuery
from taskmill.models import Outcome
from taskmill.models import Role
from taskmill.models import Task
from taskmill.models import TaskQuery
from taskmill.models import TaskStatus
from taskmill.models import utcnow
from taskmill.runtime import build_runtime
from taskmill.worker import WorkerOptions
from taskmill.worker import set_current_runtime
from taskmill_sql.tables import events as events_table
from tests.jobs import JobsPlugin
from tests.services import postgres_url
from tests.services import scratch_database
from tests.storages import BACKENDS
from tests.storages import runtime_on

S = TaskStatus


@pytest.fixture(params=BACKENDS)
def rt(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    with runtime_on(request.param, tmp_path) as runtime:
        yield runtime


def submit(rt: Any, tenant: str = "acme", **body: Any) -> Task:
    body.setdefault("type", "j.echo")
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build(body, tenant)])
    return task


def names(rt: Any, task_id: uuid.UUID) -> list[str]:
    return [e.event for e in rt.storage.events.read(0, EventQuery(task_ids=(task_id,)), 1000)]


@contextmanager
def counting(rt: Any) -> Iterator[list[str]]:
    """Every SQL statement sent to the database while the block runs."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    rt.storage.check()  # builds the engines
    engines = rt.storage.db.engines()
    for engine in engines:
        sa_event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        for engine in engines:
            sa_event.remove(engine, "before_cursor_execute", count)


# ---- written with the change ---------------------------------------------------------------------


def test_every_move_writes_its_event_with_the_change(rt: Any) -> None:
    lc = rt.lifecycle
    task = submit(rt)
    [claimed] = lc.claim(["default"], 5, "w1")
    assert lc.set_progress({claimed.id: 0.5}) == 1
    assert lc.set_progress({claimed.id: 0.5}) == 0  # unchanged: no write, no event
    lc.finish([(claimed, Outcome(claimed.id, "failed", error={"m": "x"}, retry_delay=0.0))], "w1")
    lc.release_due()
    [again] = lc.claim(["default"], 5, "w1")
    lc.finish([(again, Outcome(again.id, "completed", result={"ok": 1}))], "w1")
    assert names(rt, task.id) == [
        "task.submitted",
        "task.started",
        "task.progress",
        "task.retry_scheduled",
        "task.requeued",
        "task.started",
        "task.completed",
    ]
    evs = rt.storage.events.read(0, EventQuery(task_ids=(task.id,)))
    assert [e.id for e in evs] == sorted(e.id for e in evs)
    assert {(e.tenant, e.queue, e.type) for e in evs} == {("acme", "default", "j.echo")}

    cancelled = submit(rt, delay=3600)
    lc.cancel(cancelled.id, "acme")
    assert names(rt, cancelled.id) == ["task.submitted", "task.cancelled"]


def test_a_write_that_rolls_back_journals_nothing(rt: Any) -> None:
    submit(rt, idempotency_key="k", payload={"a": 1})
    before = rt.storage.events.last_id()
    with pytest.raises(Conflict):
        rt.lifecycle.submit(
            [rt.lifecycle.build({"type": "j.echo", "payload": {"b": 1}}, "acme")]
            + [rt.lifecycle.build({"type": "j.echo", "idempotency_key": "k", "payload": {"a": 2}}, "acme")]
        )
    assert rt.storage.events.last_id() == before
    assert rt.storage.tasks.list(TaskQuery(tenant="acme"))[1] == 1


def test_reads_filter_by_tenant_task_queue_type_and_event(rt: Any) -> None:
    a = submit(rt, "acme", queue="q1")
    b = submit(rt, "other", queue="q2", type="j.sleep")
    ev = rt.storage.events
    assert [e.task_id for e in ev.read(0, EventQuery(tenant="acme"))] == [a.id]
    assert [e.task_id for e in ev.read(0, EventQuery(queues=("q2",)))] == [b.id]
    assert [e.task_id for e in ev.read(0, EventQuery(types=("j.sleep", "x")))] == [b.id]
    assert [e.task_id for e in ev.read(0, EventQuery(task_ids=(a.id, b.id)))] == [a.id, b.id]
    assert ev.read(0, EventQuery(events=("task.completed",))) == []
    first = ev.read(0)[0].id
    assert [e.task_id for e in ev.read(first)] == [b.id]
    assert ev.oldest_id() == first and ev.last_id() == first + 1


def test_claim_and_start_skip_a_paused_queue_in_their_own_statement(rt: Any) -> None:
    rt.storage.queues.set_paused("default", True)
    task = submit(rt)
    assert rt.lifecycle.start([task.id], "w") == []
    assert rt.lifecycle.claim(["default"], 5, "w") == []
    rt.storage.queues.set_paused("default", False)
    assert [t.id for t in rt.lifecycle.start([task.id], "w")] == [task.id]


def test_progress_of_many_tasks_is_one_statement(rt: Any) -> None:
    for _ in range(20):
        submit(rt)
    running = rt.lifecycle.claim(["default"], 20, "w")
    with counting(rt) as statements:
        assert rt.lifecycle.set_progress({t.id: 0.25 for t in running}) == 20
    if not rt.storage.is_sqlite:
        assert len(statements) == 1
    assert all(t.progress == 0.25 for t in rt.storage.tasks.get_many([t.id for t in running]))
    assert len(rt.storage.events.read(0, EventQuery(events=("task.progress",)))) == 20


# ---- pruning ----------------------------------------------------------------------------------------


def test_prune_deletes_only_what_is_older_than_the_retention(rt: Any) -> None:
    old = submit(rt)
    new = submit(rt)
    with rt.storage.db.one() as conn:
        conn.execute(
            update(events_table)
            .where(events_table.c.task_id == old.id)
            .values(at=utcnow() - dt.timedelta(days=2))
        )
    assert rt.storage.events.prune(utcnow() - dt.timedelta(days=1)) == 1
    assert [e.task_id for e in rt.storage.events.read(0)] == [new.id]
    assert rt.storage.events.prune(utcnow() - dt.timedelta(days=1)) == 0


# ---- the feed ---------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[uuid.UUID, str]] = []
        self.lock = threading.Lock()

    @hookimpl
    def taskmill_task_event(self, task: Task, event: str) -> None:
        with self.lock:
            self.seen.append((task.id, event))


def test_the_feed_gives_observers_the_journal_once_with_the_old_event_names(rt: Any) -> None:
    recorder = Recorder()
    rt.pm.register(recorder, name="undo-recorder")
    try:
        task = submit(rt)
        [c] = rt.lifecycle.claim(["default"], 1, "w")
        rt.lifecycle.finish([(c, Outcome(c.id, "completed"))], "w")
        feed = JournalFeed(rt)
        assert feed.run_once() == 3
        assert feed.run_once() == 0
        assert recorder.seen == [(task.id, "submitted"), (task.id, "started"), (task.id, "completed")]
        assert rt.storage.events.get_cursor(CURSOR) == rt.storage.events.last_id()
    finally:
        rt.pm.unregister(name="undo-recorder")


def test_a_leased_cursor_is_not_delivered_by_another_manager(rt: Any) -> None:
    ev = rt.storage.events
    submit(rt)
    assert ev.lease_cursor(CURSOR, "a", 30) == 0
    assert ev.lease_cursor(CURSOR, "b", 30) is None
    assert JournalFeed(rt).run_once() == 0  # someone else holds it
    assert not ev.advance_cursor(CURSOR, 0, 1, "b")
    assert ev.advance_cursor(CURSOR, 0, 1, "a")
    assert not ev.advance_cursor(CURSOR, 0, 1, "a")  # already moved
    assert ev.lease_cursor(CURSOR, "b", 30) == 1


def test_two_managers_never_both_deliver_an_event(rt: Any, tmp_path: Any) -> None:
    """Two runtimes (as two manager processes would have) feed the same journal at once."""
    recorders = [Recorder(), Recorder()]
    runtimes = [rt] + [build_runtime(rt.settings, plugins=[JobsPlugin()])]
    for r, rec in zip(runtimes, recorders, strict=True):
        r.pm.register(rec, name="undo-recorder")
    try:
        lc = rt.lifecycle
        lc.submit([lc.build({"type": "j.echo"}, "acme") for _ in range(300)])
        feeds = [JournalFeed(r, batch=7) for r in runtimes]
        barrier = threading.Barrier(2)

        def run(feed: JournalFeed) -> None:
            barrier.wait()
            for _ in range(200):
                feed.run_once(max_batches=1)

        threads = [threading.Thread(target=run, args=(f,)) for f in feeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for f in feeds:
            f.run_once()
        seen = recorders[0].seen + recorders[1].seen
        assert len(seen) == 300 and len(set(seen)) == 300
    finally:
        for r in runtimes:
            r.pm.unregister(name="undo-recorder")
        runtimes[1].close()


# ---- dependencies: set-based releases ---------------------------------------------------------------


def test_fan_out_and_fan_in_of_a_thousand_take_a_bounded_number_of_statements(rt: Any) -> None:
    lc = rt.lifecycle
    manager = Manager(rt)
    parent = submit(rt)
    with counting(rt) as fan_out_submit:
        children = lc.submit([lc.build({"type": "j.echo", "depends_on": [str(parent.id)]}, "acme")] * 1000)
    assert {t.status for t, _ in children} == {S.WAITING}
    [c] = lc.claim(["default"], 1, "w")
    lc.finish([(c, Outcome(c.id, "completed"))], "w")
    with counting(rt) as fan_out_release:
        released = lc.release_waiting()
    assert len(released) == 1000 and {t.status for t in released} == {S.QUEUED}

    with counting(rt) as fan_in_submit:
        parents = lc.submit([lc.build({"type": "j.echo", "queue": "fan"}, "acme")] * 1000)
        child = submit(rt, depends_on=[str(t.id) for t, _ in parents], queue="fan")
    with counting(rt) as fan_in_run:
        running = lc.claim(["fan"], 1000, "w")
        lc.finish([(t, Outcome(t.id, "completed")) for t in running], "w")
    with counting(rt) as fan_in_release:
        assert len(lc.release_waiting()) == 1
    assert len(running) == 1000
    assert rt.storage.tasks.get(child.id).status is S.QUEUED
    assert len(rt.storage.tasks.get(child.id).depends_on) == 1000
    print(
        f"statements: fan-out submit {len(fan_out_submit)}, release {len(fan_out_release)}; fan-in submit "
        f"{len(fan_in_submit)}, claim+finish {len(fan_in_run)}, release {len(fan_in_release)}"
    )
    assert len(fan_out_release) == 1 and len(fan_in_release) == 1
    assert len(fan_out_submit) <= 6 and len(fan_in_submit) <= 12
    assert len(fan_in_run) <= 4
    assert manager.tick()["released_waiting"] == 0


# ---- a webhook survives the death of the process that finished the task ----------------------------

CHILD = """
import sys, time
from taskmill.config import Settings
from taskmill.models import Outcome
from taskmill.models import Role
from taskmill.runtime import build_runtime
rt = build_runtime(Settings(database_url=sys.argv[1], load_plugins=("sql", "handlers"), secret_key="test"))
[task] = rt.lifecycle.claim(["default"], 1, "doomed")
rt.lifecycle.finish([(task, Outcome(task.id, "completed", result={"ok": True}))], "doomed")
print("committed", flush=True)
time.sleep(60)
"""


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                receiver.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"


@pytest.mark.integration
@pytest.mark.slow
def test_a_webhook_is_sent_when_the_finishing_process_is_sigkilled_after_commit(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskmill.worker, "_RUNTIME", None)
    receiver = Receiver()
    settings = Settings().replace(  # plugin settings (webhook_*) go to extra
        database_url=pg_url, load_plugins=("sql", "handlers"), secret_key="test", webhook_allow_private=True
    )
    rt = build_runtime(settings, upgrade=True)
    try:
        set_current_runtime(rt)
        task = submit(rt, type="echo", callback_url=receiver.url)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            line = child.stdout.readline()
            assert line.strip() == "committed", child.stderr.read()
        finally:
            child.kill()  # SIGKILL
            child.communicate(timeout=10)
        assert child.returncode == -9
        assert rt.storage.tasks.get(task.id).status is S.COMPLETED
        deliveries = rt.storage.tasks.list(TaskQuery(type="taskmill.webhook"))[0]
        assert deliveries == [], "the dead process must not have delivered it"

        Manager(rt).tick()  # the journal feed submits the delivery
        [delivery] = rt.storage.tasks.list(TaskQuery(type="taskmill.webhook"))[0]
        assert delivery.payload["task_id"] == str(task.id) and delivery.payload["event"] == "completed"
        rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=1, burst=True))
        assert len(receiver.bodies) == 1 and b'"status":"completed"' in receiver.bodies[0]
    finally:
        receiver.httpd.shutdown()
        receiver.httpd.server_close()
        rt.close()


# ---- a database made before the journal (migrations 0001/0002) upgrades cleanly ---------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_of_0002_with_auth_tables_upgrades_to_the_journal_and_the_auth_store(
    backend: str, tmp_path: Any
) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from taskmill_auth.store import auth_store
    from taskmill_auth.store import metadata as auth_metadata
    from taskmill_sql.storage import MIGRATIONS

    ctx = (
        nullcontext(f"sqlite:///{tmp_path}/old.db")
        if backend == "sqlite"
        else scratch_database(postgres_url())
    )
    with ctx as old_url:
        settings = Settings().replace(database_url=old_url, load_plugins=("sql", "auth"), secret_key="test")
        rt = build_runtime(settings, plugins=[JobsPlugin()])
        try:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            with rt.storage.db.engine.begin() as conn:  # the schema of 0002, auth tables included
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "0002")
                auth_metadata.create_all(conn)
                parent, child = uuid.uuid4(), uuid.uuid4()
                for tid, status, deps in ((parent, "completed", "[]"), (child, "waiting", f'["{parent}"]')):
                    conn.execute(
                        text(
                            "INSERT INTO tasks (id, tenant, type, queue, priority, payload, status, "
                            "attempts, budget_start, max_retries, timeout, retry_backoff, depends_on, tags, "
                            "cancel_requested, created_at, updated_at) VALUES (:id, 'acme', 'j.echo', "
                            "'default', 5, '{}', :status, 0, 0, 3, 300, 1.0, :deps, '[]', false, :now, :now)"
                        ),
                        {
                            "id": tid.hex if backend == "sqlite" else tid,
                            "status": status,
                            "deps": deps,
                            "now": utcnow(),
                        },
                    )
                conn.execute(
                    text("INSERT INTO task_dependencies (task_id, depends_on) VALUES (:c, :p)"),
                    {
                        "c": child.hex if backend == "sqlite" else child,
                        "p": parent.hex if backend == "sqlite" else parent,
                    },
                )
            store = auth_store(rt)  # the auth plugin's own migration only stamps the existing tables
            store.keys.create(
                ApiKey(
                    id="k1",
                    name=None,
                    tenant="acme",
                    role=Role.ADMIN,
                    key_hash="h",
                    prefix="p1",
                    created_at=utcnow(),
                )
            )
            rt.storage.upgrade()
            assert rt.storage.tasks.get(child).depends_on == [str(parent)]
            assert [t.id for t in rt.lifecycle.release_waiting()] == [child]
            assert names(rt, child) == ["task.requeued"]
            assert rt.storage.keys.find("p1").id == "k1"
            assert store.current()
        finally:
            rt.close()
