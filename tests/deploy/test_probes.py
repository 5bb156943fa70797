"""Health checks with timeouts, liveness, the cluster snapshot's caching and the worker resource
sampler (taskmill.probes, taskmill.metrics), on real SQLite and real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from taskmill import metrics
from taskmill import probes
from taskmill.app import create_app
from taskmill.config import load_settings
from taskmill.runtime import build_runtime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    settings = load_settings(
        environ={}, overrides={"database_url": f"sqlite:///{tmp_path}/t.db", "auth": "none"}
    )
    rt = build_runtime(settings, upgrade=True)
    yield rt
    rt.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A TCP port that accepts connections (into its backlog) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_health_answers_within_the_timeout_when_the_database_hangs(black_hole: int):
    settings = load_settings(
        environ={}, overrides={"database_url": f"postgresql://u@127.0.0.1:{black_hole}/db", "auth": "none"}
    )
    rt = build_runtime(settings, upgrade=False)
    try:
        client = create_app(runtime=rt).test_client()
        started = time.monotonic()
        r = client.get("/health")
        took = time.monotonic() - started
        assert r.status_code == 503
        assert r.get_json()["checks"]["storage"] == f"timed out after {probes.CHECK_TIMEOUT:g}s"
        assert took < probes.CHECK_TIMEOUT + 1  # storage and broker (the SQL broker) at once
        for _ in range(3):  # the result is reused, then the check still running is not waited for
            started = time.monotonic()
            assert client.get("/health").status_code == 503
            assert time.monotonic() - started < 0.5
            time.sleep(probes.CHECK_CACHE_SECONDS / 2 + 0.1)
        assert client.get("/health/live").status_code == 200
    finally:
        rt.close()


def test_a_hanging_check_is_never_started_twice():
    calls: list[float] = []
    release = threading.Event()

    class Hanging:
        def check(self) -> None:
            calls.append(time.monotonic())
            release.wait(10)

    class Runtime:
        storage = Hanging()
        broker = Hanging()

    rt = Runtime()
    try:
        first = probes.component_status(rt, timeout=0.1, max_age=0)
        second = probes.component_status(rt, timeout=0.1, max_age=0)
        assert first == second == {"storage": "timed out after 0.1s", "broker": "timed out after 0.1s"}
        assert len(calls) == 2  # one per component, although asked twice
    finally:
        release.set()


def test_snapshot_is_computed_once_per_period_by_one_thread(runtime: Any, tmp_path: Path):
    stats = metrics.ClusterStats(runtime, max_age=30, directory=str(tmp_path))
    threads = [threading.Thread(target=stats.get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.computed == 1
    assert stats.get() is not None and stats.computed == 1
    # another process of the machine (same directory) reads the published file
    other = metrics.ClusterStats(runtime, max_age=30, directory=str(tmp_path))
    assert other.get() is not None and other.computed == 0
    # a stale snapshot is computed again
    stale = metrics.ClusterStats(runtime, max_age=0, directory=str(tmp_path))
    time.sleep(stale.period(other.get()) + 0.05)
    stale.get()
    assert stale.computed == 1


def test_a_costly_snapshot_is_kept_longer(runtime: Any):
    stats = metrics.ClusterStats(runtime, max_age=5)
    snap = stats.refresh()
    assert snap is not None
    snap.duration = 1.5
    assert stats.period(snap) == pytest.approx(15.0)
    snap.duration = 0.01
    assert stats.period(snap) == 5


def test_snapshot_counts_what_the_database_holds(runtime: Any):
    client = create_app(runtime=runtime).test_client()
    for _ in range(3):
        assert client.post("/api/v1/tasks", json={"type": "echo", "queue": "snap-q"}).status_code == 201
    snap = metrics.ClusterStats(runtime, max_age=0).refresh()
    assert snap is not None
    assert snap.depth["snap-q"] == {"queued": 3}
    assert snap.oldest_queued_age["snap-q"] >= 0
    assert metrics.Snapshot.from_json(snap.to_json()) == snap
    assert metrics.Snapshot.from_json("{not json") is None


def test_liveness_fails_when_the_loop_stops_beating(runtime: Any, monkeypatch: pytest.MonkeyPatch):
    server = probes.serve_role(runtime, "manager", _free_port(), host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.port}"
        probes.beat()
        assert requests.get(base + "/health/live", timeout=5).status_code == 200
        monkeypatch.setattr(probes, "_last_beat", time.monotonic() - probes.LIVENESS_WINDOW - 1)
        r = requests.get(base + "/health/live", timeout=5)
        assert r.status_code == 503 and "has not passed" in r.json()["reason"]
        assert requests.get(base + "/health/ready", timeout=5).json()["checks"] == {
            "storage": "ok",
            "broker": "ok",
        }
    finally:
        monkeypatch.setattr(probes, "_last_beat", None)
        server.close()


def test_metrics_port_asks_for_the_token(tmp_path: Path):
    settings = load_settings(
        environ={},
        overrides={"database_url": f"sqlite:///{tmp_path}/t.db", "auth": "none", "metrics_token": "s3cret"},
    )
    rt = build_runtime(settings, upgrade=True)
    server = probes.serve_role(rt, "worker", _free_port(), host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        ok = requests.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert ok.status_code == 200 and "taskmill_queue_depth" in ok.text
    finally:
        server.close()
        rt.close()


def sample(name: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, {"worker": "sampler-test"})
    assert value is not None, name
    return value


def test_resource_sampler_counts_the_pool(runtime: Any):
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(30_000_000); time.sleep(30)"])
    try:
        time.sleep(0.5)
        runtime.worker_id = "sampler-test"
        sampler = metrics.ResourceSampler(runtime)
        sampler.sample()
        processes = sample("taskmill_worker_processes")
        rss = sample("taskmill_worker_resident_memory_bytes")
        assert processes >= 2
        assert rss > 30_000_000
        cpu = sample("taskmill_worker_cpu_seconds_total")
        sum(i * i for i in range(300_000))
        sampler.sample()
        assert sample("taskmill_worker_cpu_seconds_total") > cpu
    finally:
        child.kill()
        child.wait()
