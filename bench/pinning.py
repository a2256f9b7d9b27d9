"""Cassandra on a core of its own; Kafka, the benchmark and the processes it starts on the other cores
(`bench.e2e --pin-cassandra`).

On the development machine Cassandra shares two cores with Kafka, the benchmark and the client under
test, so a client that does more than write (ours also reads and decodes Kafka records) takes CPU that
Cassandra's Paxos would otherwise have. In production Cassandra runs on machines of its own; pinning it to
one core, and the rest to the others, is the nearest layout this machine allows (the JVMs still sized their
thread pools for every core when they started). The services' affinity is set back when the block ends,
on SIGTERM too; a benchmark killed outright leaves them pinned until the stack restarts, which `narrowed`
detects.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

_MAX_PASSES = 10


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Every thread of `pid` onto `cpus`. A thread started meanwhile by one not pinned yet inherits the old
    affinity, so passes repeat until every thread has the new one (threads started later inherit it)."""
    wanted = set(cpus)
    for _ in range(_MAX_PASSES):
        changed = False
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                if os.sched_getaffinity(int(tid)) != wanted:
                    os.sched_setaffinity(int(tid), wanted)
                    changed = True
            except (ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
                continue
        if not changed:
            return


def narrowed(pids: dict[str, int]) -> list[str]:
    """The named processes that may not use every core this one may (pinned by an earlier run, say)."""
    ours = os.sched_getaffinity(0)
    return [name for name, pid in pids.items() if not os.sched_getaffinity(pid) >= ours]


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def cassandra_alone(cassandra_pid: int, others: Iterable[int]) -> Iterator[tuple[set[int], set[int]]]:
    """Cassandra on the last core this process may use; `others` and this process on the rest. Yields
    (Cassandra's cores, everything else's)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError(f"Cassandra needs a core of its own and something else one more: {len(cpus)} core(s) here")
    theirs, rest = {cpus[-1]}, set(cpus[:-1])
    pids = [cassandra_pid, *others, os.getpid()]
    before = {pid: os.sched_getaffinity(pid) for pid in pids}
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that the block's end still runs
    try:
        pin(cassandra_pid, theirs)
        for pid in pids[1:]:
            pin(pid, rest)
        yield theirs, rest
    finally:
        for pid, cores in before.items():
            try:
                pin(pid, cores)
            except OSError as exc:  # the others are still set back
                print(f"could not set back the affinity of pid {pid}: {exc!r}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
