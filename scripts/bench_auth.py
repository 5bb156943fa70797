"""Auth overhead: single submits per second with auth on (an API key) against auth off.

Starts ``taskmill api`` (gunicorn, the same settings both times) on one database, alternating
``TASKMILL_AUTH=none`` and ``TASKMILL_AUTH=apikey`` for a few rounds, and drives it with
concurrent clients (threads, each with a keep-alive ``requests.Session``) posting one task per
request. Prints the rate of every round and the ratio of the best rates (target: ≥ 90 %).

    python scripts/bench_auth.py                               # a temporary SQLite database
    python scripts/bench_auth.py --database-url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests


def _env(base: dict[str, str], **values: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("TASKMILL_")}
    env.update(values)
    return env


def _wait_live(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the api exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/health/live", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the api did not start")


def _drive(url: str, headers: dict[str, str], clients: int, seconds: float) -> float:
    """Submits per second over ``seconds`` with ``clients`` threads (after a short warm-up)."""
    stop = threading.Event()
    counting = threading.Event()
    counts = [0] * clients
    errors: list[str] = []

    def client(i: int) -> None:
        session = requests.Session()
        session.headers.update(headers)
        while not stop.is_set():
            r = session.post(f"{url}/api/v1/tasks", json={"type": "echo", "payload": {"i": i}}, timeout=10)
            if r.status_code != 201:
                errors.append(f"{r.status_code} {r.text[:200]}")
                stop.set()
                return
            if counting.is_set():
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(1.0, seconds / 4))  # warm-up: connections, caches, gunicorn workers
    counting.set()
    started = time.perf_counter()
    time.sleep(seconds)
    counting.clear()
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a submit failed: {errors[0]}")
    return sum(counts) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--rate-limit", default="", help="also set TASKMILL_RATE_LIMIT when auth is on")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="taskmill-bench-auth-")
    database_url = args.database_url or f"sqlite:///{tmp}/bench.db"
    common = {
        "TASKMILL_DATABASE_URL": database_url,
        "TASKMILL_SECRET_KEY": "bench-secret-" + "x" * 32,
        "TASKMILL_HOST": "127.0.0.1",
        "TASKMILL_PORT": str(args.port),
        "TASKMILL_API_WORKERS": str(args.workers),
        "TASKMILL_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": os.path.join(tmp, "metrics"),
    }
    os.makedirs(common["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    base = dict(os.environ)
    taskmill = [sys.executable, "-m", "taskmill.cli"]
    subprocess.run([*taskmill, "db", "upgrade"], env=_env(base, **common), check=True, capture_output=True)
    made = subprocess.run(
        [*taskmill, "api-keys", "create", "--tenant", "bench", "--role", "submitter", "--json"],
        env=_env(base, **common),
        check=True,
        capture_output=True,
        text=True,
    )
    key = json.loads(made.stdout)["key"]
    modes: dict[str, tuple[dict[str, str], dict[str, str]]] = {
        "off": ({"TASKMILL_AUTH": "none"}, {}),
        "on": (
            {"TASKMILL_AUTH": "apikey", "TASKMILL_RATE_LIMIT": args.rate_limit},
            {"Authorization": f"Bearer {key}"},
        ),
    }
    url = f"http://127.0.0.1:{args.port}"
    results: dict[str, list[float]] = {"off": [], "on": []}
    print(f"database {database_url.split('@')[-1]}, {args.workers} gunicorn workers, {args.clients} clients")
    for round_ in range(args.rounds):
        for mode, (settings, headers) in modes.items():
            env = _env(base, **common, **{k: v for k, v in settings.items() if v})
            proc = subprocess.Popen(
                [*taskmill, "api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                _wait_live(url, proc)
                rate = _drive(url, headers, args.clients, args.seconds)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            results[mode].append(rate)
            print(f"round {round_ + 1}  auth {mode:<3}  {rate:8.1f} submits/s", flush=True)
    best = {m: max(v) for m, v in results.items()}
    median = {m: statistics.median(v) for m, v in results.items()}
    ratio = best["on"] / best["off"]
    print(f"best:   auth off {best['off']:.1f}/s, auth on {best['on']:.1f}/s, ratio {ratio:.1%}")
    print(
        f"median: auth off {median['off']:.1f}/s, auth on {median['on']:.1f}/s, "
        f"ratio {median['on'] / median['off']:.1%}"
    )
    print("PASS" if ratio >= 0.9 else "FAIL", "(target: auth on >= 90 % of auth off)")
    return 0 if ratio >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
