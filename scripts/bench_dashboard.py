"""Dashboard render times at 10,000 and 1,000,000 tasks in PostgreSQL, server side and in Chromium.

    python scripts/bench_dashboard.py [--sizes 10000,1000000] [--repeat 20]

For each size: a scratch database (dropped afterwards), migrated, filled with ``INSERT … SELECT
generate_series`` (24 hours of tasks in 3 tenants, 3 queues, 5 types; 95 % completed, 2 % failed,
1 % cancelled, 1 % queued, 0.5 % scheduled, 0.5 % running), then ``ANALYZE``. Server side: each page
through Flask's test client, median and p95 of ``--repeat`` renders (an admin, every tenant), and
the overview's database time per refresh (the first, which loads 24 hours of per-minute history,
and the incremental ones after it). In the browser: the dashboard served by werkzeug in a thread,
Chromium loading each page, ``loadEventEnd`` of the navigation timing, median of 5.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILL = """
INSERT INTO tasks (id, tenant, type, queue, priority, payload, status, attempts, budget_start,
                   max_retries, timeout, retry_backoff, tags, cancel_requested, result, error, worker,
                   created_at, queued_at, started_at, finished_at, updated_at)
SELECT gen_random_uuid(),
       (ARRAY['acme','globex','initech'])[1 + i % 3],
       (ARRAY['echo','sleep','fail','http.request','report'])[1 + i % 5],
       (ARRAY['default','emails','reports'])[1 + (i / 7) % 3],
       5,
       jsonb_build_object('user_id', i % 10000, 'n', i),
       s.status,
       CASE WHEN s.status IN ('queued','scheduled') THEN 0 ELSE 1 END, 0, 3, 300, 1.0,
       jsonb_build_array('t' || (i % 20)),
       false,
       CASE WHEN s.status = 'completed' THEN jsonb_build_object('ok', true) END,
       CASE WHEN s.status = 'failed' THEN jsonb_build_object(
            'type', (ARRAY['RuntimeError','TimeoutError','WorkerLost'])[1 + i % 3],
            'message', 'boom ' || (i % 100)) END,
       CASE WHEN s.status = 'running' THEN 'bench-worker' END,
       t.at, t.at,
       CASE WHEN s.status NOT IN ('queued','scheduled') THEN t.at + interval '100 ms' END,
       CASE WHEN s.status IN ('completed','failed','cancelled') THEN t.at + interval '1 s' END,
       t.at + interval '1 s'
FROM generate_series(1, {n}) AS i,
     LATERAL (SELECT now() - (interval '24 hours') * (1 - i::float8 / {n}) AS at) AS t,
     LATERAL (SELECT CASE WHEN i % 200 < 190 THEN 'completed' WHEN i % 200 < 194 THEN 'failed'
                          WHEN i % 200 < 196 THEN 'cancelled' WHEN i % 200 < 198 THEN 'queued'
                          WHEN i % 200 < 199 THEN 'scheduled' ELSE 'running' END AS status) AS s
