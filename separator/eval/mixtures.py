"""Zero-shot and general benchmarks on seeded two-source mixtures of a weakly labeled corpus.

From a corpus of labeled clips (a CSV manifest ``path,labels`` or an AudioSet-style folder) and a list of held-out classes,
:func:`build_mixture_set` draws a fixed, seeded set of two-source mixtures: for each evaluated
class, clips carrying it are the targets and clips whose label sets do not overlap the target's
are the interferers; the interferer is scaled to the target's RMS (ratio clipped to
``[0.02, 50]`` as the official mixing code) and added. :func:`evaluate_mixtures` separates
every mixture with a query for the target class (text, audio examples or label, through a
callable it receives) and reports SDR, SDRi and SI-SDRi per class, averaged over seen and
held-out classes separately.

Segments are cut from the loudest ``segment_seconds`` of each clip (a detector-free stand-in
for the official SED anchor), so the set needs no model.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from qsep_core import audio
from qsep_core.text import plural
from qsep_core.atomic import atomic_write_text
from qsep_core.constants import ANCHOR_SECONDS, SAMPLE_RATE
from qsep_core.metrics import improvement, sdr, si_sdr
from separator.eval.estimators import Estimator

__all__ = [
    "CorpusItem",
    "MixtureSetConfig",
    "MixtureSpec",
    "Query",
    "QUERY_KINDS",
    "read_manifest",
    "read_audioset",
    "read_corpus",
    "build_mixture_set",
    "render_mixture",
    "evaluate_mixtures",
    "save_mixture_set",
    "load_mixture_set",
    "results_markdown",
]

#: Query kinds :func:`evaluate_mixtures` can ask for.
QUERY_KINDS = ("text", "audio", "label")


@dataclass(frozen=True)
class CorpusItem:
    """One labeled clip."""

    path: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class MixtureSetConfig:
    """How the test mixtures are drawn.

    Attributes:
        sample_rate: rate the mixtures are rendered at (mono).
        segment_seconds: length of each source segment.
        mixtures_per_class: mixtures per evaluated class (targets are reused when a class has fewer clips).
        query_examples: audio-query examples per class, drawn from clips of the class that are
            never targets of its mixtures: the clips beyond ``mixtures_per_class``, or, for a small
            class, one clip taken out of the target pool (at least one clip always stays a target; a
            class with a single clip has no audio query, and audio-query evaluation skips it).
        ratio_clip: bounds of the RMS-matching gain applied to the interferer.
        seed: seed of every random choice.
    """

    sample_rate: int = SAMPLE_RATE
    segment_seconds: float = ANCHOR_SECONDS
    mixtures_per_class: int = 10
    query_examples: int = 3
    ratio_clip: tuple[float, float] = (0.02, 50.0)
    seed: int = 0


@dataclass(frozen=True)
class MixtureSpec:
    """One test mixture: target segment of ``target_class`` + RMS-matched interferer."""

    index: int
    target_class: str
    target: str
    interferer: str
    interferer_labels: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    """What the separator is asked for: the class name as ``kind`` text, label or audio examples."""

    kind: str
    label: str
    text: str
    audio: tuple[str, ...] = ()


def _split_labels(text: str) -> tuple[str, ...]:
    """Labels are separated by ``;`` (class names such as "Male speech, man speaking" contain commas)."""
    return tuple(sorted({t.strip() for t in text.split(";") if t.strip()}))


def read_manifest(path: str | os.PathLike) -> list[CorpusItem]:
    """Read a CSV manifest with columns ``path`` and ``labels`` (labels separated by ``;``).

    Relative paths are resolved against the manifest's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"path", "labels"} <= cols:
            raise ValueError(f"manifest {path} needs columns 'path' and 'labels'; it has {sorted(cols)}")
        items = []
        for row in reader:
            p = Path(row["path"])
            items.append(CorpusItem(str(p if p.is_absolute() else path.parent / p), _split_labels(row["labels"])))
    if not items:
        raise ValueError(f"manifest {path} lists no clips")
    return items


