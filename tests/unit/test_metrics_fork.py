"""A process forked while another thread writes metrics can write metrics (RQ's WorkerPool and
the prefork pool fork beside the resource sampler and the outcome writer)."""

from __future__ import annotations

import os
import signal
import threading

from taskmill import metrics


def _fork_while_writing(rounds: int) -> list[int]:
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            metrics.submitted("fork-q", "fork-t")
            metrics.waited("fork-q", 0.001)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    codes = []
    try:
        for _ in range(rounds):
            pid = os.fork()
            if pid == 0:  # the child: the same writes, killed by SIGALRM if a lock never frees
                signal.alarm(5)
                metrics.submitted("fork-q", "fork-t")
                metrics.waited("fork-q", 0.001)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
    finally:
        stop.set()
        thread.join()
    return codes


def test_a_child_forked_during_metric_writes_is_not_left_holding_their_lock() -> None:
    codes = _fork_while_writing(60)
    assert codes == [0] * 60, f"children killed by SIGALRM (deadlocked): {codes.count(-signal.SIGALRM)}"
