"""Cassandra on a core of its own, everything else on the other cores (`bench.e2e --pin-cassandra`).

On the development machine Cassandra shares two cores with Kafka, the benchmark and the client under
test, so a client that does more than write (ours also reads and decodes Kafka records) takes CPU that
Cassandra's Paxos would otherwise have. In production Cassandra runs on machines of its own; pinning it to
one core, and the rest to the others, is the nearest layout this machine allows. The services' affinity is
set back when the block ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Every thread of `pid` onto `cpus`. Twice: a thread started by one not pinned yet inherits the old
    affinity, and the second pass catches it (threads started later inherit the new one)."""
    wanted = set(cpus)
    for _ in range(2):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), wanted)
            except (ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
                continue


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
    try:
        pin(cassandra_pid, theirs)
        for pid in pids[1:]:
            pin(pid, rest)
        yield theirs, rest
    finally:
        for pid, cores in before.items():
            try:
                pin(pid, cores)
            except FileNotFoundError:  # the service stopped meanwhile
                continue
