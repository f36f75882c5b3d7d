"""Separation throughput and peak memory vs input length, qsep presets and (optionally) HT Demucs.

    python -m benchmarks.separation [--presets resunet_film_small zsass] [--durations 10 180 1800]
                                     [--threads 2] [--device cpu] [--out benchmarks/results]

Every (preset, duration) runs in its own process on a 44.1 kHz stereo file streamed from and to disk
(``Separator.separate_file_condition``), with random weights (speed does not depend on them) and one
condition vector; real-time factor = audio seconds / wall seconds. If the ``demucs`` package is
installed, HT Demucs (``htdemucs`` architecture, random weights, ``apply_model(shifts=0, split=True,
overlap=0.25)``) runs on the same in-memory audio in the same way, for a same-run comparison. Results:
``<out>/separation.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, run_worker, write_report

RATE = 44100


def _write_test_file(path: Path, seconds: float) -> None:
    """Band-limited noise + tones, written block by block (never all in memory)."""
    from separator.audio import AudioWriter

    g = torch.Generator().manual_seed(0)
    block = RATE * 10
    n = int(seconds * RATE)
    with AudioWriter(path, RATE, 2, bit_depth="16") as w:
        for start in range(0, n, block):
            m = min(block, n - start)
            t = (torch.arange(m) + start) / RATE
            x = 0.1 * torch.randn(2, m, generator=g) + 0.2 * torch.sin(2 * math.pi * 220 * t)
            w.write(x.clamp(-1, 1))


def _qsep_worker(job: dict) -> dict:
    from separator.api import Separator
    from separator.checkpoint import Component, save_model
    from separator.models import build_from_config, preset

    torch.set_num_threads(job["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = preset(job["preset"])
        model = build_from_config(cfg)
        from separator.config import to_dict

        save_model(tmp / "m", {"separator": Component("query_unet", to_dict(cfg), model.state_dict())})
        del model
        src = tmp / "in.wav"
        _write_test_file(src, job["seconds"])
        sep = Separator.from_pretrained(tmp / "m", device=job["device"])
        cond = torch.randn(cfg.cond_dim, generator=torch.Generator().manual_seed(1))
        kwargs = {k: job[k] for k in ("segment", "overlap", "batch_size") if job.get(k) is not None}
        base_rss = peak_rss_mb()
        t0 = time.perf_counter()
        sep.separate_file_condition(src, tmp / "t.wav", tmp / "r.wav", cond, **kwargs)
        wall = time.perf_counter() - t0
    return {**job, "wall_s": wall, "rtf": job["seconds"] / wall, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base_rss,
            "params_m": sum(p.numel() for p in sep.model.parameters()) / 1e6}


def _demucs_worker(job: dict) -> dict:
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    torch.set_num_threads(job["threads"])
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"]).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, 2, int(job["seconds"] * RATE), generator=g)
    with torch.inference_mode():
        apply_model(model, x[..., : RATE * 5], shifts=0, split=True, overlap=0.25, progress=False)  # warm-up
        t0 = time.perf_counter()
        apply_model(model, x, shifts=0, split=True, overlap=0.25, progress=False)
        wall = time.perf_counter() - t0
    return {**job, "wall_s": wall, "rtf": job["seconds"] / wall, "peak_rss_mb": peak_rss_mb(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["preset"] for r in rows}):
        rs = sorted((r for r in rows if r["preset"] == name and "error" not in r), key=lambda r: r["seconds"])
        if not rs:
            continue
        a.plot([r["seconds"] / 60 for r in rs], [r["peak_rss_mb"] for r in rs], "o-", label=name)
        b.plot([r["seconds"] / 60 for r in rs], [r["rtf"] for r in rs], "o-", label=name)
    a.set(xlabel="input length (min)", ylabel="peak RSS (MB)", title="memory vs length", xscale="log")
    b.set(xlabel="input length (min)", ylabel="x real time", title="speed vs length", xscale="log")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--presets", nargs="+", default=["resunet_film_small", "zsass"])
    p.add_argument("--durations", nargs="+", type=float, default=[10, 180, 1800])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--segment", type=float, default=None, help="seconds (default: the API's)")
    p.add_argument("--overlap", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--demucs-seconds", type=float, default=60, help="0 to skip HT Demucs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="separation", help="report file name (without extension)")
    a = p.parse_args(argv)
    if a.worker:
        job = json.loads(a.worker)
        print(json.dumps(_demucs_worker(job) if job["preset"] == "htdemucs" else _qsep_worker(job)))
        return
    rows = []
    for name in a.presets:
        for sec in a.durations:
            job = {"preset": name, "seconds": sec, "threads": a.threads, "device": a.device,
                   "segment": a.segment, "overlap": a.overlap, "batch_size": a.batch_size}
            rows.append(run_worker("benchmarks.separation", job))
            print(rows[-1], file=sys.stderr)
    if a.demucs_seconds > 0:
        try:
            import demucs.apply  # noqa: F401 - only to see whether it is installed

            rows.append(run_worker("benchmarks.separation", {"preset": "htdemucs", "seconds": a.demucs_seconds,
                                                             "threads": a.threads, "device": a.device}))
        except ImportError:
            print("demucs is not installed (pip install demucs): skipping the HT Demucs comparison", file=sys.stderr)
    cols = [("preset", "model"), ("seconds", "input s"), ("wall_s", "wall s"), ("rtf", "x real time"),
            ("peak_rss_mb", "peak RSS MB"), ("params_m", "params M"), ("error", "error")]
    write_report(a.out, a.name, rows, cols, notes="44.1 kHz stereo, one query, random weights; file streamed from/to disk.")
    _plot(rows, a.out / f"{a.name}.png")


if __name__ == "__main__":
    main()
