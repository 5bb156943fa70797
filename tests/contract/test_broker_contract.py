"""The broker contract: what every broker must do, through real processes and the public API.

Each case runs once per entry of ``BROKERS`` (conftest.py); the fixture ``broker`` is that
broker's installation (api + manager), ``queue`` a queue of the test's own.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

FINAL = {"completed", "failed", "cancelled"}


def ran_order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``contract.stamp`` tasks in the order they ran (by the handler's own clock)."""
    return sorted(tasks, key=lambda t: t["result"]["ns"])


# ---- delivery and order ----------------------------------------------------------------------------


def test_every_submitted_task_is_delivered_once_with_its_result(broker: Any, queue: str) -> None:
    singles = [broker.submit("echo", {"i": i}, queue=queue) for i in range(5)]
    batch = broker.submit_batch([{"type": "echo", "payload": {"i": i}, "queue": queue} for i in range(5, 25)])
    broker.worker(queue, "--concurrency", "2")
    for t in singles + batch:
        done = broker.wait_status(t["id"], FINAL)
        assert done["status"] == "completed" and done["result"] == t["payload"], done
        assert done["attempts"] == 1 and done["started_at"] and done["finished_at"] and done["worker"]


@pytest.mark.parametrize("start", ["idle", "paused"])
def test_higher_priority_first_and_fifo_within_a_priority(broker: Any, queue: str, start: str) -> None:
    """Tasks waiting when a worker starts (or when their queue is resumed) run in priority order,
    highest first, and in submit order within a priority."""
    if start == "paused":
        broker.pause(queue)
    prios = [1, 5, 9, 5, 1, 9, 0, 7, 5, 9]
    tasks = [broker.submit("contract.stamp", {"i": i}, queue=queue, priority=p) for i, p in enumerate(prios)]
    broker.worker(queue, "--prefetch", "0")
    if start == "paused":
        time.sleep(1.0)
        broker.resume(queue)
    done = [broker.wait_status(t["id"], {"completed"}) for t in tasks]
    ran = [t["payload"]["i"] for t in ran_order(done)]
    expected = [i for i, _ in sorted(enumerate(prios), key=lambda x: (-x[1], x[0]))]
    assert ran == expected


@pytest.mark.slow
def test_pause_holds_from_the_moment_the_call_returns(broker: Any, queue: str) -> None:
    """A task submitted right after the pause call answered never starts until resume.

    Three rounds, each pausing the moment a task completes: the worker is then as busy with the
    queue as it gets (a worker that caches the paused set, or already waits on the queue, takes
    the next task).
    """
    broker.worker(queue)
    for i in range(3):
        warm = broker.submit("contract.stamp", {"round": i}, queue=queue)
        broker.wait_status(warm["id"], {"completed"})
        broker.pause(queue)
        held = broker.submit("contract.stamp", {"held": i}, queue=queue)
        time.sleep(2.0)
        after = broker.get(held["id"])
        assert after["status"] == "queued" and after["attempts"] == 0, f"round {i}: {after}"
        broker.resume(queue)
        assert broker.wait_status(held["id"], {"completed"}, 15)["attempts"] == 1


# ---- cancel, timeout, retry ------------------------------------------------------------------------


def test_cooperative_cancel_of_a_running_task(broker: Any, queue: str) -> None:
    broker.worker(queue)
    task = broker.submit("sleep", {"seconds": 60}, queue=queue)
    broker.wait_status(task["id"], {"running"})
    asked = time.monotonic()
    r = broker.cancel(task["id"])
    assert r.status_code == 202 and r.json()["cancel_requested"] is True, r.text
    done = broker.wait_status(task["id"], FINAL, 10)
    assert done["status"] == "cancelled"
    assert time.monotonic() - asked < 1.0 + 3, "the handler saw the flag before the grace ran out"
    assert done["result"] is not None and done["result"]["slept"] < 60  # it returned by itself


@pytest.mark.slow
def test_forced_cancel_after_the_grace_period(broker: Any, queue: str) -> None:
    broker.worker(queue)
    task = broker.submit("contract.stubborn", {"seconds": 60}, queue=queue)
    follow = broker.submit("echo", {"after": True}, queue=queue, priority=0)
    broker.wait_status(task["id"], {"running"})
    asked = time.monotonic()
    assert broker.cancel(task["id"]).status_code == 202
    done = broker.wait_status(task["id"], FINAL, 15)
    assert done["status"] == "cancelled", done
    assert time.monotonic() - asked >= 0.9, "the grace (1 s) was given"
    assert "force" in (done["error"] or {}).get("message", ""), done
    assert broker.wait_status(follow["id"], {"completed"}, 15)["result"] == {"after": True}