def read_audioset(folder: str | os.PathLike, segments_csv: str | os.PathLike | None = None) -> list[CorpusItem]:
    """Read an AudioSet-style folder: a segments CSV, ``class_labels_indices.csv`` and the audio files.

    The segments CSV (``YTID, start_seconds, end_seconds, positive_labels``; ``#`` lines are
    comments; labels are MIDs) defaults to the only ``*segments*.csv`` in ``folder``. Audio files
    anywhere under ``folder`` are matched by name: ``<YTID>.*``, ``Y<YTID>.*`` or
    ``Y<YTID>_<start>_<end>.*``. Labels become display names. Segments without a file are skipped
    (AudioSet copies are never complete); no file at all is an error.
    """
    folder = Path(folder)
    names_csv = folder / "class_labels_indices.csv"
    if not names_csv.is_file():
        raise FileNotFoundError(f"{names_csv} is missing (AudioSet's index,mid,display_name class list)")
    with names_csv.open(newline="") as f:
        mid_to_name = {row["mid"]: row["display_name"] for row in csv.DictReader(f)}
    if segments_csv is None:
        found = sorted(p for p in folder.glob("*segments*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected exactly one *segments*.csv in {folder}, found {[p.name for p in found]}")
        segments_csv = found[0]
    files: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        if audio.is_audio_path(p):
            stem = p.stem
            key = stem[1:12] if stem.startswith("Y") and len(stem) >= 12 else stem
            files.setdefault(key, str(p))
            files.setdefault(stem, str(p))
    items = []
    with Path(segments_csv).open(newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if not row or row[0].startswith("#") or len(row) < 4:
                continue
            ytid = row[0].strip()
            path = files.get(ytid) or files.get(f"Y{ytid}")
            if path is None:
                continue
            mids = [m.strip() for m in ",".join(row[3:]).strip('"').split(",") if m.strip()]
            unknown = [m for m in mids if m not in mid_to_name]
            if unknown:
                raise ValueError(f"{segments_csv}: labels {unknown} of {ytid} are not in {names_csv}")
            items.append(CorpusItem(path, tuple(sorted({mid_to_name[m] for m in mids}))))
    if not items:
        raise ValueError(f"none of the segments in {segments_csv} has an audio file under {folder}")
    return items


def read_corpus(path: str | os.PathLike) -> list[CorpusItem]:
    """A CSV manifest (a ``.csv`` file) or an AudioSet-style folder (see :func:`read_audioset`)."""
    path = Path(path)
    if path.is_dir():
        return read_audioset(path)
    return read_manifest(path)


def _choice(n: int, gen: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=gen))


def build_mixture_set(
    items: Sequence[CorpusItem], classes: Sequence[str], config: MixtureSetConfig = MixtureSetConfig()
) -> tuple[list[MixtureSpec], dict[str, list[str]]]:
    """Draw the fixed test set.

    Returns:
        ``(mixtures, query_audio)``: the mixture specs and, per class, the audio-query example paths.
    """
    items = sorted(items, key=lambda it: it.path)
    gen = torch.Generator().manual_seed(config.seed)
    specs: list[MixtureSpec] = []
    query_audio: dict[str, list[str]] = {}
    for cls in classes:
        targets = [it for it in items if cls in it.labels]
        if not targets:
            raise ValueError(f"class {cls!r} has no clip in the corpus")
        order = torch.randperm(len(targets), generator=gen).tolist()
        spare = len(targets) - config.mixtures_per_class
        n_query = min(config.query_examples, max(spare, 1)) if len(targets) > 1 else 0
        query_audio[cls] = [targets[i].path for i in order[:n_query]]
        pool = [targets[i] for i in order[n_query:]] or [targets[order[0]]]
        for k in range(config.mixtures_per_class):
            tgt = pool[k % len(pool)]
            others = [it for it in items if not set(it.labels) & set(tgt.labels)]
            if not others:
                raise ValueError(f"no clip in the corpus has labels disjoint from {tgt.path} ({list(tgt.labels)})")
            other = others[_choice(len(others), gen)]
            specs.append(MixtureSpec(len(specs), cls, tgt.path, other.path, other.labels))
    return specs, query_audio


def _loudest_segment(wav: torch.Tensor, length: int) -> torch.Tensor:
    """The ``length``-sample window of ``wav`` (1, time) with the most energy (zero-padded if short)."""
    if wav.shape[-1] <= length:
        return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))
    hop = max(length // 20, 1)
    energy = torch.nn.functional.avg_pool1d((wav**2)[None], length, stride=hop)[0, 0]  # (windows,)
    start = int(energy.argmax()) * hop
    return wav[..., start : start + length]


def render_mixture(spec: MixtureSpec, config: MixtureSetConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load and mix one spec.

    Returns:
        ``(mixture, target, interferer)``, each ``(1, time)`` float32 at ``config.sample_rate``.
    """
    length = int(round(config.segment_seconds * config.sample_rate))
    s1 = _loudest_segment(audio.load(spec.target, sample_rate=config.sample_rate, channels=1)[0], length)
    s2 = _loudest_segment(audio.load(spec.interferer, sample_rate=config.sample_rate, channels=1)[0], length)
    rms1 = s1.pow(2).mean().sqrt()
    rms2 = s2.pow(2).mean().sqrt()
    lo, hi = config.ratio_clip
    gain = float(torch.clamp(rms1 / rms2.clamp(min=1e-12), lo, hi))
    s2 = s2 * gain
    return s1 + s2, s1, s2


def save_mixture_set(path: str | os.PathLike, specs: Sequence[MixtureSpec], query_audio: Mapping[str, Sequence[str]],
                     config: MixtureSetConfig) -> None:
    """Write the test set to JSON (so later runs evaluate exactly the same mixtures)."""
    data = {"config": asdict(config), "mixtures": [asdict(s) for s in specs], "query_audio": dict(query_audio)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2))


def load_mixture_set(path: str | os.PathLike) -> tuple[list[MixtureSpec], dict[str, list[str]], MixtureSetConfig]:
    """Inverse of :func:`save_mixture_set`."""
    data = json.loads(Path(path).read_text())
    cfg = data["config"]
    config = MixtureSetConfig(**{**cfg, "ratio_clip": tuple(cfg["ratio_clip"])})
    specs = [MixtureSpec(**{**m, "interferer_labels": tuple(m["interferer_labels"])}) for m in data["mixtures"]]
    return specs, {k: list(v) for k, v in data["query_audio"].items()}, config


#: Key of the interferer in the ``references`` an oracle estimator receives.
INTERFERER = "interferer"


def evaluate_mixtures(
    specs: Sequence[MixtureSpec],
    estimator: Estimator,
    held_out: Sequence[str],
    query_kind: str = "text",
    query_audio: Mapping[str, Sequence[str]] | None = None,
    config: MixtureSetConfig = MixtureSetConfig(),
    texts: Mapping[str, str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Separate every mixture with a query for its target class and score it.

    Args:
        estimator: called as ``estimate(mixture (1, time), sample_rate, query)`` with a :class:`Query`
            as the stem; oracles also get ``references={query: target, INTERFERER: interferer}``.
        held_out: classes never seen in training (reported separately).
        query_kind: ``"text"``, ``"audio"`` or ``"label"``.
        texts: class -> query text (default: the class name).

    Returns:
        ``{"per_class": {cls: {"sdr", "sdri", "si_sdri", "n", "held_out"}}, "seen": {...}, "held_out": {...},
        "mixtures": [per-mixture rows], "skipped": {class: mixtures not evaluated}}`` (audio queries of a
        class without an example clip are skipped): dB; per class the mean over its mixtures, per group the mean over
        classes (``sdr``, ``sdri``, ``si_sdri``) and the median over mixtures (``sdri_median``, ``si_sdri_median``).
    """
    if query_kind not in QUERY_KINDS:
        raise ValueError(f"unknown query kind {query_kind!r}; choose one of {QUERY_KINDS}")
    held = set(held_out)
    rows = []
    skipped: dict[str, int] = {}
    for i, spec in enumerate(specs):
        mix, tgt, interferer = render_mixture(spec, config)
        cls = spec.target_class
        examples = tuple((query_audio or {}).get(cls, ()))
        if query_kind == "audio" and not examples:  # a single clip of the class: it cannot also be the example
            skipped.setdefault(cls, 0)
            skipped[cls] += 1
            continue
        query = Query(kind=query_kind, label=cls, text=(texts or {}).get(cls, cls), audio=examples)
        refs = {query: tgt, INTERFERER: interferer} if estimator.needs_references else None
        est = estimator.estimate(mix, config.sample_rate, query, references=refs)
        if tuple(est.shape) != tuple(mix.shape):
            raise ValueError(f"estimator {estimator.name!r} returned shape {tuple(est.shape)}; expected {tuple(mix.shape)}")
        row = {
            "index": spec.index, "class": cls, "held_out": cls in held,
            "sdr": float(sdr(estimate=est, reference=tgt)), "sdr_mixture": float(sdr(estimate=mix, reference=tgt)),
            "si_sdr": float(si_sdr(estimate=est, reference=tgt)),
            "si_sdr_mixture": float(si_sdr(estimate=mix, reference=tgt)),
            "sdri": float(improvement(sdr, estimate=est, reference=tgt, mixture=mix)),
            "si_sdri": float(improvement(si_sdr, estimate=est, reference=tgt, mixture=mix)),
        }
        rows.append(row)
        if progress is not None:
            progress(cls, i + 1, len(specs))

    def _mean(vals: Sequence[float]) -> float | None:
        return float(sum(vals) / len(vals)) if vals else None

    per_class: dict[str, dict[str, Any]] = {}
    for cls in dict.fromkeys(r["class"] for r in rows):
        rs = [r for r in rows if r["class"] == cls]
        per_class[cls] = {k: _mean([r[k] for r in rs]) for k in ("sdr", "sdri", "si_sdri")}
        per_class[cls].update(n=len(rs), held_out=cls in held)

    def _median(vals: Sequence[float]) -> float | None:
        return float(torch.tensor(vals, dtype=torch.float64).quantile(0.5)) if vals else None

    def _group(flag: bool) -> dict[str, Any]:
        cs = [v for v in per_class.values() if v["held_out"] == flag]
        rs = [r for r in rows if r["held_out"] == flag]
        return {**{k: _mean([c[k] for c in cs]) for k in ("sdr", "sdri", "si_sdri")},
                **{f"{k}_median": _median([r[k] for r in rs]) for k in ("sdri", "si_sdri")}, "classes": len(cs)}

    return {"method": estimator.name, "query_kind": query_kind, "per_class": per_class, "seen": _group(False), "held_out": _group(True),
            "mixtures": rows, "skipped": skipped}


def results_markdown(results: Mapping[str, Any]) -> str:
    """A markdown table of :func:`evaluate_mixtures` results (class means, then group means)."""

    def f(v: float | None) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    lines = [f"# Two-source mixtures: {results['method']}, {results['query_kind']} queries (dB, mean over mixtures)", "",
             "| class | held out | SDR | SDRi | SI-SDRi | mixtures |", "|---|---|---|---|---|---|"]
    for cls, r in results["per_class"].items():
        lines.append(f"| {cls} | {'yes' if r['held_out'] else 'no'} | {f(r['sdr'])} | {f(r['sdri'])} | {f(r['si_sdri'])} | {r['n']} |")
    for name in ("seen", "held_out"):
        g = results[name]
        lines.append(f"| **{name.replace('_', '-')} average** | | {f(g['sdr'])} | {f(g['sdri'])} | {f(g['si_sdri'])} | {plural(g['classes'], 'class')} |")
    return "\n".join(lines) + "\n"
