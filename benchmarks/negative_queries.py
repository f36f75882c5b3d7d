"""Negative queries ("A but not B") vs the positive query alone, on synthetic two-source mixtures.

    python -m benchmarks.negative_queries --model MODEL_DIR --corpus CORPUS_DIR
        [--query-kind audio|text|label] [--mixtures-per-pair 4] [--seconds 4] [--snr 0]
        [--strengths 0.25 0.5 1.0] [--seed 0] [--device cpu] [--out benchmarks/results]

    python -m benchmarks.negative_queries --model MODEL_DIR --synthetic   # toy corpus (smoke run)

Corpus: ``CORPUS_DIR/<class name>/*.wav|flac|...`` (one folder per class, >= 2 files each). The first
file of each class (sorted) is that class's audio query example and is never mixed; the others are cut
into ``--seconds`` crops. For every ordered pair of classes (A, B) and every mixture, the mixture is
``a + b`` with ``b`` scaled to ``--snr`` dB below ``a`` (RMS). The target is A:

* ``none``: condition of the query for A alone;
* ``subtract@beta`` / ``reject@beta``: the query for A with B as a negative (see
  :mod:`separator.query.compose` for the two methods).

A query is the class's example file (``audio``), or its folder name as text (``text``, needs a text
projection in the model) or as a label (``label``, the model's label bank).

Reported per method: mean SI-SDRi of the estimate of A (dB), its change vs ``none`` (paired, same
mixtures), the fraction of mixtures it improves, and the mean SI-SDR of the estimate against B (how
much of B leaks in: lower is better). Results: ``<out>/negative_queries.{json,md}``.

The model must hold a ``separator`` component (``query_unet``) and the query encoders the chosen kind
needs (``htsat`` for audio, ``text_projection`` for text, ``label_bank`` for labels).

Measured (2026-11, 2 shared CPU cores; toy setup of ``benchmarks/negative_queries_toy.py``: 5 synthetic
classes, random tiny HTS-AT as query encoder, ``resunet_film_small`` with channels [8,16,32,64] trained
200 steps, audio queries, 60 mixtures at 0 dB; no text projection or label bank, so the origin is 0):

=================  ==========================  ==========================
method             run A: SI-SDRi (Δ, better)   run B: SI-SDRi (Δ, better)
=================  ==========================  ==========================
none               8.8 dB                      12.3 dB
subtract@0.25      19.0 (+10.2, 83 %)          14.7 (+2.4, 55 %)
subtract@0.5       21.0 (+12.2, 82 %)          14.9 (+2.5, 45 %)
subtract@1         -5.0 (-13.7, 33 %)          0.0 (-12.3, 20 %)
reject@0.5         21.1 (+12.4, 82 %)          15.0 (+2.6, 50 %)
reject@1           -0.9 (-9.7, 45 %)           3.2 (-9.2, 30 %)
=================  ==========================  ==========================

Runs A and B differ only in float rounding of the data (thread count); the separator's validation SI-SDRi
was 12.4 dB (A) and 16.5 dB (B). So: a small beta helps on average, by an amount that depends a lot on
how good the positive query alone already is, and not on every mixture; beta = 1 pushes the condition
out of the distribution the separator was trained on and breaks it. Not yet measured on a real model.
"""
from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import write_report


def _synthetic_corpus(folder: Path, rate: int, seconds: float, per_class: int, seed: int) -> Path:
    """Toy classes (tones and noise bands) written as files: a smoke corpus, not a quality benchmark."""
    from qsep_core import audio as audio_io

    g = torch.Generator().manual_seed(seed)
    n = int(seconds * rate)
    t = torch.arange(n) / rate

    def band(lo: float, hi: float) -> torch.Tensor:
        spec = torch.fft.rfft(torch.randn(n, generator=g))
        f = torch.fft.rfftfreq(n, 1 / rate)
        spec[(f < lo) | (f > hi)] = 0
        x = torch.fft.irfft(spec, n)
        return 0.3 * x / x.abs().max()

    recipes = {
        "low hum": lambda: 0.4 * torch.sin(2 * math.pi * (110 + 5 * float(torch.randn(1, generator=g))) * t),
        "whistle": lambda: 0.4 * torch.sin(2 * math.pi * (2500 + 50 * float(torch.randn(1, generator=g))) * t),
        "hiss": lambda: band(4000, min(12000, rate / 2 - 100)),
        "rumble": lambda: band(30, 200),
    }
    for name, make in recipes.items():
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            audio_io.save(d / f"{i:02d}.wav", make()[None], rate, bit_depth="32f")
    return folder


