"""Pictures of separations and evaluations (matplotlib, the ``plots`` extra).

* :func:`file_spectrogram` / :func:`plot_separation`: the spectrograms of a mixture, its target and its
  residual on one colour scale (``qsep separate --plot``, the demo page). Files are read block-wise, so a
  long file costs no more memory than a short one: its STFT frames are averaged into at most
  ``max_columns`` columns.
* :func:`plot_musdb_summary`: SDR per stem and method of a ``qsep evaluate musdb`` summary (the model next
  to the ``mixture`` / ``irm`` oracle baselines when they were evaluated).
* :func:`plot_mixture_results`: SDR per class of ``qsep evaluate mixtures`` results, one bar per method
  found in the output folder (model runs and oracle baselines).

Every function writes a PNG atomically and returns its path.

Raises (every plotting function):
    qsep_core.extras.MissingExtraError: matplotlib (the ``plots`` extra) is not installed.
    OSError: the image cannot be written.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from qsep_core.dsp.stft import StftConfig, stft

__all__ = ["Spectrogram", "file_spectrogram", "plot_separation", "plot_musdb_summary", "plot_mixture_results",
           "collect_mixture_results", "DYNAMIC_RANGE_DB"]

#: colour range of the spectrogram pictures: from the mixture's loudest bin down this many dB
DYNAMIC_RANGE_DB = 90.0


@dataclass
class Spectrogram:
    """Power spectrogram of a file, mixed to mono.

    Attributes:
        power: ``(bins, columns)`` float64 mean power per column (each column averages consecutive STFT frames).
        sample_rate: the file's rate in Hz (bins span 0 .. ``sample_rate / 2``).
        duration: the file's length in seconds (columns span 0 .. ``duration``).
    """

    power: torch.Tensor
    sample_rate: int
    duration: float

    def db(self, reference: float) -> torch.Tensor:
        """``(bins, columns)`` power in dB relative to ``reference`` (a power), floored at -200 dB."""
        return 10.0 * torch.log10(self.power.clamp_min(reference * 1e-20) / reference)


def _pyplot():
    from qsep_core.extras import require

    matplotlib = require("matplotlib", "plots", "drawing pictures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (PNG) atomically and close it."""
    import matplotlib.pyplot as plt

    from qsep_core.atomic import AtomicPath

    out = Path(path)
    try:
        with AtomicPath(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out


def file_spectrogram(path: str | os.PathLike, n_fft: int = 2048, hop_length: int = 512, max_columns: int = 1200,
                     block_seconds: float = 30.0) -> Spectrogram:
    """The power spectrogram of an audio file (any length, rate, channels; mixed to mono), read block-wise.

    Frames of an ``n_fft``-point Hann STFT (``hop_length`` apart, no centre padding; a file shorter than
    ``n_fft`` is zero-padded to one frame) are averaged into ``min(max_columns, frames)`` columns.

    Raises:
        qsep_core.audio.AudioError: the file cannot be read.
        ValueError: a non-positive size.
    """
    from qsep_core.audio import AudioReader

    if min(n_fft, hop_length, max_columns) <= 0 or block_seconds <= 0:
        raise ValueError(f"n_fft, hop_length, max_columns and block_seconds must be > 0, got {n_fft}, {hop_length}, "
                         f"{max_columns}, {block_seconds}")
    cfg = StftConfig(n_fft=n_fft, hop_length=hop_length, center=False)
    with AudioReader(path) as reader:
        rate, total = reader.sample_rate, reader.frames
        n_frames = 1 + max(0, total - n_fft) // hop_length
        columns = min(max_columns, n_frames)
        acc = torch.zeros(cfg.n_bins, columns, dtype=torch.float64)
        counts = torch.zeros(columns, dtype=torch.float64)
        done = 0  # STFT frames accumulated so far
        carry = torch.zeros(0)
        block = hop_length * max(1, int(block_seconds * rate) // hop_length)
        for piece in reader.blocks(block):
            x = torch.cat([carry, piece.mean(dim=0)])  # (samples,) mono
            if x.numel() < n_fft:
                carry = x
                continue
            power = stft(x, cfg).abs().double() ** 2  # (bins, frames)
            frames = min(power.shape[-1], n_frames - done)
            col = torch.div(torch.arange(done, done + frames) * columns, n_frames, rounding_mode="floor")
            acc.index_add_(1, col, power[:, :frames])
            counts.index_add_(0, col, torch.ones(frames, dtype=torch.float64))
            done += frames
            carry = x[frames * hop_length:]
        if done == 0:  # shorter than one FFT: one zero-padded frame
            x = torch.nn.functional.pad(carry, (0, n_fft - carry.numel()))
            acc[:, 0] = stft(x, cfg)[:, 0].abs().double() ** 2
            counts[0] = 1.0
    return Spectrogram(acc / counts.clamp_min(1.0), rate, total / rate)


def plot_separation(mixture: str | os.PathLike, outputs: Mapping[str, str | os.PathLike], path: str | os.PathLike,
                    title: str | None = None, max_columns: int = 1200) -> Path:
    """Spectrograms of ``mixture`` and each of ``outputs`` (``{"target": file, "residual": file}``), stacked,
    on the mixture's colour scale (its loudest bin is 0 dB), to the PNG ``path``.

    Raises:
        qsep_core.audio.AudioError: a file cannot be read.
        qsep_core.extras.MissingExtraError, OSError: see the module doc.
    """
    plt = _pyplot()
    specs = {"mixture": file_spectrogram(mixture, max_columns=max_columns)}
    specs.update({name: file_spectrogram(p, max_columns=max_columns) for name, p in outputs.items()})
    reference = float(specs["mixture"].power.max()) or 1e-20
    fig, axes = plt.subplots(len(specs), 1, figsize=(10, 2.1 * len(specs) + 0.6), sharex=True, squeeze=False,
                             layout="constrained")
    image = None
    for ax, (name, spec) in zip(axes[:, 0], specs.items()):
        image = ax.imshow(spec.db(reference).numpy(), origin="lower", aspect="auto", cmap="magma",
                          vmin=-DYNAMIC_RANGE_DB, vmax=0.0,
                          extent=(0.0, spec.duration, 0.0, spec.sample_rate / 2000.0), interpolation="antialiased")
        ax.set_ylabel("kHz")
        ax.set_title(name, loc="left", fontsize=10)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB (mixture peak = 0)", pad=0.01, fraction=0.025)
    return _save(fig, path)


def _bars(ax, groups: Sequence[str], series: Mapping[str, Sequence[float | None]], ylabel: str) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (missing / NaN values left out)."""
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        vals = [math.nan if v is None else float(v) for v in values]
        bars = ax.bar(xs, vals, width=width, label=name)
        for bar, v in zip(bars, vals):
            if not math.isnan(v):
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                            va="bottom" if v >= 0 else "top", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if max((len(g) for g in groups), default=0) > 8 else 0, ha="right"
                       if max((len(g) for g in groups), default=0) > 8 else "center", fontsize=8)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_musdb_summary(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """SDR (median over tracks, dB) per stem for each method of a MUSDB18 summary, one panel per protocol.

    ``summary`` is what :func:`separator.eval.musdb.evaluate_musdb` returns (``rows`` with ``method``,
    ``protocol``, ``sdr: {stem: dB}``, ``sdr_mean_over_stems``).

    Raises:
        ValueError: the summary has no rows.
        qsep_core.extras.MissingExtraError, OSError: see the module doc.
    """
    rows = list(summary.get("rows") or [])
    if not rows:
        raise ValueError("the summary has no rows to draw")
    plt = _pyplot()
    protocols = sorted({r["protocol"] for r in rows})
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols) + 1, 4), squeeze=False)
    for ax, proto in zip(axes[0], protocols):
        prow = [r for r in rows if r["protocol"] == proto]
        stems = list(prow[0]["sdr"])
        series = {r["method"]: [r["sdr"].get(s) for s in stems] + [r.get("sdr_mean_over_stems")] for r in prow}
        _bars(ax, [*stems, "mean"], series, "SDR (dB, median over tracks)")
        tag = " (NON-STANDARD)" if prow[0].get("non_standard") else ""
        ax.set_title(f"MUSDB18, protocol {proto}{tag}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def collect_mixture_results(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``results_*.json`` of a ``qsep evaluate mixtures`` output folder (sorted by file name).

    Raises:
        OSError, json.JSONDecodeError: a results file cannot be read.
    """
    out = []
    for p in sorted(Path(folder).glob("results_*.json")):
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "per_class" in data:
            out.append(data)
    return out


def _method_label(results: Mapping[str, Any]) -> str:
    settings = results.get("settings") or {}
    if settings.get("oracle"):
        return results["method"]
    label = f"{results['method']} ({results.get('query_kind')})"
    return label + (" unrelated text" if results.get("query_text") else "")


def plot_mixture_results(results: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """SDR (dB, mean over mixtures) per class and the seen / held-out averages, one bar per method.

    ``results`` are :func:`separator.eval.mixtures.evaluate_mixtures` dicts of one mixture set (e.g.
    :func:`collect_mixture_results` of an output folder: the model and the ``oracle-mixture`` / ``oracle-irm``
    baselines). Held-out classes are marked ``*``.

    Raises:
        ValueError: no results.
        qsep_core.extras.MissingExtraError, OSError: see the module doc.
    """
    if not results:
        raise ValueError("no mixture results to draw")
    plt = _pyplot()
    classes: list[str] = []
    held: set[str] = set()
    for r in results:
        for cls, v in r["per_class"].items():
            if cls not in classes:
                classes.append(cls)
            if v.get("held_out"):
                held.add(cls)
    groups = [f"{c}*" if c in held else c for c in classes] + ["seen avg", "held-out avg"]
    series = {
        _method_label(r): [r["per_class"].get(c, {}).get("sdr") for c in classes]
                          + [r.get("seen", {}).get("sdr"), r.get("held_out", {}).get("sdr")]
        for r in results
    }
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.2))
    _bars(ax, groups, series, "SDR (dB, mean over mixtures)")
    ax.set_title("two-source mixtures: SDR per class (* held out)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