def test_timeout_is_a_failed_attempt_with_timeout_error(broker: Any, queue: str) -> None:
    broker.worker(queue)
    task = broker.submit("contract.stubborn", {"seconds": 30}, queue=queue, timeout=1, max_retries=0)
    done = broker.wait_status(task["id"], FINAL, 15)
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"]["type"] == "TimeoutError", done


@pytest.mark.slow
def test_retry_with_back_off_counts_attempts_and_waits_scheduled(broker: Any, queue: str) -> None:
    """``fail`` with 2 retries and a 1 s back-off: attempt 1, scheduled ≥ 0.5 s, attempt 2,
    scheduled ≥ 1 s, attempt 3, failed (API.md: d uniform in [b/2, b], b = 1 s × 2^(n−1))."""
    broker.worker(queue)
    task = broker.submit("fail", {"message": "boom"}, queue=queue, max_retries=2, retry_backoff=1)
    seen: list[tuple[str, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < 30:
        t = broker.get(task["id"])
        if not seen or seen[-1] != (t["status"], t["attempts"]):
            seen.append((t["status"], t["attempts"]))
        if t["status"] in FINAL:
            break
        time.sleep(0.05)
    assert t["status"] == "failed" and t["attempts"] == 3, seen
    assert t["error"]["message"] == "boom"
    assert ("scheduled", 1) in seen and ("scheduled", 2) in seen, seen
    assert time.monotonic() - started >= 1.4, "the back-off was waited"


# ---- workers that die or stop ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_sigkilled_worker_has_its_task_run_again_with_the_attempt_counted(broker: Any, queue: str) -> None:
    victim = broker.worker(queue)
    task = broker.submit("sleep", {"seconds": 2}, queue=queue, max_retries=2)
    broker.wait_status(task["id"], {"running"})
    victim.kill()
    broker.worker(queue)
    done = broker.wait_status(task["id"], FINAL, 30)
    assert done["status"] == "completed" and done["attempts"] == 2, done


@pytest.mark.slow
def test_warm_shutdown_finishes_the_running_task_and_gives_back_the_rest(broker: Any, queue: str) -> None:
    """SIGTERM: the running task completes; tasks the worker held but had not started go back
    unstarted (queued, attempt not counted) and run on another worker. One priority, so that a
    broker taking a batch from one list (Redis) holds all four: the three behind the running one
    are started with the take and must be handed back, not just left in the queue."""
    running = broker.submit("sleep", {"seconds": 1.5}, queue=queue)
    rest = [broker.submit("contract.stamp", {"i": i}, queue=queue) for i in range(3)]
    w = broker.worker(queue, "--prefetch", "3")
    broker.wait_status(running["id"], {"running"})
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0, broker.logs()
    finished = broker.get(running["id"])
    assert finished["status"] == "completed" and finished["attempts"] == 1, finished
    for t in rest:
        back = broker.get(t["id"])
        assert back["status"] == "queued" and back["attempts"] == 0, back
    broker.worker(queue)
    for t in rest:
        assert broker.wait_status(t["id"], {"completed"}, 20)["attempts"] == 1


@pytest.mark.slow
def test_a_task_taken_but_not_started_by_a_killed_worker_runs(broker: Any, queue: str) -> None:
    """A worker is SIGKILLed after its broker handed it a task and before it started it.

    Deterministic: the worker's wire (``kind.wire``) runs through a relay that stops forwarding at
    the reply holding the task's id (tests/contract/wire.py), so the broker's side has handed the
    task over (popped, in flight, unacked or claimed) and the worker can never start it. The task
    is submitted with a delay, so its id is known before any worker can see it.
    """
    victim = broker.worker(queue, cut_wire=True)
    task = broker.submit("contract.stamp", {}, queue=queue, delay=1)
    victim.cutter.arm(task["id"])
    broker.wait_for(victim.cutter.cut.is_set, 20, "the broker to hand the task to the worker")
    victim.kill()
    victim.cutter.close()
    after_kill = broker.get(task["id"])
    broker.worker(queue)
    done = broker.wait_status(task["id"], FINAL, 30)
    assert done["status"] == "completed", done
    # not started by the victim: its attempt is not counted; started (a SQL claim commits with
    # the take): counted, and the task ran again
    assert done["attempts"] == (1 if after_kill["attempts"] == 0 else 2), (after_kill, done)
