"""Schedules: due-time arithmetic (cron across DST, intervals), firing once, and the API."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from taskmill.schedules import Schedule
from taskmill.schedules import ScheduleService
from taskmill.schedules import first_due_after
from taskmill.schedules import idempotency_key
from taskmill.schedules import next_due
from taskmill.schedules import parse_timezone
from taskmill.schedules import validate_cron

UTC = dt.UTC
NY = "America/New_York"


class Clock:
    """A controllable clock: ``clock()`` is now; ``clock.set(...)``/``clock.advance(...)`` move it."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at

    def set(self, at: dt.datetime) -> None:
        self.at = at

    def advance(self, **delta: float) -> None:
        self.at += dt.timedelta(**delta)


def local(zone: str, *args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=parse_timezone(zone), fold=fold).astimezone(UTC)


def dues(expr: str, zone: str, start: dt.datetime, n: int) -> list[dt.datetime]:
    out, at = [], start
    for _ in range(n):
        at = next_due(cron=expr, interval=None, timezone=zone, after=at, anchor=at)
        out.append(at)
    return out


# ---- due times ------------------------------------------------------------------------------------


def test_cron_daily_in_a_zone_is_wall_clock_time() -> None:
    start = local(NY, 2026, 6, 1, 12, 0)
    assert dues("30 9 * * *", NY, start, 2) == [local(NY, 2026, 6, 2, 9, 30), local(NY, 2026, 6, 3, 9, 30)]


def test_spring_forward_moves_the_missing_time_to_the_end_of_the_gap_and_skips_nothing() -> None:
    # 2026-03-08: clocks go 02:00 → 03:00 in New York; 02:30 does not exist that day
    start = local(NY, 2026, 3, 7, 12, 0)
    got = dues("30 2 * * *", NY, start, 3)
    assert got == [local(NY, 2026, 3, 8, 3, 0), local(NY, 2026, 3, 9, 2, 30), local(NY, 2026, 3, 10, 2, 30)]


def test_fall_back_runs_a_repeated_wall_clock_time_once() -> None:
    # 2026-11-01: clocks go 02:00 → 01:00; 01:30 happens twice (croniter yields both)
    start = local(NY, 2026, 10, 31, 12, 0)
    got = dues("30 1 * * *", NY, start, 3)
    assert got == [
        local(NY, 2026, 11, 1, 1, 30),
        local(NY, 2026, 11, 2, 1, 30),
        local(NY, 2026, 11, 3, 1, 30),
    ]
    # the first 01:30 is the EDT one (05:30 UTC), and the next day's is EST (06:30 UTC)
    assert got[0] == dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_fall_back_hourly_fires_once_per_wall_clock_hour() -> None:
    start = local(NY, 2026, 11, 1, 0, 30)
    got = dues("0 * * * *", NY, start, 3)
    assert [g.astimezone(parse_timezone(NY)).hour for g in got] == [1, 2, 3]
    assert len(set(got)) == 3


def test_spring_forward_every_half_hour_has_no_double_run() -> None:
    start = local(NY, 2026, 3, 8, 1, 10)
    got = dues("*/30 * * * *", NY, start, 4)
    assert got == sorted(set(got))
    assert got[:2] == [local(NY, 2026, 3, 8, 1, 30), local(NY, 2026, 3, 8, 3, 0)]


def test_interval_keeps_its_phase_and_catches_up_with_one_run() -> None:
    anchor = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    # far past the anchor (downtime): the next due time is the first one after now, on the phase
    after = dt.datetime(2026, 1, 1, 5, 0, 0, tzinfo=UTC)
    got = next_due(cron=None, interval=60, timezone="UTC", after=after, anchor=anchor)
    assert got == dt.datetime(2026, 1, 1, 5, 0, 10, tzinfo=UTC)
    assert next_due(cron=None, interval=60, timezone="UTC", after=got, anchor=anchor) == got + dt.timedelta(
        seconds=60
    )


@pytest.mark.parametrize("expr", ["* * * *", "* * * * * *", "61 * * * *", "bad cron x y", "0 0 31 2 *", ""])
def test_bad_cron_expressions_are_refused(expr: str) -> None:
    with pytest.raises(ValueError):
        validate_cron(expr)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../etc/passwd", "", "UTC+99"])
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(ValueError):
        parse_timezone(zone)


