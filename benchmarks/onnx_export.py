"""CPU speed of the exported ONNX separator (onnxruntime) beside PyTorch, on the same input.

    python -m benchmarks.onnx_export [--model NAME|DIR] [--seconds 30] [--threads 1 2] [--repeats 5]
                                     [--name onnx_export] [--out benchmarks/results]

Exports ``--model`` (default: the shipped ``qsep-starter``) with :func:`separator.export.export_onnx` and times one
call on ``--seconds`` of mono noise at the model's rate with one query, for each thread count:

* ``pytorch``: ``QueryUNet.forward`` of the model as :meth:`separator.Separator.from_pretrained` prepares it
  (BatchNorms folded, channels-last), under ``torch.no_grad``;
* ``onnxruntime``: :class:`separator.export.OnnxSeparator` (qsep's STFT / ISTFT in PyTorch, the graph in onnxruntime
  with ``intra_op_num_threads`` = threads).

Medians of ``--repeats`` runs after one warm-up; the max abs difference of the two waveforms is recorded.
Results: ``<out>/<name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import time_it, write_report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or name (default: the shipped qsep-starter)")
    p.add_argument("--seconds", type=float, default=30.0, help="input length in seconds")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--name", default="onnx_export")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)

    from separator.api import Separator
    from separator.export import OnnxSeparator, export_onnx

    model = Separator.from_pretrained(args.model, device="cpu").model
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    mixture = 0.1 * torch.randn(1, 1, int(args.seconds * cfg.sample_rate), generator=g)
    condition = torch.randn(1, cfg.cond_dim, generator=g)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        report = export_onnx(args.model, path)
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                ref = model(mixture, condition)
                pt = time_it(lambda: model(mixture, condition), repeats=args.repeats)
            ort = OnnxSeparator(path, threads=threads)
            diff = float((ort(mixture, condition) - ref).abs().max())
            on = time_it(lambda: ort(mixture, condition), repeats=args.repeats)
            rows.append({"threads": threads, "seconds": args.seconds, "pytorch_s": pt["median_s"],
                         "onnxruntime_s": on["median_s"], "speedup": pt["median_s"] / on["median_s"],
                         "max_abs_diff": diff, "repeats": args.repeats})
    cols = [("threads", "threads"), ("seconds", "input s"), ("pytorch_s", "PyTorch s (median)"),
            ("onnxruntime_s", "onnxruntime s (median)"), ("speedup", "PyTorch / ORT"), ("max_abs_diff", "max |diff|")]
    write_report(args.out, args.name, rows, cols,
                 notes=f"model: {args.model or 'qsep-starter'}; ONNX file {report.size_mb:.1f} MB, opset {report.opset}")


if __name__ == "__main__":
    main()
