"""Cassandra's CPU per guarded write, with and without a co-tenant on its machine.

Here Cassandra shares two cores with Kafka and with the client under test. A client that does more than
write (ours also reads and decodes Kafka records) keeps the cores busier; whether, and by how much,
Cassandra then spends more CPU on each guarded write is what this phase measures, without our loop in
it: (a) and (b) on the same rows, in alternating rounds alone and beside a co-tenant, a process that keeps
`cores` of CPU busy (busy-loops, then sleeps, every 8 ms) and talks to neither Kafka nor Cassandra. In
production Cassandra has machines of its own, and the co-tenant's term is not there.

    .venv/bin/python -m bench.e2e --phases contention
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from statistics import mean

from bench.anchors import Measured

_BURN = """
import sys, time
busy, idle = float(sys.argv[1]), float(sys.argv[2])
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        pass
    time.sleep(idle)
"""


@contextmanager
def co_tenant(cores: float, period_s: float = 0.008) -> Iterator[None]:
    """A process keeping about `cores` (0 to 1) of one core busy while the block runs."""
    if cores <= 0:
        yield
        return
    busy = period_s * min(cores, 1.0)
    proc = subprocess.Popen([sys.executable, "-c", _BURN, str(busy), str(period_s - busy)])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def contention(anchors: Callable[[str], tuple[Measured, Measured]], rounds: int, cores: float) -> None:
    """`anchors(name)` runs (a) and (b) once on fresh keyspaces; prints a row per run and the means."""
    print("| round | co-tenant cores | (a) writes/s | (a) CPU ms per write: client / Cassandra | (b) writes/s "
          "| (b) CPU ms per write: client / Cassandra |")
    print("|---:|---:|---:|---|---:|---|")
    cassandra: dict[tuple[str, float], list[float]] = {}
    for round_ in range(1, rounds + 1):
        for tenant in (0.0, cores):
            with co_tenant(tenant):
                alone, raw = anchors(f"contend{round_}_{int(tenant * 1000)}")
            for label, measured in (("a", alone), ("b", raw)):
                cassandra.setdefault((label, tenant), []).append(measured.ms_per_row("cassandra"))
            print(f"| {round_} | {tenant:.3f} | {alone.rate:,.0f} | {alone.ms_per_row('client'):.3f} / "
                  f"{alone.ms_per_row('cassandra'):.3f} | {raw.rate:,.0f} | {raw.ms_per_row('client'):.3f} / "
                  f"{raw.ms_per_row('cassandra'):.3f} |", flush=True)
    print()
    for label in ("a", "b"):
        without, beside = mean(cassandra[(label, 0.0)]), mean(cassandra[(label, cores)])
        print(f"({label}) Cassandra CPU per guarded write, mean of {rounds}: {without:.3f} ms alone, {beside:.3f} ms "
              f"beside a co-tenant of {cores:.3f} cores ({beside - without:+.3f} ms)")
    print()
