"""The reliable queue under RQ's loop: a job taken is never only in a worker's memory.

RQ pops a job id with ``BLPOP`` (several priority lists) or, when it listens to exactly one
list, ``BLMOVE``s it into a per-queue *intermediate* list that its maintenance later moves to the
*failed* registry, not back to the queue (rq 2.12, ``intermediate_queue.py``). Neither survives a
worker killed between the pop and the start of the task. Here each take is one Lua script that,
atomically, pops up to *k* ids from the first non-empty lists (highest priority first) and
appends ``"<list key>|<job id>"`` for each to the worker's own in-flight list
``taskmill:inflight:<worker>``. The entries leave the in-flight list only when the worker has
committed the tasks' start in the database (or learnt that they must not start: a duplicate, a
cancelled task, a paused queue), in one pipeline (:func:`settle`). So, at every instant, a task
that is queued in the database is in a queue list, in some worker's in-flight list, or nowhere
in Redis (dropped on purpose, Redis lost it) — and the manager's re-publish
(:meth:`RedisBroker.republish_lost`) handles the last two: it moves the in-flight entries of
workers that are no longer registered back to the front of their lists, and publishes again the
queued tasks it finds in no list at all.

A Lua script cannot block, so an idle worker blocks on its queues' *bells*: every publish rings
a queue's bell (``taskmill:bell:<queue>``, one element per task, trimmed), a take silences one,
and a blocked worker wakes on ``BLPOP`` of the bells, then takes with the script. Bells only
wake; they never carry a task, so a lost or extra ring costs at most one empty take, and a
blocked worker also tries a take every :data:`SAFETY_POLL` seconds.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.queue import Queue

from taskmill_redis.factory import job_for
from taskmill_redis.factory import split_rq_queue_name

__all__ = [
    "INFLIGHT_PREFIX",
    "BELL_PREFIX",
    "BELL_MAX",
    "SAFETY_POLL",
    "inflight_key",
    "bell_key",
    "entry_of",
    "parse_entry",
    "take",
    "settle",
    "give_back",
    "reclaim",
    "reliable_queue_class",
]

INFLIGHT_PREFIX = "taskmill:inflight:"
BELL_PREFIX = "taskmill:bell:"
BELL_MAX = 10_000
"""Rings kept per bell (a bell only wakes; nobody needs more)."""
SAFETY_POLL = 1.0
"""Seconds a blocked worker waits for a bell before it tries a take anyway."""

_TAKE = """
local want = tonumber(ARGV[2])
local n = (#KEYS - 1) / 2
local out = {}
local entries = {}
for i = 2, n + 1 do
  local ids = redis.call('LPOP', KEYS[i], want - #entries)
  if ids then
    for _, id in ipairs(ids) do
      entries[#entries + 1] = KEYS[i] .. '|' .. id
      out[#out + 1] = KEYS[i]
      out[#out + 1] = id
    end
    local rings = #ids - tonumber(ARGV[1])
    if rings > 0 then redis.call('LPOP', KEYS[n + i], rings) end
    if #entries >= want then break end
  end
end
if #entries > 0 then redis.call('RPUSH', KEYS[1], unpack(entries)) end
return out
"""

_GIVE_BACK = """
local moved = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    local key, id = string.match(ARGV[i], '^(.*)|([^|]*)$')
    redis.call('LPUSH', key, id)
    moved = moved + 1
  end
end
return moved
"""

_RECLAIM = """
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #entries, 1, -1 do
  local key, id = string.match(entries[i], '^(.*)|([^|]*)$')
  if key then redis.call('LPUSH', key, id) end
end
redis.call('DEL', KEYS[1])
return #entries
"""


_SCRIPTS: dict[str, Any] = {}


def _run(conn: Redis, source: str, keys: Sequence[str], args: Sequence[str] = ()) -> Any:
    """Run a Lua script by its SHA (``EVALSHA``, loaded on first use on each server)."""
    script = _SCRIPTS.get(source)
    if script is None:
        script = _SCRIPTS[source] = conn.register_script(source)
    return script(keys=list(keys), args=list(args), client=conn)


def inflight_key(worker_name: str) -> str:
    return INFLIGHT_PREFIX + worker_name


def bell_key(queue: str) -> str:
    """The bell of a taskmill queue."""
    return BELL_PREFIX + queue


def _bell_of_list(list_key: str) -> str:
    name = list_key[len(Queue.redis_queue_namespace_prefix) :]
    parsed = split_rq_queue_name(name)
    return bell_key(parsed[0] if parsed else name)


def entry_of(list_key: str, job_id: str) -> str:
    """The in-flight entry of a job taken from ``list_key``."""
    return f"{list_key}|{job_id}"


def parse_entry(entry: str) -> tuple[str, str]:
    """``(list key, job id)`` of an in-flight entry."""
    key, _, job_id = entry.rpartition("|")
    return key, job_id


def take(
    conn: Redis,
    inflight: str,
    list_keys: Sequence[str],
    silence: bool = True,
    count: int = 1,
    bells: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Move up to ``count`` job ids, first lists first, into ``inflight``, atomically.

    ``silence``: silence one bell ring per id taken (False: the caller's ``BLPOP`` already took
    one ring). ``bells``: the bell of each list, in order (computed when not given).

    Returns:
        ``(list key, job id)`` of each id taken, in order; empty when every list is empty.
    """
    if bells is None:
        bells = [_bell_of_list(k) for k in list_keys]
    got = _run(
        conn, _TAKE, [inflight, *list_keys, *bells], ["0" if silence else "1", str(max(1, int(count)))]
    )
    flat = [x.decode() if isinstance(x, bytes) else x for x in got or ()]
    return list(zip(flat[0::2], flat[1::2], strict=True))


def settle(conn: Redis, inflight: str, entries: Sequence[str], pipeline: Any = None) -> None:
    """Forget taken jobs (their start is committed, or they must not start), in one round trip.

    Also deletes their RQ job hashes, which only an earlier taskmill version wrote."""
    pipe = pipeline if pipeline is not None else conn.pipeline(transaction=False)
    for entry in entries:
        pipe.lrem(inflight, 1, entry)
    keys = [Job.key_for(parse_entry(e)[1]) for e in entries]
    if keys:
        pipe.delete(*keys)
    if pipeline is None:
        pipe.execute()


def give_back(conn: Redis, inflight: str, entries: Iterable[str]) -> int:
    """Put taken jobs back at the front of their lists (their start could not be recorded)."""
    entries = list(entries)
    if not entries:
        return 0
    return int(_run(conn, _GIVE_BACK, [inflight], entries))


def reclaim(conn: Redis, inflight: str) -> int:
    """Return every entry of a (dead) worker's in-flight list to the front of its list."""
    return int(_run(conn, _RECLAIM, [inflight]))


def reliable_queue_class(worker_name: str) -> type[ReliableQueue]:
    """An RQ ``queue_class`` whose ``dequeue_any`` takes through this worker's in-flight list."""
    attrs = {"inflight": inflight_key(worker_name), "taken": collections.deque(), "take_limit": 1}
    return type("TaskmillQueue", (ReliableQueue,), attrs)


class ReliableQueue(Queue):
    """RQ's Queue with a reliable ``dequeue_any`` (set as the worker's ``queue_class``).

    One take moves up to :attr:`take_limit` ids (the worker sets it: one, or more while tasks
    are short); ``dequeue_any`` hands them to RQ's loop one at a time, and the worker starts all
    those taken together in one statement (see :mod:`taskmill_redis.worker`). The jobs are built
    in memory from the id: every job calls ``execute(task_id)``, and the task's row in the
    database holds the rest, so no job hash is read.
    """

    inflight = ""
    #: ids a take may move at once (set by the worker)
    take_limit = 1
    #: ``(entry, job, queue)`` taken and not yet handed to RQ's loop, in order
    taken: collections.deque[tuple[str, Any, Queue]] = collections.deque()
    #: the in-flight entry of the job handed out last (read by the worker to settle it)
    last_entry: str | None = None

    @classmethod
    def dequeue_any(  # type: ignore[override]
        cls,
        queues: Iterable[Queue],
        timeout: int | None,
        connection: Redis,
        job_class: Any = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Any, Queue] | None:
        """The next job of ``queues`` (in order), taken into the in-flight list.

        ``timeout`` None: do not block (burst). Otherwise block up to ``timeout`` seconds on the
        queues' bells, trying a take after each ring and every :data:`SAFETY_POLL` seconds.

        Raises:
            DequeueTimeout: nothing arrived within ``timeout``.
        """
        if cls.taken:
            entry, job, queue = cls.taken.popleft()
            cls.last_entry = entry
            return job, queue
        queues = list(queues)
        by_key = {q.key: q for q in queues}
        keys = list(by_key)
        key_bells = [_bell_of_list(k) for k in keys]
        bells = sorted(set(key_bells))
        deadline = None if timeout is None else time.monotonic() + timeout
        silence = True
        while True:
            got = take(connection, cls.inflight, keys, silence, cls.take_limit, key_bells)
            if got:
                for key, job_id in got:
                    queue = by_key[key]
                    cls.taken.append((entry_of(key, job_id), job_for(job_id, queue, connection), queue))
                entry, job, queue = cls.taken.popleft()
                cls.last_entry = entry
                return job, queue
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DequeueTimeout(timeout, keys)
            rang = connection.blpop(bells, max(0.01, min(SAFETY_POLL, left)))
            silence = rang is None  # a ring taken by BLPOP is already silenced
