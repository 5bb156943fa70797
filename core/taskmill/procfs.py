"""CPU and memory of a process tree, read from Linux's /proc (the worker resource gauges).

Kept apart from :mod:`taskmill.metrics`: this module knows the kernel's files, that one knows
Prometheus. Off Linux every function answers None and the gauges stay unset.
"""

from __future__ import annotations

import os

__all__ = ["process_tree_usage"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_stat(pid: int) -> tuple[int, float, float, int] | None:
    """(parent pid, own CPU seconds, reaped children's CPU seconds, resident bytes) from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after the last ')'
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        ppid = int(fields[1])
        own = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        reaped = (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS
        rss = int(fields[21]) * _PAGE_SIZE
    except (IndexError, ValueError):
        return None
    return ppid, own, reaped, rss


def process_tree_usage(root: int) -> tuple[float, int, int] | None:
    """CPU seconds, resident bytes (proportional) and process count of ``root`` and its descendants
    (Linux)."""
    stats: dict[int, tuple[int, float, float, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    for name in names:
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                stats[int(name)] = st
    if root not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[0], []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    cpu = stats[root][2] + sum(stats[p][1] for p in tree)
    memory = sum(_proportional(p, stats[p][3]) for p in tree)
    return cpu, memory, len(tree)


def _proportional(pid: int, rss: int) -> int:
    """Proportional resident bytes (pages shared after a fork counted once over the pool), or
    ``rss`` where the kernel has no ``smaps_rollup``."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss
