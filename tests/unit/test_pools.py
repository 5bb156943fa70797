"""The threads pool's wake-up pipe and the pool registry, without a database."""

from __future__ import annotations

import select
import threading
import uuid

import pytest

from taskmill.worker.options import POOLS
from taskmill.worker.pool import POOL_FACTORIES
from taskmill.worker.pool import PoolEvent
from taskmill.worker.threads import Wakeup


def test_no_event_is_lost_when_many_threads_poke_while_the_loop_drains() -> None:
    """Every event put by any thread is seen by a loop that only reads after its fd is readable
    (a lost poke would leave the loop waiting forever with an event queued)."""
    wake = Wakeup()
    producers, each = 4, 3000
    seen = 0

    def produce() -> None:
        for _ in range(each):
            wake.put(PoolEvent("done", uuid.uuid4()))

    threads = [threading.Thread(target=produce) for _ in range(producers)]
    for t in threads:
        t.start()
    while seen < producers * each:
        ready, _, _ = select.select([wake.r], [], [], 5.0)
        assert ready, f"no wake-up with {producers * each - seen} events outstanding"
        seen += len(wake.take())
    for t in threads:
        t.join()
    assert seen == producers * each
    wake.close()


def test_every_pool_name_has_a_factory() -> None:
    assert set(POOLS) == set(POOL_FACTORIES) == {"prefork", "threads", "asyncio"}


def test_an_unknown_pool_is_refused_with_the_known_names() -> None:
    from taskmill.config import Settings
    from taskmill.config import validate
    from taskmill.errors import ConfigError

    with pytest.raises(ConfigError, match="TASKMILL_WORKER_POOL"):
        validate(Settings(worker_pool="gevent"))
    with pytest.raises(ConfigError, match="TASKMILL_WORKER_MAX_TASKS_PER_CHILD"):
        validate(Settings(worker_max_tasks_per_child=-1))