def _classes(corpus: Path) -> dict[str, list[Path]]:
    from qsep_core.audio import is_audio_path

    out = {}
    for d in sorted(p for p in corpus.iterdir() if p.is_dir()):
        files = sorted(p for p in d.rglob("*") if p.is_file() and is_audio_path(p))
        if len(files) >= 2:
            out[d.name] = files
    if len(out) < 2:
        sys.exit(f"{corpus}: need at least 2 class folders with >= 2 audio files each")
    return out


def _crop(path: Path, rate: int, seconds: float, g: torch.Generator) -> torch.Tensor:
    from qsep_core import audio as audio_io

    wav, _ = audio_io.load(path, sample_rate=rate, channels=1)
    n = int(seconds * rate)
    x = wav[0]
    if x.numel() < n:
        x = torch.nn.functional.pad(x, (0, n - x.numel()))
    start = int(torch.randint(x.numel() - n + 1, (1,), generator=g))
    return x[start : start + n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--synthetic", action="store_true", help="use a toy corpus of tones / noise bands")
    ap.add_argument("--query-kind", choices=("audio", "text", "label"), default="audio")
    ap.add_argument("--mixtures-per-pair", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--snr", type=float, default=0.0, help="interferer level below the target, dB")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    from separator.api import Separator
    from qsep_core.metrics import si_sdr
    from separator.query.compose import Query, QueryEncoder

    sep = Separator.from_pretrained(args.model, device=args.device)
    rate = sep.sample_rate
    encoder = QueryEncoder.from_model(args.model, device=args.device)
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        corpus = _synthetic_corpus(Path(tmp.name), rate, max(args.seconds, 2.0), 4, args.seed)
    elif args.corpus is None:
        sys.exit("give --corpus DIR (one folder per class) or --synthetic")
    else:
        corpus = args.corpus
    classes = _classes(corpus)

    def query(name: str, negative: str | None = None, strength: float = 0.0, method: str = "subtract") -> Query:
        kw = {"audio": {"audio": classes[name][0]}, "text": {"text": name}, "label": {"label": name}}[args.query_kind]
        neg: dict = {}
        if negative is not None:
            neg = {"audio": {"negative_audio": classes[negative][0]}, "text": {"negative": negative},
                   "label": {"negative_label": negative}}[args.query_kind]
        return Query.build(**kw, **neg, negative_strength=strength, negative_method=method)

    methods = [("none", None, 0.0)] + [(f"{m}@{b:g}", m, b) for m in ("subtract", "reject") for b in args.strengths]
    g = torch.Generator().manual_seed(args.seed)
    per_method: dict[str, list[tuple[float, float]]] = {m: [] for m, _, _ in methods}
    cond_cache: dict[tuple, torch.Tensor] = {}
    for a, b in itertools.permutations(classes, 2):
        for _ in range(args.mixtures_per_pair):
            fa = classes[a][1 + int(torch.randint(len(classes[a]) - 1, (1,), generator=g))]
            fb = classes[b][1 + int(torch.randint(len(classes[b]) - 1, (1,), generator=g))]
            sa, sb = _crop(fa, rate, args.seconds, g), _crop(fb, rate, args.seconds, g)
            gain = sa.pow(2).mean().sqrt() / sb.pow(2).mean().sqrt().clamp(min=1e-8) * 10 ** (-args.snr / 20)
            sb = sb * gain
            mix = sa + sb
            base = float(si_sdr(estimate=mix, reference=sa))
            for name, method, beta in methods:
                key = (a, b if method else None, method, beta)
                if key not in cond_cache:
                    q = query(a) if method is None else query(a, b, beta, method)
                    cond_cache[key] = encoder.encode(q).condition
                est = sep.separate_condition(mix[None], rate, cond_cache[key]).target[0]
                per_method[name].append((float(si_sdr(estimate=est, reference=sa)) - base,
                                         float(si_sdr(estimate=est, reference=sb))))
    rows = []
    ref = [x for x, _ in per_method["none"]]
    for name, _, _ in methods:
        vals = per_method[name]
        d = [x - r for (x, _), r in zip(vals, ref)]
        rows.append({
            "method": name,
            "si_sdri": statistics.fmean(x for x, _ in vals),
            "delta_vs_none": statistics.fmean(d),
            "improved_fraction": sum(v > 0 for v in d) / len(d),
            "si_sdr_vs_interferer": statistics.fmean(y for _, y in vals),
            "n": len(vals),
        })
    cols = [("method", "method"), ("si_sdri", "SI-SDRi (dB)"), ("delta_vs_none", "Δ vs none (dB)"),
            ("improved_fraction", "improved"), ("si_sdr_vs_interferer", "SI-SDR vs interferer (dB, lower better)"), ("n", "n")]
    notes = (f"model {args.model}; corpus {'synthetic' if args.synthetic else corpus}; query kind {args.query_kind}; "
             f"{len(classes)} classes; {args.seconds:g} s crops; interferer {args.snr:g} dB below the target.")
    write_report(args.out, "negative_queries", rows, cols, notes)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
