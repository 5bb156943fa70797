"""``taskmill run``: keeps api, worker and manager processes alive on one machine."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import Any

__all__ = ["Supervisor"]

logger = logging.getLogger("taskmill.run")


class Supervisor:
    """Starts one process per role, restarts any that dies, stops all on SIGINT/SIGTERM."""

    def __init__(self, roles: dict[str, list[str]], env: dict[str, str], stop_timeout: float = 40.0) -> None:
        self.roles = roles
        self.env = env
        self.stop_timeout = stop_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, list[float]] = {name: [] for name in roles}
        self.stopping = False

    def _start(self, name: str) -> None:
        # each child in its own process group: a Ctrl-C reaches only the supervisor, which then
        # stops the children in order (workers get time to finish their tasks)
        self.procs[name] = subprocess.Popen(self.roles[name], env=self.env, start_new_session=True)
        logger.info("started %s (pid %s)", name, self.procs[name].pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            for p in self.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)  # a second signal: workers stop at once
            return
        self.stopping = True

    def run(self) -> int:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._on_signal)
        for name in self.roles:
            self._start(name)
        try:
            while not self.stopping:
                time.sleep(0.2)
                for name, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None or self.stopping:
                        continue
                    recent = [t for t in self.restarts[name] if time.monotonic() - t < 60]
                    self.restarts[name] = recent
                    if len(recent) >= 5:
                        logger.error("%s keeps dying (exit code %s); stopping everything", name, code)
                        self.stopping = True
                        break
                    logger.warning("%s exited with code %s; restarting it", name, code)
                    time.sleep(min(5.0, 0.5 * 2 ** len(recent)))
                    self.restarts[name].append(time.monotonic())
                    self._start(name)
        finally:
            self._stop_all()
        return 0

    def _stop_all(self) -> None:
        # api first (no new tasks), then the worker (finishes its tasks), the manager last
        order = [n for n in ("api", "worker", "manager") if n in self.procs] + [
            n for n in self.procs if n not in ("api", "worker", "manager")
        ]
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for name in order:
            proc = self.procs[name]
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        logger.info("all stopped")
