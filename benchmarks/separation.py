"""Separation throughput and peak memory vs input length, qsep presets and (optionally) HT Demucs.

    python -m benchmarks.separation [--presets resunet_film_small zsass] [--models qsep-starter] [--durations 10 180 1800]
                                     [--rate 44100] [--channels 2] [--threads 2] [--device cpu]
                                     [--segment S] [--overlap F] [--batch-size N] [--repeats 3]
                                     [--queries N] [--one-pass] [--bf16] [--query-encoder] [--name separation] [--out benchmarks/results]

Every (preset, duration) runs in its own process on a file streamed from and to disk
(``Separator.separate_file_condition``; 44.1 kHz stereo unless ``--rate``/``--channels`` say otherwise),
with random weights (speed does not depend on them) and one condition vector, after a 2-s warm-up;
the wall time is the median of ``--repeats`` runs (one run for inputs over 5 minutes); real-time factor
= audio seconds / wall seconds; peak RSS is the process's. ``--query-encoder`` also loads the preset's
HTS-AT audio query encoder (``zsass_2048d``) in the same process and encodes a 10-s example query
in each run, in the order of ``qsep separate`` (encode, free the encoder, load the separator,
separate): the encoding time and the encoder's memory are then included. Model loading is timed
apart (``load_s``). If the
``demucs`` package is installed, HT Demucs (``htdemucs`` architecture, random weights,
``apply_model(shifts=0, split=True, overlap=0.25)``) runs on in-memory audio of ``--demucs-seconds`` in
the same way, for a same-run comparison. Results: ``<out>/<name>.{json,md,png}``.

The input of the issue's ZS-ASS reference figure (60 s of 32 kHz mono, one query, no overlap, query
encoder loaded; the reference cuts 2-s segments, qsep its own default or ``--segment``)::

    python -m benchmarks.separation --presets zsass --durations 60 --rate 32000 --channels 1 \
        --overlap 0 --query-encoder --demucs-seconds 0 --name zsass_reference
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, run_worker, write_report

RATE = 44100
LONG = 300  # seconds: inputs longer than this are timed once


def _write_test_file(path: Path, seconds: float, rate: int = RATE, channels: int = 2) -> None:
    """Band-limited noise + tones, written block by block (never all in memory)."""
    from qsep_core.audio import AudioWriter

    g = torch.Generator().manual_seed(0)
    block = rate * 10
    n = int(seconds * rate)
    with AudioWriter(path, rate, channels, bit_depth="16") as w:
        for start in range(0, n, block):
            m = min(block, n - start)
            t = (torch.arange(m) + start) / rate
            x = 0.1 * torch.randn(channels, m, generator=g) + 0.2 * torch.sin(2 * math.pi * 220 * t)
            w.write(x.clamp(-1, 1))


def _model_folder(path: Path, preset_name: str, query_encoder: bool) -> None:
    """A model folder with random weights: the separator, and the HTS-AT audio query encoder if asked."""
    from separator.checkpoint import Component, save_model
    from qsep_core.config import to_dict
    from separator.models import build_from_config, preset

    cfg = preset(preset_name)
    components = {"separator": Component("query_unet", to_dict(cfg), build_from_config(cfg).state_dict())}
    if query_encoder:
        from sed.config import htsat_config
        from sed.htsat import HTSAT

        enc = htsat_config("zsass_2048d")
        components["audio_encoder"] = Component("htsat", to_dict(enc), HTSAT(enc).state_dict())
    save_model(path, components)


def _qsep_worker(job: dict) -> dict:
    import gc

    from separator.api import Separator
    from separator.query import Query, QueryEncoder
    from qsep_core.threads import resolve_threads

    threads = resolve_threads(job["threads"])  # "auto": qsep's default, measured now
    torch.set_num_threads(threads)
    rate, channels = job.get("rate", RATE), job.get("channels", 2)
    kwargs = {k: job[k] for k in ("segment", "overlap", "batch_size") if job.get(k) is not None}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, warm, query = tmp / "in.wav", tmp / "warm.wav", tmp / "query.wav"
        _write_test_file(src, job["seconds"], rate, channels)
        _write_test_file(warm, 2.0, rate, channels)
        _write_test_file(query, 10.0, 32000, 1)

        def run(path: Path) -> tuple[float, dict]:
            """Seconds to encode the query (if asked) and separate ``path``, in the order of ``qsep
            separate``: encode with the query encoder alone in memory, free it, load the separator,
            separate. Loading is timed apart (``loads``)."""
            seconds = 0.0
            cond = torch.randn(Separator.open_model(job["model"]).component_config("separator")["cond_dim"],
                               generator=torch.Generator().manual_seed(1))
            if job.get("query_encoder"):
                t0 = time.perf_counter()
                encoder = QueryEncoder.from_model(job["model"], device=job["device"])
                encoder.audio  # loads the HTS-AT
                loads.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cond = encoder.encode(Query.build(audio=[query])).condition
                seconds += time.perf_counter() - t0
                del encoder
                gc.collect()
            t0 = time.perf_counter()
            sep = Separator.from_pretrained(job["model"], device=job["device"], bf16=job.get("bf16", False))
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n_q = job.get("queries", 1)
            if job.get("one_pass"):  # every query in one pass, as `qsep separate` does
                sep.separate_file_conditions(path, [(tmp / f"t{q}.wav", tmp / f"r{q}.wav") for q in range(n_q)],
                                             [cond.roll(q) for q in range(n_q)], **kwargs)
            else:  # one pass per query (before issue 19)
                for q in range(n_q):
                    sep.separate_file_condition(path, tmp / f"t{q}.wav", tmp / f"r{q}.wav", cond.roll(q), **kwargs)
            seconds += time.perf_counter() - t0
            facts = {"overlap": sep.overlap if job.get("overlap") is None else job["overlap"],
                     "params_m": sum(p.numel() for p in sep.model.parameters()) / 1e6,
                     "segment_s": sep._chunking(rate, int(job["seconds"] * rate), job.get("segment"), None, None)[0] / rate}
            del sep  # the next run loads its own, as a new `qsep separate` would
            gc.collect()
            return seconds, facts

        run(warm)
        repeats = 1 if job["seconds"] > LONG else job.get("repeats", 3)
        times = []
        for _ in range(repeats):
            seconds, facts = run(src)
            times.append(seconds)
        wall = statistics.median(times)
    return {**job, **facts, "threads_used": threads, "wall_s": wall, "times_s": times, "runs": repeats, "rtf": job["seconds"] / wall, "peak_rss_mb": peak_rss_mb(),
            "load_s": statistics.median(loads)}


def _demucs_worker(job: dict) -> dict:
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs

    from qsep_core.threads import resolve_threads

    torch.set_num_threads(resolve_threads(job["threads"]))
    model = HTDemucs(sources=["drums", "bass", "other", "vocals"]).eval()
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(1, 2, int(job["seconds"] * RATE), generator=g)
    with torch.inference_mode():
        apply_model(model, x[..., : RATE * 5], shifts=0, split=True, overlap=0.25, progress=False)  # warm-up
        times = []
        for _ in range(1 if job["seconds"] > LONG else job.get("repeats", 3)):
            t0 = time.perf_counter()
            apply_model(model, x, shifts=0, split=True, overlap=0.25, progress=False)
            times.append(time.perf_counter() - t0)
        wall = statistics.median(times)
    return {**job, "wall_s": wall, "runs": len(times), "rtf": job["seconds"] / wall, "peak_rss_mb": peak_rss_mb(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def _plot(rows: list[dict], path: Path) -> None:
    from qsep_core.extras import require

    matplotlib = require("matplotlib", "plots", "the benchmark figure")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["preset"] for r in rows}):
        rs = sorted((r for r in rows if r["preset"] == name and "error" not in r), key=lambda r: r["seconds"])
        if not rs:
            continue
        label = "HT Demucs (all 4 stems)" if name == "htdemucs" else name
        a.plot([r["seconds"] / 60 for r in rs], [r["peak_rss_mb"] for r in rs], "o-", label=label)
        b.plot([r["seconds"] / 60 for r in rs], [r["rtf"] for r in rs], "o-", label=label)
    a.set(xlabel="input length (min), 44.1 kHz stereo", ylabel="peak RSS (MB)", title="memory vs length", xscale="log", ylim=(0, None))
    b.set(xlabel="input length (min), 44.1 kHz stereo", ylabel="x real time (one query)", title="speed vs length", xscale="log", yscale="log")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--presets", nargs="*", default=["resunet_film_small", "zsass"])
    p.add_argument("--models", nargs="*", default=[], help="also time these trained models (folder or name, e.g. qsep-starter)")
    p.add_argument("--durations", nargs="+", type=float, default=[10, 180, 1800])
    p.add_argument("--threads", default="2", help="torch threads: a number or auto (qsep's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--segment", type=float, default=None, help="seconds (default: the API's)")
    p.add_argument("--overlap", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--rate", type=int, default=RATE, help="sample rate of the test file")
    p.add_argument("--channels", type=int, default=2, help="channels of the test file")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per input (median; 1 above 5 minutes)")
    p.add_argument("--queries", type=int, default=1, help="queries per input (4: the four MUSDB stems)")
    p.add_argument("--one-pass", action="store_true", help="all queries in one pass (qsep separate's way) instead of one pass each")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU, or a CPU with AVX512-BF16/AMX)")
    p.add_argument("--query-encoder", action="store_true", help="load the HTS-AT audio query encoder and encode a query per run")
    p.add_argument("--demucs-seconds", type=float, default=60, help="0 to skip HT Demucs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="separation", help="report file name (without extension)")
    p.add_argument("--combine", nargs="+", type=Path, default=None, metavar="JSON",
                   help="only plot these earlier results together into <out>/<name>.png")
    a = p.parse_args(argv)
    if a.combine:
        rows = [r for path in a.combine for r in json.loads(path.read_text())["rows"]]
        a.out.mkdir(parents=True, exist_ok=True)
        _plot([r for r in rows if r.get("rate", RATE) == RATE and r.get("channels", 2) == 2 and r.get("queries", 1) == 1],
              a.out / f"{a.name}.png")
        print(a.out / f"{a.name}.png")
        return
    if a.worker:
        job = json.loads(a.worker)
        print(json.dumps(_demucs_worker(job) if job["preset"] == "htdemucs" else _qsep_worker(job)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as models:  # written here, so the workers' peak RSS is loading + running only
        from qsep_core.hub import resolve_model

        targets = [(name, Path(models) / name) for name in a.presets] + [(m, resolve_model(m)) for m in a.models]
        for name, model in targets:
            if name in a.presets:
                _model_folder(model, name, a.query_encoder)
            for sec in a.durations:
                job = {"preset": name, "model": str(model), "seconds": sec, "threads": a.threads, "device": a.device,
                       "rate": a.rate, "channels": a.channels, "repeats": a.repeats, "query_encoder": a.query_encoder, "bf16": a.bf16, "queries": a.queries, "one_pass": a.one_pass,
                       "segment": a.segment, "overlap": a.overlap, "batch_size": a.batch_size}
                rows.append(run_worker("benchmarks.separation", job))
                print(rows[-1], file=sys.stderr)
    if a.demucs_seconds > 0:
        try:
            import demucs.apply  # noqa: F401 - only to see whether it is installed

            rows.append(run_worker("benchmarks.separation", {"preset": "htdemucs", "seconds": a.demucs_seconds,
                                                             "threads": a.threads, "device": a.device,
                                                             "repeats": a.repeats}))
        except ImportError:
            print("demucs is not installed (pip install demucs): skipping the HT Demucs comparison", file=sys.stderr)
    cols = [("preset", "model"), ("queries", "queries"), ("one_pass", "one pass"), ("bf16", "bf16"), ("seconds", "input s"), ("segment_s", "segment s"), ("overlap", "overlap"),
            ("wall_s", "wall s"), ("runs", "runs"), ("rtf", "x real time"), ("peak_rss_mb", "peak RSS MB"),
            ("params_m", "params M"), ("error", "error")]
    notes = (f"{a.rate} Hz, {a.channels} channel(s), {a.queries} quer{'y' if a.queries == 1 else 'ies'}{' (HTS-AT audio query encoded per run)' if a.query_encoder else ''}, "
             "random weights; file streamed from/to disk; median of the runs after a 2-s warm-up. "
             "HT Demucs: in-memory, all 4 stems, same threads.")
    write_report(a.out, a.name, rows, cols, notes=notes)
    _plot(rows, a.out / f"{a.name}.png")


if __name__ == "__main__":
    main()
