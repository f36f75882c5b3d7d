"""CPU threads for inference: how many cores are free right now, and torch's thread count for a block of work.

Why a measured default (``benchmarks/threads.py``, README "Threads"): torch's CPU kernels run on an
OpenMP team of ``torch.get_num_threads()`` threads, one per core by default, and every parallel
region ends at a barrier. When another process keeps one of the cores busy, the whole team waits at
each barrier for its descheduled member, so two threads on a 2-core machine with one busy process run
*slower* than one thread (issue 19: 21.6 s with 2 threads vs 11.7 s with 1 for 3 min of stereo). The
default, :func:`default_threads`, is therefore the number of cores that are free *now*: the cores
this process may run on (its CPU affinity) minus the cores other processes keep busy, measured from
``/proc/stat`` over a short window, never less than 1 and never more than the process was set to
(``OMP_NUM_THREADS``, ``torch.set_num_threads``).

:func:`torch_threads` sets the count for a block and restores the previous one, so a library call
never leaves the process's setting changed. This module imports torch only inside :func:`torch_threads`.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Iterator

__all__ = ["allowed_cores", "busy_cores", "default_threads", "resolve_threads", "torch_threads", "THREADS_HELP"]

#: the one description of the thread option (``qsep separate --threads``, the API's ``threads=``)
THREADS_HELP = ("CPU threads: a number, or auto (the cores not kept busy by other processes right now, "
                "measured over 0.1 s; at least 1, at most what OMP_NUM_THREADS allows).")

#: how long :func:`busy_cores` watches ``/proc/stat``
SAMPLE_SECONDS = 0.1
#: a core counts as busy when other processes use more than this fraction of it (0.5 + margin: a core
#: busy 60 % of the time still costs a 2-thread team most of its barrier waits)
BUSY_FRACTION = 0.4


def allowed_cores() -> int:
    """The number of CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """``(busy, total)`` jiffies summed over all CPUs from ``/proc/stat``; None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_cores(sample_seconds: float = SAMPLE_SECONDS) -> float:
    """Cores' worth of CPU time other processes used during the last ``sample_seconds`` (0 where unknown).

    The calling process sleeps while it watches, so what it sees is the others' load. The value is
    scaled from the whole machine to the cores this process may use.
    """
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(sample_seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0.0
    fraction = (second[0] - first[0]) / (second[1] - first[1])  # of all the machine's CPUs
    return max(0.0, fraction) * allowed_cores()


#: a measurement of :func:`busy_cores` is reused for this long (a loop of short separations measures once)
REUSE_SECONDS = 2.0
_last: list[float] = []  # [time.monotonic(), busy] of the last measurement


def default_threads(busy: float | None = None, cap: int | None = None) -> int:
    """Threads for torch now: the allowed cores minus the busy ones (see the module doc), at least 1.

    ``busy``: cores kept busy by others (measured by :func:`busy_cores` when None; a measurement is reused
    for :data:`REUSE_SECONDS`). ``cap``: never more than this (e.g. the count the process was set to with
    ``OMP_NUM_THREADS`` or ``torch.set_num_threads``).
    """
    if busy is None:
        now = time.monotonic()
        if not _last or now - _last[0] > REUSE_SECONDS:
            _last[:] = [now, busy_cores()]
        busy = _last[1]
    busy = float(busy)
    if cap is not None:
        return max(1, min(int(cap), default_threads(busy)))
    whole = math.floor(busy + (1 - BUSY_FRACTION))  # busy < 0.4 -> 0 cores taken, 0.4 .. 1.4 -> 1, ...
    return max(1, allowed_cores() - whole)


def resolve_threads(threads: int | str | None) -> int | None:
    """``"auto"`` -> :func:`default_threads`, capped at torch's current count (what ``OMP_NUM_THREADS`` or
    ``torch.set_num_threads`` set); a positive int (or its string) as is; None -> None (leave torch alone).

    Raises:
        ValueError: not ``auto``, None or a positive integer.
    """
    if threads is None:
        return None
    if isinstance(threads, str):
        if threads.strip().lower() == "auto":
            import torch

            return default_threads(cap=torch.get_num_threads())
        try:
            threads = int(threads)
        except ValueError:
            raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, then restore the previous count (None: no change)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