"""

PAGES = [
    ("overview", "/dashboard/"),
    ("overview JSON", "/dashboard/live/overview.json"),
    ("tasks", "/dashboard/tasks"),
    ("tasks, status=failed", "/dashboard/tasks?status=failed"),
    ("tasks, queue+type", "/dashboard/tasks?queue=emails&type=fail"),
    ("tasks, tag", "/dashboard/tasks?tag=t7"),
    ("tasks, payload user_id=42", "/dashboard/tasks?q=user_id%3D42"),
    ("task", "/dashboard/tasks/{task}"),
    ("dead letters", "/dashboard/dead-letters"),
    ("requeue confirmation", "/dashboard/dead-letters/requeue?error_type=RuntimeError"),
    ("queues", "/dashboard/queues"),
]


def timed(fn: Any, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def bench_size(n: int, repeat: int, browser: Any, existing: str | None = None) -> dict[str, Any]:
    import psycopg2

    from taskmill.app import create_app
    from taskmill.config import load_settings
    from taskmill.runtime import build_runtime
    from tests.services import postgres_url
    from tests.services import scratch_database

    out: dict[str, Any] = {"n": n}
    with contextlib.ExitStack() as stack:
        url = existing or stack.enter_context(scratch_database(postgres_url()))
        settings = {"database_url": url, "auth": "none", "load_plugins": ["sql", "handlers", "web"]}
        build_runtime(load_settings(overrides=settings), upgrade=True).close()
        conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
        conn.autocommit = True
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            if not existing:
                cur.execute(FILL.format(n=int(n)))
                cur.execute("ANALYZE tasks")
            cur.execute("SELECT id FROM tasks WHERE status = 'failed' ORDER BY seq DESC LIMIT 1")
            task_id = cur.fetchone()[0]
            cur.execute("SELECT pg_size_pretty(pg_total_relation_size('tasks'))")
            out["table size"] = cur.fetchone()[0]
        out["fill seconds"] = round(time.perf_counter() - t0, 1)
        conn.close()
        app = create_app(settings)
        client = app.test_client()
        overview = app.extensions["taskmill.web"]["overview"]
        t0 = time.perf_counter()
        client.get("/dashboard/live/overview.json")
        out["first refresh ms (last hour)"] = round(overview.last_refresh_seconds * 1000, 1)
        while not overview.history_ready and time.perf_counter() - t0 < 120:
            time.sleep(0.05)
        out["24 h history back-fill s (background)"] = round(time.perf_counter() - t0, 2)
        refresh = []
        for _ in range(repeat):
            overview.invalidate()
            client.get("/dashboard/live/overview.json")
            refresh.append(overview.last_refresh_seconds * 1000)
        out["refresh ms (incremental), median"] = round(statistics.median(refresh), 1)
        out["refresh interval s"] = round(overview.interval, 1)
        server = {}
        for name, path in PAGES:
            path = path.format(task=task_id)
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            server[name] = timed(lambda p=path: client.get(p), repeat)
        out["server"] = server
        if browser is not None:
            out["browser"] = browser_times(app, browser, task_id)
        app.extensions["taskmill"].close()
    return out


def browser_times(app: Any, browser: Any, task_id: Any) -> dict[str, float]:
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    times = {}
    try:
        page = browser.new_page()
        for name, path in PAGES:
            if "JSON" in name:
                continue
            samples = []
            for _ in range(5):
                page.goto(base + path.format(task=task_id), wait_until="load")
                timing = "performance.getEntriesByType('navigation')[0].loadEventEnd"
                samples.append(page.evaluate(timing))
            times[name] = round(statistics.median(samples), 1)
        page.close()
    finally:
        server.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--database-url", help="an already filled database (one size; not dropped)")
    args = parser.parse_args()
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cpus = os.cpu_count()
    print(f"machine: {platform.node()} {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}")
    results = []
    playwright = None
    browser = None
    if not args.no_browser:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless=new", "--no-sandbox", "--disable-gpu"]
        )
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(bench_size(n, args.repeat, browser, args.database_url))
            print(results[-1], flush=True)
    finally:
        if browser is not None:
            browser.close()
            playwright.stop()
    print()
    header = "| page | " + " | ".join(f"server {r['n']:,} (median / p95 ms)" for r in results)
    if browser is not None:
        header += " | " + " | ".join(f"browser {r['n']:,} (load ms)" for r in results)
    print(header + " |")
    print("|---" * (1 + len(results) * (2 if browser else 1)) + "|")
    for name, _ in PAGES:
        cells = [f"{r['server'][name][0]:.1f} / {r['server'][name][1]:.1f}" for r in results]
        if browser is not None:
            cells += [str(r["browser"].get(name, "—")) for r in results]
        print(f"| {name} | " + " | ".join(cells) + " |")
    keys = ["first refresh ms (last hour)", "24 h history back-fill s (background)"]
    keys += ["refresh ms (incremental), median", "refresh interval s"]
    keys += ["fill seconds", "table size"]
    for key in keys:
        blanks = " | —" * len(results) if browser else ""
        print(f"| {key} | " + " | ".join(str(r[key]) for r in results) + blanks + " |")


if __name__ == "__main__":
    main()
