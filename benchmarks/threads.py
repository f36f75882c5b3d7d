"""Separation speed on a busy machine: thread counts and OpenMP wait policies, idle and with busy processes.

    python -m benchmarks.threads [--seconds 30] [--busy 0 1] [--threads 1 2 auto] [--policies default passive]
                                 [--demucs-seconds 10] [--repeats 2] [--name threads] [--out benchmarks/results]

For each number of competing busy-loop processes (``--busy``: pure-Python ``while True`` loops, one core
each, started before and stopped after that group of runs), every (threads, OpenMP wait policy) runs
``benchmarks.separation``'s qsep worker (``resunet_film_small``, random weights, one query, 44.1 kHz
stereo streamed from and to disk) in its own process, and HT Demucs (if installed) runs with the same
threads, so the qsep / Demucs ratio is measured under the same load. ``auto`` is qsep's default
(:func:`qsep_core.threads.default_threads`, resolved inside the worker while the busy loops run);
``passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` for the worker (threads sleep at barriers instead of
spinning). Each row also records the cores the others kept busy just before it (``busy_cores``),
since on a shared machine "idle" is only as idle as the neighbours allow. Results:
``<out>/<name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_report


def _worker(job: dict, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.separation", "--worker", json.dumps(job)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env={**os.environ, **env})
    if out.returncode != 0:
        return {**job, "error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30, help="input length (44.1 kHz stereo)")
    p.add_argument("--busy", nargs="+", type=int, default=[0, 1], help="competing busy processes per group")
    p.add_argument("--threads", nargs="+", default=["1", "2", "auto"])
    p.add_argument("--policies", nargs="+", default=["default", "passive"], choices=["default", "passive", "active"])
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--demucs-seconds", type=float, default=10, help="0 to skip HT Demucs")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="threads")
    a = p.parse_args(argv)

    from benchmarks.separation import _model_folder
    from qsep_core.threads import busy_cores

    try:
        import demucs.apply  # noqa: F401 - only to see whether it is installed
        have_demucs = a.demucs_seconds > 0
    except ImportError:
        have_demucs = False
        print("demucs is not installed (pip install demucs): no HT Demucs rows", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resunet_film_small"
        _model_folder(model, "resunet_film_small", False)
        for n_busy in a.busy:
            loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n_busy)]
            try:
                for threads in a.threads:
                    for policy in a.policies:
                        env = {} if policy == "default" else {"OMP_WAIT_POLICY": policy.upper()}
                        before = busy_cores(0.5)
                        job = {"preset": "resunet_film_small", "model": str(model), "seconds": a.seconds,
                               "threads": threads, "device": "cpu", "repeats": a.repeats, "queries": a.queries}
                        row = _worker(job, env)
                        rows.append({**row, "busy": n_busy, "policy": policy, "busy_cores": before})
                        print(rows[-1], file=sys.stderr)
                    if have_demucs and threads != "auto":
                        before = busy_cores(0.5)
                        row = _worker({"preset": "htdemucs", "seconds": a.demucs_seconds, "threads": int(threads),
                                       "device": "cpu", "repeats": a.repeats}, {})
                        rows.append({**row, "busy": n_busy, "policy": "default", "busy_cores": before})
                        print(rows[-1], file=sys.stderr)
            finally:
                for loop in loops:
                    loop.kill()
                    loop.wait()
    cols = [("busy", "busy procs"), ("busy_cores", "cores busy before"), ("preset", "model"), ("threads", "threads"),
            ("threads_used", "threads used"), ("policy", "OMP wait"), ("seconds", "input s"), ("wall_s", "wall s"),
            ("rtf", "x real time"), ("error", "error")]
    notes = (f"{a.seconds:g} s of 44.1 kHz stereo, {a.queries} quer{'y' if a.queries == 1 else 'ies'}, random weights; "
             "HT Demucs all 4 stems in memory; median of the runs after a warm-up.")
    write_report(a.out, a.name, rows, cols, notes=notes)


if __name__ == "__main__":
    main()
