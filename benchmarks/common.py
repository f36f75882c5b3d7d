"""Shared plumbing for the benchmarks: isolated worker processes, peak RSS, timing, reports.

Each measurement runs in a fresh Python process (``python -m benchmarks.<module> --worker JSON``) so that
its peak resident memory (``ru_maxrss``) belongs to that measurement alone. The worker prints one JSON
line; the parent collects them into ``<out>/<name>.json``, a markdown table ``<out>/<name>.md`` and,
where it makes sense, a plot.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["machine", "peak_rss_mb", "time_it", "run_worker", "write_report", "markdown_table"]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``ru_maxrss``: a child inherits its parent's
    high-water mark through fork + exec, so a worker started by a parent that holds a big
    model would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_it(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median / min wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeats}


def run_worker(module: str, job: dict[str, Any], timeout: float = 7200) -> dict[str, Any]:
    """Run ``python -m module --worker JSON`` and return the JSON line it prints last."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(job)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        return {**job, "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as a markdown table; ``columns`` is ``[(key, header), ...]``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_report(out_dir: Path, name: str, rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]], notes: str = "") -> Path:
    """Write ``name.json`` (rows + machine) and ``name.md`` (table) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    md = f"# {name}\n\nmachine: {json.dumps(machine())}\n\n{markdown_table(rows, columns)}\n\n{notes}\n"
    (out_dir / f"{name}.md").write_text(md)
    print(md)
    return out_dir / f"{name}.md"
