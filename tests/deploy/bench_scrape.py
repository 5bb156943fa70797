"""The cost of a ``/metrics`` scrape with 1,000,000 tasks in PostgreSQL (docs/operations.md).

    python -m tests.deploy.bench_scrape [--tasks 1000000]

Fills a scratch database with one ``INSERT … SELECT generate_series`` (5 queues; 90 % completed,
5 % failed, 4 % queued, 1 % running), then measures:

- the queue-statistics aggregate (what the manager computes every few seconds): wall time and
  the database's own execution time of each statement (EXPLAIN ANALYZE of what was sent);
- a scrape served from the published snapshot (every other scrape): wall time, statements sent;
- a scrape that must compute the snapshot itself (nobody published one): wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import psycopg2
from prometheus_client import generate_latest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.services import postgres_url
from tests.services import scratch_database

FILL = """
INSERT INTO tasks (id, tenant, type, queue, priority, payload, status, max_retries, timeout,
                   retry_backoff, created_at, queued_at, started_at, finished_at, updated_at)
SELECT md5(g::text)::uuid, 'default', 'echo', 'q' || (g %% 5), 5, '{}',
       CASE WHEN g %% 100 < 90 THEN 'completed' WHEN g %% 100 < 95 THEN 'failed'
            WHEN g %% 100 < 99 THEN 'queued' ELSE 'running' END,
       3, 300, 2.0, now() - (g || ' ms')::interval, now() - (g || ' ms')::interval,
       CASE WHEN g %% 100 < 95 OR g %% 100 = 99 THEN now() END,
       CASE WHEN g %% 100 < 95 THEN now() END, now()
FROM generate_series(1, %(n)s) AS g
"""


class Statements:
    """Statements sent through SQLAlchemy while active, with their parameters."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.active = False
        event.listen(Engine, "before_cursor_execute", self._on)

    def _on(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        if self.active:
            self.sent.append((statement, parameters))

    def __enter__(self) -> Statements:
        self.sent, self.active = [], True
        return self

    def __exit__(self, *_: Any) -> None:
        self.active = False


def db_time(url: str, sent: list[tuple[str, Any]]) -> float:
    """Sum of the server's execution times (ms) of the statements, by EXPLAIN ANALYZE."""
    total = 0.0
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for statement, params in sent:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            plan = cur.fetchone()[0][0]
            total += plan["Planning Time"] + plan["Execution Time"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from taskmill.config import load_settings
    from taskmill.metrics import ClusterStats
    from taskmill.metrics import compute_snapshot
    from taskmill.metrics import scrape_registry
    from taskmill.runtime import build_runtime

    with scratch_database(postgres_url()) as url:
        rt = build_runtime(load_settings(environ={}, overrides={"database_url": url}), upgrade=True)
        plain = url.replace("postgresql+psycopg2://", "postgresql://")
        started = time.perf_counter()
        with psycopg2.connect(plain) as conn, conn.cursor() as cur:
            cur.execute(FILL, {"n": args.tasks})
            cur.execute("ANALYZE tasks")
        fill = time.perf_counter() - started
        stmts = Statements()
        compute_snapshot(rt)  # warm the caches
        aggregate, aggregate_db = [], []
        for _ in range(args.repeat):
            with stmts:
                t0 = time.perf_counter()
                compute_snapshot(rt)
                aggregate.append(time.perf_counter() - t0)
            aggregate_db.append(db_time(plain, stmts.sent))
        statements = [s for s, _ in stmts.sent]
        # scrapes served from the snapshot the manager published (a fresh process: it reads the
        # published snapshot once, then serves it from memory until it is REFRESH_SECONDS old)
        from taskmill import metrics

        ClusterStats(rt).refresh()
        metrics._STATS.clear()  # noqa: SLF001 - the benchmark's process starts without a snapshot
        warm, warm_sent = [], []
        for _ in range(args.repeat):
            with stmts:
                t0 = time.perf_counter()
                generate_latest(scrape_registry(rt))
                warm.append(time.perf_counter() - t0)
            warm_sent.append(len(stmts.sent))
        # a scrape that finds no fresh snapshot anywhere computes one (no manager running)
        cold = []
        for _ in range(args.repeat):
            metrics._STATS[rt] = ClusterStats(rt, max_age=0)  # noqa: SLF001 - never fresh
            t0 = time.perf_counter()
            generate_latest(scrape_registry(rt))
            cold.append(time.perf_counter() - t0)
        rt.close()
    ms = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "fill_seconds": round(fill, 1),
                "aggregate_wall_ms": ms(aggregate),
                "aggregate_db_ms": round(statistics.median(aggregate_db), 1),
                "aggregate_statements": len(statements),
                "scrape_from_snapshot_wall_ms": ms(warm),
                "scrape_from_snapshot_statements": warm_sent,
                "scrape_computing_wall_ms": ms(cold),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
