"""Anchor segments from weakly labeled clips: frame-wise SED probabilities -> 2 s windows -> a sharded manifest.

Two layers:

* :func:`find_anchors` is pure: given one label's frame-wise probabilities and
  the frame times, it smooths them with a window of the segment length (a moving
  average, as the official ZS-ASS miner convolves with ones over 2 s) and picks
  the best window (no threshold by default), optionally several
  non-overlapping ones and only those above a minimum probability.
* :func:`mine` runs a detector (passed in; any module returning HTS-AT's output
  dict) over a weakly labeled dataset with Lightning ``Trainer.predict`` (the
  same code on CPU, one GPU, or DDP), finds the anchors of every (clip,
  positive label), recomputes the latent on each anchor crop (as the official
  code computes the query latent on the 2 s crop), and writes shards.

Manifest folder layout: :mod:`qsep_core.manifest` (this module writes it, separator training
reads it there).

Shard ``k`` holds the clips ``[k * shard_size, (k + 1) * shard_size)`` of the
dataset, in order. Each shard is written atomically (the CSV last, so a CSV marks
a finished shard). A restarted run skips finished shards; batches never span shards,
so a resumed run gives byte-identical shards.

Under DDP (``devices=N`` / ``num_nodes=M``), rank ``r`` of ``W`` takes the pending
shards ``r, r + W, ...`` whole; every rank lists the pending shards before the
process group exists (so before anyone writes), and the shards are the same as
from one process.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from qsep_core.constants import ANCHOR_SECONDS
from qsep_core.manifest import (
    MANIFEST_COLUMNS,
    MINING_JSON,
    SHARD_DIR,
    Manifest,
    ManifestContent,
    ManifestError,
    load_manifest,
    shard_done,
    shard_paths,
    write_manifest,
    write_meta,
    write_shard,
)
from qsep_core.training import PlacementConfig

__all__ = [
    "Anchor",
    "MiningConfig",
    "MiningError",
    "Manifest",
    "find_anchors",
    "mine",
    "mining_dataset",
    "load_manifest",
    "write_manifest",
    "shard_paths",
    "MANIFEST_COLUMNS",
]


class MiningError(ManifestError):
    """Mining cannot run (bad settings, a dataset without audio paths, another run in the output folder).

    A :class:`qsep_core.manifest.ManifestError`, which is what reading an incomplete manifest raises.
    """


# ----------------------------------------------------------------------------------------------
# pure anchor detection
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Anchor:
    """One mined segment: ``[start, end)`` in seconds and the mean probability inside it."""

    start: float
    end: float
    confidence: float


def _as_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (frames,), got shape {arr.shape}")
    return arr


def find_anchors(
    framewise_prob: Any,
    frame_times: Any,
    segment_seconds: float = ANCHOR_SECONDS,
    min_prob: float | None = None,
    max_anchors: int = 1,
    clip_duration: float | None = None,
) -> list[Anchor]:
    """Best ``segment_seconds`` windows of one label's frame-wise probabilities.

    The probabilities are averaged over every window of ``segment_seconds`` that
    lies fully inside the clip (so a window is clamped inside the clip, never
    past its start or end); the window with the highest mean wins. Among tied
    windows (an event shorter than the segment) the middle one is taken, so the
    event sits in the centre of its anchor. Further anchors are the best
    remaining windows that do not overlap any anchor already taken.

    Args:
        framewise_prob: ``(frames,)`` probabilities of one label.
        frame_times: ``(frames,)`` start time of each frame in seconds from the clip start, evenly spaced.
        segment_seconds: anchor length (official: 2 s).
        min_prob: keep only anchors whose mean probability is at least this (None: no threshold, official).
        max_anchors: at most this many non-overlapping anchors (best first).
        clip_duration: clip length in seconds (default: last frame time + one frame step).
            A clip no longer than the segment gives one anchor covering the whole clip.

    Returns:
        Anchors sorted by confidence, best first (possibly empty when ``min_prob`` is set).
    """
    prob = _as_numpy(framewise_prob, "framewise_prob")
    times = _as_numpy(frame_times, "frame_times")
    if prob.shape != times.shape:
        raise ValueError(f"framewise_prob {prob.shape} and frame_times {times.shape} differ in length")
    if prob.size == 0:
        raise ValueError("framewise_prob is empty (zero frames)")
    if segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
    if max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    if not np.all(np.isfinite(prob)):
        raise ValueError("framewise_prob contains NaN or inf")
    step = float(times[1] - times[0]) if times.size > 1 else None
    if clip_duration is None:
        if step is None:
            raise ValueError("one frame only: pass clip_duration")
        clip_duration = float(times[-1] + step)
    origin = float(times[0])

    if clip_duration <= segment_seconds or step is None:
        conf = float(prob.mean())
        if min_prob is not None and conf < min_prob:
            return []
        return [Anchor(0.0, float(clip_duration), conf)]

    frames = prob.size
    width = int(min(frames, max(1, round(segment_seconds / step))))
    csum = np.concatenate([[0.0], np.cumsum(prob)])
    score = (csum[width:] - csum[:-width]) / width  # (frames - width + 1,) mean over each full window
    alive = np.ones(score.size, dtype=bool)
    anchors: list[Anchor] = []
    tol = 1e-9
    while len(anchors) < max_anchors and alive.any():
        masked = np.where(alive, score, -np.inf)
        best = float(masked.max())
        if min_prob is not None and best < min_prob:
            break
        first = int(np.argmax(masked >= best - tol))
        last = first
        while last + 1 < score.size and alive[last + 1] and masked[last + 1] >= best - tol:
            last += 1
        pos = (first + last) // 2
        start = origin + pos * step  # window start, seconds from the clip start
        start = float(min(max(start, 0.0), clip_duration - segment_seconds))
        anchors.append(Anchor(start, start + segment_seconds, best))
        lo, hi = max(0, pos - width + 1), min(score.size, pos + width)
        alive[lo:hi] = False  # windows overlapping this anchor
    return anchors


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------
@dataclass
class MiningConfig(ManifestContent, PlacementConfig):
    """Options of a mining run: the content settings of :class:`qsep_core.manifest.ManifestContent`
    (recorded in ``mining.json``) and how the run executes (these may change between resumes): the
    placement fields of :class:`qsep_core.training.PlacementConfig` (defaults here: one device, ``32-true``),
    ``batch_size``, ``num_workers``, ``progress``, and ``max_bad_clips``: clips that cannot be read or hold
    NaN/inf are skipped (no anchors, a warning naming each) up to this many, and the next one stops the run
    naming them (0, the default: the first bad clip stops it). A skipped clip is skipped again on a rerun, so
    resumed shards stay consistent."""

    batch_size: int = 8
    num_workers: int = 0
    max_bad_clips: int = 0
    devices: int | str = 1
    precision: str = "32-true"
    progress: bool = False


def _dataset_class_mids(dataset: Any) -> list[str] | None:
    mids = getattr(getattr(dataset, "classes", None), "mids", None)
    if isinstance(mids, (list, tuple)) and any(mids):
        return [str(m) for m in mids]
    return None


def _dataset_class_names(dataset: Any, num_classes: int | None) -> list[str] | None:
    for attr in ("class_names", "classes", "labels"):
        names = getattr(dataset, attr, None)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
        # a ClassList-like object with .names
        inner = getattr(names, "names", None)
        if isinstance(inner, (list, tuple)) and inner:
            return [str(n) for n in inner]
    return None


def _dataset_audio_path(dataset: Any, index: int) -> str | None:
    fn = getattr(dataset, "audio_path", None)
    if callable(fn):
        p = fn(index)
        return None if p is None else str(p)
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return str(paths[index])
    return None


def _true_length(dataset: Any, index: int) -> int | None:
    """Samples of the clip's file at the dataset's rate, when the dataset reads files (else None)."""
    rate = getattr(dataset, "sample_rate", None)
    path = _dataset_audio_path(dataset, index)
    if not rate or not path or not os.path.isfile(path):
        return None
    from qsep_core import audio

    return int(math.ceil(audio.info(path).duration * rate))


class _Indexed(torch.utils.data.Dataset):
    """Wraps a weak-label dataset so batches carry the dataset index and the audio path."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.dataset[index]
        if item is None:  # a bad clip skipped by the dataset's BadClipGuard (max_bad_clips)
            return {"index": index, "skipped": True}
        wav, target, clip_id = item[0], item[1], item[2]
        wav = torch.as_tensor(wav, dtype=torch.float32)
        if wav.ndim == 2:  # (channels, time) -> mono
            wav = wav.mean(dim=0)
        if wav.ndim != 1:
            raise MiningError(f"dataset item {index}: waveform must be (time,) or (channels, time), got {tuple(wav.shape)}")
        true_len = _true_length(self.dataset, index)
        if true_len is not None and true_len < wav.shape[-1]:
            wav = wav[:true_len]  # drop the zero padding a fixed-length dataset adds to short files
        return {
            "index": index,
            "waveform": wav,
            "target": torch.as_tensor(target, dtype=torch.float32),
            "clip_id": str(clip_id),
            "audio_path": _dataset_audio_path(self.dataset, index) or "",
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    seen = [it["index"] for it in items]  # every clip of the batch, skipped bad clips included
    items = [it for it in items if not it.get("skipped")]
    if not items:
        return {"index": [], "seen": seen, "waveform": torch.zeros(0, 1), "length": torch.zeros(0, dtype=torch.long),
                "target": torch.zeros(0, 0), "clip_id": [], "audio_path": []}
    lengths = torch.tensor([it["waveform"].shape[-1] for it in items])
    wav = torch.zeros(len(items), int(lengths.max()))
    for i, it in enumerate(items):
        wav[i, : it["waveform"].shape[-1]] = it["waveform"]
    return {
        "index": [it["index"] for it in items],
        "seen": seen,
        "waveform": wav,  # (batch, time) zero-padded to the longest clip
        "length": lengths,
        "target": torch.stack([it["target"] for it in items]),  # (batch, classes)
        "clip_id": [it["clip_id"] for it in items],
        "audio_path": [it["audio_path"] for it in items],
    }


class _ShardBatchSampler(torch.utils.data.Sampler):
    """Batches that never span shards; under DDP, rank ``r`` takes shards ``r, r + W, ...`` of the pending list.

    The rank is read when iteration starts (after the process group exists), so the
    same object works on one device and under DDP.
    """

    def __init__(self, shards: Sequence[tuple[int, int, int]], batch_size: int):
        self.shards = list(shards)  # (shard index, first clip, end clip)
        self.batch_size = batch_size

    def _mine(self) -> list[tuple[int, int, int]]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        return self.shards[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        for _, lo, hi in self._mine():
            for b in range(lo, hi, self.batch_size):
                yield list(range(b, min(b + self.batch_size, hi)))

    def __len__(self) -> int:
        return sum(math.ceil((hi - lo) / self.batch_size) for _, lo, hi in self._mine())


def _segment_samples(cfg: MiningConfig, sample_rate: int) -> int:
    return int(round(cfg.segment_seconds * sample_rate))


class _MiningModule(L.LightningModule):
    """Runs the detector on a batch of clips and returns the segments it mines (one dict per segment)."""

    def __init__(self, detector: torch.nn.Module, cfg: MiningConfig, sample_rate: int, class_names: list[str] | None):
        super().__init__()
        self.detector = detector
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.class_names = class_names

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        cfg, sample_rate, class_names = self.cfg, self.sample_rate, self.class_names
        wav = batch["waveform"]  # (batch, time)
        if wav.shape[0] == 0:  # every clip of the batch was bad and skipped
            return []
        out = self.detector(wav)
        framewise = out["framewise"].float().cpu()  # (batch, frames, classes)
        times = torch.as_tensor(out["frame_times"]).double().cpu()  # (frames,)
        seg = _segment_samples(cfg, sample_rate)
        found: list[dict[str, Any]] = []
        crops: list[torch.Tensor] = []
        for b in range(wav.shape[0]):
            length = int(batch["length"][b])
            duration = length / sample_rate
            valid = times < duration - 1e-9
            positives = torch.nonzero(batch["target"][b] > cfg.positive_threshold).flatten().tolist()
            clip_labels = ";".join(str(k) for k in positives)
            for k in positives:
                anchors = find_anchors(
                    framewise[b, valid, k],
                    times[valid],
                    cfg.segment_seconds,
                    cfg.min_prob,
                    cfg.max_anchors,
                    clip_duration=duration,
                )
                for a in anchors:
                    first = min(int(round(a.start * sample_rate)), max(0, length - seg))
                    crop = wav[b, first : min(length, first + seg)]
                    crops.append(crop)
                    found.append(
                        {
                            "clip_id": batch["clip_id"][b],
                            "clip_index": int(batch["index"][b]),
                            "audio_path": batch["audio_path"][b],
                            "label": k,
                            "label_name": class_names[k] if class_names and k < len(class_names) else str(k),
                            "clip_labels": clip_labels,
                            "start": a.start,
                            "end": a.end,
                            "confidence": a.confidence,
                        }
                    )
        # recompute the latent on each anchor crop (official: the query latent of the 2 s crop);
        # crops of one length go through the detector together (short clips give shorter crops)
        latents: list[torch.Tensor | None] = [None] * len(crops)
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(crops):
            by_len.setdefault(int(c.shape[-1]), []).append(i)
        for _, idx in sorted(by_len.items()):
            lat = self.detector(torch.stack([crops[i] for i in idx]))["latent"].float().cpu()  # (n, D)
            for j, i in enumerate(idx):
                latents[i] = lat[j]
        for row, lat, crop in zip(found, latents, crops):
            row["latent"] = lat
            if cfg.store_audio:
                row["audio"] = crop.float().cpu()
        return found


class _ShardWriter(BasePredictionWriter):
    """Collects the segments of each shard and writes the shard once all its clips are through."""

    def __init__(self, out_dir: Path, shards: Sequence[tuple[int, int, int]], cfg: MiningConfig, seg: int,
                 on_shard_written: Callable[[int], None] | None):
        super().__init__(write_interval="batch")
        self.out_dir, self.cfg, self.seg, self.on_shard_written = out_dir, cfg, seg, on_shard_written
        self.bounds = {s: (lo, hi) for s, lo, hi in shards}
        self.rows: dict[int, list[dict[str, Any]]] = {}
        self.seen: dict[int, int] = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        size = self.cfg.shard_size
        for clip in batch["seen"]:
            s = int(clip) // size
            self.seen[s] = self.seen.get(s, 0) + 1
        for row in prediction:
            self.rows.setdefault(int(row["clip_index"]) // size, []).append(row)
        for s in sorted({int(c) // size for c in batch["seen"]}):
            lo, hi = self.bounds[s]
            if self.seen.get(s, 0) == hi - lo:
                self._flush(s)

    def _flush(self, s: int) -> None:
        rows = sorted(self.rows.pop(s, []), key=lambda r: (r["clip_index"], r["label"], -r["confidence"], r["start"]))
        table: list[dict[str, Any]] = []
        lats: list[torch.Tensor] = []
        audio = torch.zeros(len(rows), self.seg)
        audio_len = torch.zeros(len(rows), dtype=torch.int64)
        for i, r in enumerate(rows):
            lats.append(r.pop("latent"))
            if "audio" in r:
                a = r.pop("audio")
                audio[i, : a.shape[-1]] = a
                audio_len[i] = a.shape[-1]
            table.append({**r, "row": i})
        tensors = {"latent": torch.stack(lats) if lats else torch.zeros(0, 0)}
        if self.cfg.store_audio:
            tensors["audio"] = audio  # (segments, segment samples), zero-padded
            tensors["audio_length"] = audio_len
        write_shard(self.out_dir, s, table, tensors)
        if self.on_shard_written is not None:
            self.on_shard_written(s)


def mine(
    detector: torch.nn.Module,
    dataset: Any,
    out_dir: str | os.PathLike,
    config: MiningConfig | None = None,
    sample_rate: int | None = None,
    class_names: Sequence[str] | None = None,
    on_shard_written: Callable[[int], None] | None = None,
) -> Path:
    """Mine anchor segments of every (clip, positive label) of ``dataset`` into shards under ``out_dir``.

    Args:
        detector: module mapping ``(batch, samples)`` float32 at ``sample_rate`` to a dict with
            ``framewise (batch, frames, classes)``, ``frame_times (frames,)`` seconds and ``latent (batch, D)``
            (:class:`sed.htsat.HTSAT` or a stand-in).
        dataset: items ``(waveform (time,) or (channels, time), multi-hot target (classes,), clip_id)`` at the
            detector's rate. Audio paths come from ``dataset.audio_path(i)`` or ``dataset.paths[i]``; without them
            set ``config.store_audio``.
        out_dir: manifest folder (created). Finished shards already there are kept and skipped.
        config: :class:`MiningConfig`.
        sample_rate: detector rate (default: ``detector.cfg.sample_rate``, ``detector.config.sample_rate`` or ``detector.sample_rate``).
        class_names: names of the classes (default: from the dataset).
        on_shard_written: called with the shard index after each shard is written (progress, tests).

    Returns:
        ``out_dir``.

    Raises:
        MiningError: bad shard or batch size, an empty dataset, a detector that does not say its rate, a
            dataset without audio paths while ``store_audio`` is off, or ``out_dir`` holding a run with
            other settings.
    """

    cfg = config or MiningConfig()
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise MiningError(f"shard_size and batch_size must be >= 1, got {cfg.shard_size}, {cfg.batch_size}")
    if sample_rate is None:
        for owner in (getattr(detector, "cfg", None), getattr(detector, "config", None), detector):
            sample_rate = getattr(owner, "sample_rate", None)
            if sample_rate:
                break
    if not sample_rate:
        raise MiningError("the detector does not say its sample rate; pass sample_rate=")
    sample_rate = int(sample_rate)
    n = len(dataset)
    if n == 0:
        raise MiningError("the dataset is empty")
    if not cfg.store_audio and _dataset_audio_path(dataset, 0) is None:
        raise MiningError(
            "the dataset gives no audio file paths (e.g. an HDF5 pack): store the anchor audio in the shards "
            "(MiningConfig.store_audio=True, `qsep mine --store-audio`)"
        )
    names = list(class_names) if class_names is not None else _dataset_class_names(dataset, None)
    out = Path(out_dir)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(n / cfg.shard_size)
    meta_path = out / MINING_JSON
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        now = {"config": cfg.content(), "sample_rate": sample_rate, "num_clips": n, "num_shards": num_shards}
        if {k: old.get(k) for k in now} != now:
            raise MiningError(
                f"{out} holds a mining run with other settings ({old.get('config')}, {old.get('num_clips')} clips); "
                "use another --out folder or delete it"
            )
    write_meta(out, cfg, sample_rate=sample_rate, num_clips=n, num_shards=num_shards, class_names=names,
               class_mids=_dataset_class_mids(dataset))

    pending = [
        (s, s * cfg.shard_size, min(n, (s + 1) * cfg.shard_size))
        for s in range(num_shards)
        if not shard_done(out, s)
    ]
    if not pending:
        return out
    if cfg.max_bad_clips < 0:
        raise MiningError(f"max_bad_clips must be >= 0, got {cfg.max_bad_clips}")
    if hasattr(dataset, "bad_clips"):
        from qsep_core.training import BadClipGuard

        dataset.bad_clips = BadClipGuard(cfg.max_bad_clips, "clip")
    loader = torch.utils.data.DataLoader(
        _Indexed(dataset),
        batch_sampler=_ShardBatchSampler(pending, cfg.batch_size),
        collate_fn=_collate,
        num_workers=cfg.num_workers,
    )
    module = _MiningModule(detector, cfg, sample_rate, names)
    writer = _ShardWriter(out, pending, cfg, _segment_samples(cfg, sample_rate), on_shard_written)
    trainer = L.Trainer(
        **cfg.trainer_placement(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[writer],
    )
    with warnings.catch_warnings():
        # our batch sampler returns every index of the pending shards on purpose (batches never span shards)
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    return out


def mining_dataset(data: str | os.PathLike | Sequence[str | os.PathLike], detector: torch.nn.Module, *,
                   format: str | None = None, audio_dir: str | os.PathLike | None = None,
                   class_labels: str | os.PathLike | None = None):
    """The weak-label dataset to mine, at the detector's rate and clip length (clips cut at their start).

    Args:
        data: a CSV manifest (``path,labels``), an HDF5 pack (``.h5``), or an AudioSet segments CSV.
        detector: an HTS-AT (``detector.cfg.sample_rate`` / ``clip_samples``; ``class_names`` when known).
        format: ``manifest`` | ``hdf5`` | ``audioset``; None: :func:`sed.data.guess_format`.
        audio_dir: the folder of the clips (AudioSet layout).
        class_labels: ``class_labels_indices.csv``; default: the detector's class names.

    Raises:
        sed.data.DatasetError: an unknown format, missing files, or an AudioSet layout without an audio
            folder or class names.
    """
    from sed.data import ClassList, open_weak_dataset

    if class_labels:
        classes = ClassList.from_csv(class_labels)
    elif getattr(detector, "class_names", None):
        classes = ClassList(tuple(detector.class_names))
    else:
        classes = None
    return open_weak_dataset(data, format=format, classes=classes, sample_rate=detector.cfg.sample_rate,
                             clip_samples=detector.cfg.clip_samples, crop="start", audio_dir=audio_dir)
