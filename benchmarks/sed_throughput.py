"""HTS-AT throughput: ten-second clips per second at several batch sizes.

    python -m benchmarks.sed_throughput [--preset audioset] [--batch-sizes 1 8 32] [--threads 2]
                                        [--device cpu|cuda] [--dtypes float32 bf16] [--out benchmarks/results]

Random weights (speed does not depend on them), eval mode, ``torch.inference_mode``; median of 3 timed runs
after one warm-up. bf16 is autocast, on CUDA or on a CPU with native bf16 (AVX512-BF16 / AMX). Results: ``<out>/sed_throughput.{json,md}``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, run_worker, time_it, write_report


def measure(preset: str, batch: int, device: str, dtype: str, repeats: int = 3) -> dict:
    from sed.config import htsat_config
    from sed.htsat import HTSAT

    cfg = htsat_config(preset)
    model = HTSAT(cfg).eval().to(device)
    x = torch.randn(batch, cfg.clip_samples, generator=torch.Generator().manual_seed(0)).mul(0.1).to(device)
    dev_type = torch.device(device).type
    ctx = torch.autocast(dev_type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def run() -> None:
        with torch.inference_mode(), ctx:
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    t = time_it(run, repeats=repeats)
    row = {"preset": preset, "batch": batch, "device": device, "dtype": dtype, **t,
           "clips_per_s": batch / t["median_s"], "peak_rss_mb": peak_rss_mb()}
    if device.startswith("cuda"):
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="audioset")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        job = json.loads(a.worker)
        torch.set_num_threads(job["threads"])
        print(json.dumps(measure(job["preset"], job["batch"], job["device"], job["dtype"], job["repeats"])))
        return
    torch.set_num_threads(a.threads)
    if "bf16" in a.dtypes:
        from separator.api import check_bf16

        check_bf16(torch.device(a.device))  # emulated bf16 on an old CPU is not worth a number
    # one process per measurement, so each peak RSS is its own
    rows = [run_worker("benchmarks.sed_throughput", {"preset": a.preset, "batch": b, "device": a.device, "dtype": d,
                                                     "repeats": a.repeats, "threads": a.threads})
            for d in a.dtypes for b in a.batch_sizes]
    cols = [("preset", "preset"), ("device", "device"), ("dtype", "dtype"), ("batch", "batch"),
            ("clips_per_s", "10-s clips/s"), ("median_s", "s per batch"), ("peak_rss_mb", "peak RSS MB")]
    write_report(a.out, "sed_throughput", rows, cols, notes="HTS-AT forward on 10-s clips at 32 kHz, random weights.")


if __name__ == "__main__":
    main()
