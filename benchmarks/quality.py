"""Separation quality on the starter corpus test splits, with the oracle and mixture baselines beside it.

    python -m benchmarks.quality --data /work/data/starter [--model PATH] [--out benchmarks/results]

Runs the evaluation commands (``qsep evaluate mixtures`` with text / audio / label queries on the eval
recordings of the training classes and on the held-out classes; ``qsep evaluate musdb`` with audio and text
queries on the synthetic music test split, SiSEC18 protocol), plus the mixture and ideal-ratio-mask oracles,
exactly as ``python -m recipes.starter_corpus.train_default --evaluate`` does, into a fresh folder; then
collects the headline numbers into ``<out>/quality.{json,md}``. The corpus is built by
``python -m recipes.starter_corpus.build`` (see recipes/starter_corpus/README.md); the default model is the
shipped ``qsep-starter``. These are in-domain numbers on a small corpus, not AudioSet / MUSDB18 results.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine


def main(argv: list[str] | None = None) -> None:
    from recipes.starter_corpus.train_default import step_evaluate, summarize
    from qsep_core.hub import resolve_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="starter corpus folder (recipes.starter_corpus.build --out)")
    p.add_argument("--model", default=None, help="model folder or name (default: the shipped qsep-starter)")
    p.add_argument("--runs", type=Path, default=None, help="keep the evaluation outputs here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    if not (a.data / "events").is_dir() or not (a.data / "music").is_dir():
        p.error(f"{a.data} is not a starter corpus (no events/ and music/); build it with python -m recipes.starter_corpus.build")
    model = resolve_model(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        runs = a.runs or Path(tmp)
        t0 = time.perf_counter()
        step_evaluate(a.data, runs, model)
        table = summarize(runs)
        wall = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quality.json").write_text(json.dumps({"machine": machine(), "model": str(model), "data": str(a.data),
                                                    "wall_s": wall, "table_md": table}, indent=2))
    md = (f"# quality\n\nmodel: {model}\ndata: {a.data}\nmachine: {json.dumps(machine())}\n\n{table}\n\n"
          "Mixtures: SDRi / SI-SDRi in dB (seen = eval recordings of training classes, held-out = unseen classes). "
          "MUSDB-style: SiSEC18 SDR in dB on the synthetic music test split.\n")
    (a.out / "quality.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
