"""Separator training-step throughput (forward + L1 loss + backward + Adam step) for the presets.

    python -m benchmarks.train_step [--presets resunet_film_small resunet_film_base zsass] [--batch 8]
                                    [--seconds 2] [--device cpu|cuda] [--bf16] [--threads 2]

Reports training samples (2-s mixtures) per second, median of 3 steps after one warm-up, and the achieved
FLOP/s from a FLOP count of one training step (``torch.utils.flop_counter``); with ``--peak-tflops`` also
the fraction of the device's peak (H100 SXM dense bf16: 989; 2 CPU threads fp32 GEMM here: ~0.19).
``--bf16`` autocasts on CUDA or on a CPU with native bf16. Results: ``<out>/train_step.{json,md}``.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, time_it, write_report


def measure(preset: str, batch: int, seconds: float, device: str, bf16: bool, peak_tflops: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from separator.models import build_preset

    model = build_preset(preset).to(device).train()
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    n = int(seconds * cfg.sample_rate)
    mix = (0.1 * torch.randn(batch, 1, n, generator=g)).to(device)
    tgt = (0.05 * torch.randn(batch, 1, n, generator=g)).to(device)
    cond = torch.randn(batch, cfg.cond_dim, generator=g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ctx = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with ctx:
            est = model(mix, cond)
        loss = (est.float() - tgt).abs().mean()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    t = time_it(step, repeats=3)
    row = {"preset": preset, "batch": batch, "seconds": seconds, "device": device, "bf16": bf16, **t,
           "samples_per_s": batch / t["median_s"], "gflop_per_step": flops / 1e9,
           "achieved_tflops": flops / t["median_s"] / 1e12, "peak_rss_mb": peak_rss_mb()}
    if peak_tflops:
        row["fraction_of_peak"] = row["achieved_tflops"] / peak_tflops
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["resunet_film_small", "resunet_film_base", "zsass"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (e.g. 989 for H100 SXM dense bf16)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = [measure(name, a.batch, a.seconds, a.device, a.bf16, a.peak_tflops) for name in a.presets]
    cols = [("preset", "preset"), ("device", "device"), ("bf16", "bf16"), ("batch", "batch"),
            ("samples_per_s", "2-s samples/s"), ("gflop_per_step", "GFLOP/step"), ("achieved_tflops", "TFLOP/s"),
            ("fraction_of_peak", "of peak"), ("peak_rss_mb", "peak RSS MB")]
    write_report(a.out, "train_step", rows, cols, notes="One optimisation step: forward, L1 loss, backward, Adam.")


if __name__ == "__main__":
    main()