def test_idempotency_key_names_schedule_and_due_time() -> None:
    due = dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert idempotency_key("nightly", due) == "schedule:nightly:2026-11-01T05:30:00.000Z"


def test_first_run_is_the_first_due_time_after_creation() -> None:
    now = dt.datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    s = Schedule(id=uuid.uuid4(), tenant="t", name="n", task={}, interval=30, created_at=now)
    assert first_due_after(s, now) == now + dt.timedelta(seconds=30)


# ---- firing through the lifecycle, with a controllable clock (SQLite) -------------------------------


def make_service(runtime: Any, at: dt.datetime) -> tuple[ScheduleService, Clock]:
    clock = Clock(at)
    return ScheduleService(runtime, clock), clock


def schedule_tasks(runtime: Any, name: str) -> list[Any]:
    from taskmill.models import TaskQuery

    items, _ = runtime.storage.tasks.list(TaskQuery(tag=f"schedule:{name}", limit=1000))
    return items


def test_fire_due_submits_once_per_due_time_and_no_replay_after_downtime(runtime: Any) -> None:
    t0 = dt.datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    service, clock = make_service(runtime, t0)
    service.create({"name": "every-min", "interval": 60, "type": "t.echo", "payload": {"a": 1}}, "default")
    assert service.fire_due() == []  # nothing due yet
    clock.set(t0 + dt.timedelta(seconds=61))
    [task] = service.fire_due()
    assert "schedule:every-min" in task.tags and task.payload == {"a": 1}
    assert service.fire_due() == []  # the same due time never fires twice
    # two hours of downtime: one catch-up run, then the next due time after now
    clock.set(t0 + dt.timedelta(hours=2, seconds=5))
    assert len(service.fire_due()) == 1
    assert service.fire_due() == []
    s = service.get("every-min", "default")
    assert s.next_run_at == t0 + dt.timedelta(hours=2, seconds=60)
    assert s.last_run_at == t0 + dt.timedelta(seconds=120)
    assert len(schedule_tasks(runtime, "every-min")) == 2


def test_a_repeated_fire_of_one_due_time_finds_the_first_task(runtime: Any) -> None:
    """A manager that died after submitting but before advancing: the next one's submit is a no-op."""
    t0 = dt.datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    service, clock = make_service(runtime, t0)
    s = service.create({"name": "n", "interval": 10, "type": "t.echo"}, "default")
    clock.advance(seconds=11)
    stale = service.get("n", "default")
    assert service.fire(stale) is not None
    assert service.fire(s) is None  # the same due time again, from an outdated copy
    assert len(schedule_tasks(runtime, "n")) == 1


def test_dst_fall_back_with_a_controllable_clock_fires_once(runtime: Any) -> None:
    start = local(NY, 2026, 10, 31, 23, 0)
    service, clock = make_service(runtime, start)
    service.create({"name": "nightly", "cron": "30 1 * * *", "timezone": NY, "type": "t.echo"}, "default")
    fired = 0
    while clock() < local(NY, 2026, 11, 1, 4, 0):  # walk through the repeated hour minute by minute
        clock.advance(minutes=1)
        fired += len(service.fire_due())
    assert fired == 1
    clock.set(local(NY, 2026, 11, 2, 1, 31))
    assert len(service.fire_due()) == 1


def test_dst_spring_forward_with_a_controllable_clock_fires_once(runtime: Any) -> None:
    start = local(NY, 2026, 3, 7, 23, 0)
    service, clock = make_service(runtime, start)
    service.create({"name": "n", "cron": "30 2 * * *", "timezone": NY, "type": "t.echo"}, "default")
    fired = []
    while clock() < local(NY, 2026, 3, 8, 5, 0):
        clock.advance(minutes=1)
        fired += service.fire_due()
    assert len(fired) == 1
    assert service.get("n", "default").last_run_at == local(NY, 2026, 3, 8, 3, 0)


def test_paused_schedules_do_not_fire_and_resume_does_not_make_up(runtime: Any) -> None:
    t0 = dt.datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    service, clock = make_service(runtime, t0)
    service.create({"name": "p", "interval": 60, "type": "t.echo"}, "default")
    service.pause("p", "default")
    clock.advance(minutes=10)
    assert service.fire_due() == []
    resumed = service.resume("p", "default")
    assert resumed.next_run_at > clock()
    assert service.fire_due() == []


# ---- the API (auth off: a local admin of tenant "default") ------------------------------------------


def test_create_list_get_pause_resume_delete(client: Any) -> None:
    r = client.post("/api/v1/schedules", json={"name": "hourly", "cron": "0 * * * *", "type": "t.echo"})
    assert r.status_code == 201, r.json
    body = r.json
    assert r.headers["Location"] == "/api/v1/schedules/hourly"
    assert body["timezone"] == "UTC" and body["next_run_at"].endswith(":00:00.000Z")
    assert body["last_run_at"] is None and body["paused"] is False
    assert (
        client.post("/api/v1/schedules", json={"name": "hourly", "interval": 5, "type": "t.echo"}).status_code
        == 409
    )
    listed = client.get("/api/v1/schedules")
    assert listed.status_code == 200 and [s["name"] for s in listed.json] == ["hourly"]
    assert "X-Pagination" in listed.headers
    assert client.get("/api/v1/schedules/hourly").json["cron"] == "0 * * * *"
    assert client.post("/api/v1/schedules/hourly/pause").json["paused"] is True
    assert client.post("/api/v1/schedules/hourly/resume").json["paused"] is False
    assert client.delete("/api/v1/schedules/hourly").status_code == 204
    assert client.get("/api/v1/schedules/hourly").status_code == 404
    assert client.delete("/api/v1/schedules/hourly").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "* * * * *", "timezone": "Nowhere/City"}, "timezone"),
        ({"interval": 0}, "interval"),
        ({"interval": -5}, "interval"),
        ({"interval": 1.5}, "interval"),
        ({"cron": "* * * * *", "interval": 60}, "interval"),
        ({}, "cron"),
        ({"interval": 60, "delay": 3}, "delay"),
        ({"interval": 60, "name": "bad name!"}, "name"),
    ],
)
def test_bad_schedules_are_422_naming_the_field(client: Any, body: dict[str, Any], field: str) -> None:
    r = client.post("/api/v1/schedules", json={"name": "s", "type": "t.echo", **body})
    assert r.status_code == 422, r.json
    assert field in r.json["errors"], r.json


def test_schedule_payload_is_checked_by_the_handler_schema_at_creation(client: Any) -> None:
    r = client.post(
        "/api/v1/schedules", json={"name": "s", "interval": 60, "type": "t.strict", "payload": {}}
    )
    assert r.status_code == 422 and "payload" in r.json["errors"]
    r = client.post("/api/v1/schedules", json={"name": "s", "interval": 60, "type": "nope"})
    assert r.status_code == 422 and "type" in r.json["errors"]


def test_schedules_are_tenant_scoped_and_need_operator(secured: Any) -> None:
    c = secured.client
    body = {"name": "mine", "interval": 60, "type": "t.echo"}
    assert c.post("/api/v1/schedules", json=body, headers=secured.headers("submitter")).status_code == 403
    assert c.get("/api/v1/schedules", headers=secured.headers("viewer")).status_code == 403
    assert c.post("/api/v1/schedules", json=body, headers=secured.headers("operator")).status_code == 201
    # another tenant's operator neither sees nor reaches it; it may take the same name
    other = secured.headers("operator", "other")
    assert c.get("/api/v1/schedules", headers=other).json == []
    assert c.get("/api/v1/schedules/mine", headers=other).status_code == 404
    assert c.delete("/api/v1/schedules/mine", headers=other).status_code == 404
    assert c.post("/api/v1/schedules/mine/pause", headers=other).status_code == 404
    assert c.post("/api/v1/schedules", json=body, headers=other).status_code == 201
    # an admin sees both, and addresses one with ?tenant=
    admin = secured.headers("admin")
    assert sorted(s["tenant"] for s in c.get("/api/v1/schedules", headers=admin).json) == ["acme", "other"]
    assert c.get("/api/v1/schedules/mine?tenant=other", headers=admin).json["tenant"] == "other"
    assert c.get("/api/v1/schedules/mine", headers=admin).status_code == 404  # ambiguous, not its own
    assert c.get("/api/v1/schedules/mine", headers=secured.headers("operator")).json["tenant"] == "acme"
    assert c.get("/api/v1/schedules", headers={}).status_code == 401
