"""Audio queries: example recordings -> the frozen detector's latent embedding.

A query file is read (through :mod:`qsep_core.audio`), down-mixed to mono and
resampled to the detector's rate, then cut into fixed segments (2 s by default,
the length the official ZS-ASS query path uses). Each segment goes through the
detector's forward, which for inputs shorter than its clip length uses the
official ``infer_mode`` tiling path, and its ``latent`` is kept.

Segmentation (nothing is dropped at the tail):

* a file no longer than one segment is a single segment (the whole file; the
  detector's infer-mode path tiles short clips);
* otherwise segments start at ``0, L, 2L, ...`` and, when the length is not a
  multiple of ``L``, one last segment covers the final ``L`` samples
  ``[T - L, T)`` (it overlaps the one before). Every segment is exactly ``L``
  samples long. The official code instead cut the tail off.

Energy gate (which segments are used). With ``rms_dbfs = 20*log10(rms)`` of a
segment (``rms`` of the mono, resampled waveform; digital silence is ``-inf``),
a segment is used when **both** hold:

* ``rms_dbfs > floor_dbfs`` (absolute floor, default -80 dBFS: digital silence,
  dither, and near-silence);
* ``rms_dbfs >= loudest_dbfs - relative_db`` where ``loudest_dbfs`` is the
  loudest segment of the same file (default ``relative_db = 40``): pauses
  between events of a file are dropped whatever the recording level.

The official ZS-ASS rule (``sum(x**2) > 0.1`` per 2-s segment at 32 kHz, an
absolute threshold) is ``floor_dbfs = 10*log10(0.1/64000) = -58.06`` with
``relative_db = inf`` (see :func:`official_floor_dbfs`). A file with no usable
segment is an error naming the file and its loudest segment level.

The query condition is the mean of the used segment latents of each file,
then the (unweighted) mean of the file means.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from qsep_core import audio as audio_io
from qsep_core.constants import ANCHOR_SECONDS

from .errors import NoUsableAudioError, QueryError

__all__ = [
    "DEFAULT_SEGMENT_SECONDS",
    "DEFAULT_RELATIVE_DB",
    "DEFAULT_FLOOR_DBFS",
    "SegmentInfo",
    "FileEmbedding",
    "AudioQueryResult",
    "AudioQueryEncoder",
    "segment_bounds",
    "segment_rms_dbfs",
    "official_floor_dbfs",
    "detector_sample_rate",
]

#: Query segment length of the official ZS-ASS query path (the anchor length).
DEFAULT_SEGMENT_SECONDS = ANCHOR_SECONDS
#: A segment more than this many dB below the file's loudest segment is not used.
DEFAULT_RELATIVE_DB = 40.0
#: A segment at or below this RMS level (dBFS) is never used.
DEFAULT_FLOOR_DBFS = -80.0
#: Official ZS-ASS energy threshold: ``sum(segment**2) > 0.1``.
OFFICIAL_ENERGY_THRESHOLD = 0.1


def official_floor_dbfs(segment_samples: int) -> float:
    """The RMS floor (dBFS) equivalent to the official ``sum(x**2) > 0.1`` rule for segments of this length."""
    return 10.0 * math.log10(OFFICIAL_ENERGY_THRESHOLD / segment_samples)


def detector_sample_rate(detector: nn.Module) -> int | None:
    """The rate a detector declares (``.cfg.sample_rate``, ``.config.sample_rate`` or ``.sample_rate``), else None."""
    rate = None
    for attr in ("cfg", "config"):
        cfg = getattr(detector, attr, None)
        rate = getattr(cfg, "sample_rate", None) if cfg is not None else None
        if rate is not None:
            break
    if rate is None:
        rate = getattr(detector, "sample_rate", None)
    return int(rate) if rate is not None else None


def segment_bounds(n_samples: int, segment_samples: int) -> list[tuple[int, int]]:
    """Segment ``[start, end)`` sample ranges of a signal (see the module docstring for the rule)."""
    if n_samples <= 0:
        raise ValueError(f"cannot segment an empty signal (n_samples={n_samples})")
    if segment_samples <= 0:
        raise ValueError(f"segment length must be positive, got {segment_samples}")
    if n_samples <= segment_samples:
        return [(0, n_samples)]
    bounds = [(i * segment_samples, (i + 1) * segment_samples) for i in range(n_samples // segment_samples)]
    if n_samples % segment_samples:
        bounds.append((n_samples - segment_samples, n_samples))
    return bounds


def segment_rms_dbfs(x: torch.Tensor) -> torch.Tensor:
    """RMS level in dBFS along the last axis (``-inf`` for digital silence). Shape ``(...,) `` from ``(..., T)``."""
    ms = x.double().pow(2).mean(dim=-1)
    return (10.0 * torch.log10(ms)).float()  # log10(0) = -inf


@dataclass
class SegmentInfo:
    """One query segment: where it lies in its file, its level, and whether it was used."""

    file: str
    index: int
    start_s: float
    end_s: float
    rms_dbfs: float
    used: bool
    reason: str  # "used", "below floor", "quiet relative to file"

    def describe(self) -> str:
        level = "-inf" if math.isinf(self.rms_dbfs) else f"{self.rms_dbfs:.1f}"
        return f"{self.file} [{self.start_s:.2f}-{self.end_s:.2f} s] {level} dBFS: {self.reason}"


@dataclass
class FileEmbedding:
    """The embedding of one query file."""

    file: str
    latent: torch.Tensor  # (latent_dim,)
    segments: list[SegmentInfo]


@dataclass
class AudioQueryResult:
    """The condition of an audio query and how it was made.

    Attributes:
        condition: ``(latent_dim,)`` mean over files of the per-file means.
        files: one :class:`FileEmbedding` per file, in input order.
    """

    condition: torch.Tensor
    files: list[FileEmbedding] = field(default_factory=list)

    @property
    def segments(self) -> list[SegmentInfo]:
        return [s for f in self.files for s in f.segments]

    def report_lines(self) -> list[str]:
        """Human-readable lines, one per segment (for ``--verbose``)."""
        return [s.describe() for s in self.segments]


class AudioQueryEncoder:
    """Turns example recordings into a condition vector through a frozen detector.

    Args:
        detector: module whose forward maps ``(batch, samples)`` float32 at ``sample_rate`` to a dict with
            ``"latent"`` ``(batch, latent_dim)``; it must accept inputs shorter than its clip length (HTS-AT's
            infer-mode tiling). A stand-in works the same way.
        sample_rate: the detector's rate; None reads ``detector.config.sample_rate`` / ``detector.sample_rate``.
        segment_seconds: query segment length (2 s, as the official query path).
        relative_db: drop segments more than this many dB below the file's loudest segment (``inf``: off).
        floor_dbfs: drop segments whose RMS is at or below this level.
        batch_size: segments per detector call.
    """

    def __init__(
        self,
        detector: nn.Module,
        sample_rate: int | None = None,
        segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
        relative_db: float = DEFAULT_RELATIVE_DB,
        floor_dbfs: float = DEFAULT_FLOOR_DBFS,
        batch_size: int = 16,
    ) -> None:
        rate = sample_rate if sample_rate is not None else detector_sample_rate(detector)
        if rate is None:
            raise QueryError(
                "the detector declares no sample rate (no .cfg/.config.sample_rate or .sample_rate); pass sample_rate="
            )
        if segment_seconds <= 0:
            raise QueryError(f"segment_seconds must be positive, got {segment_seconds}")
        if relative_db < 0:
            raise QueryError(f"relative_db must be >= 0 (or inf), got {relative_db}")
        if batch_size < 1:
            raise QueryError(f"batch_size must be >= 1, got {batch_size}")
        self.detector = detector
        self.sample_rate = int(rate)
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = int(round(segment_seconds * self.sample_rate))
        self.relative_db = float(relative_db)
        self.floor_dbfs = float(floor_dbfs)
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        p = next(self.detector.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def latents(self, segments: torch.Tensor) -> torch.Tensor:
        """Detector latents of equal-length segments ``(n, samples)`` -> ``(n, latent_dim)`` float32 on CPU."""
        if segments.ndim != 2:
            raise ValueError(f"expected (n, samples), got shape {tuple(segments.shape)}")
        was_training = self.detector.training
        self.detector.eval()
        out = []
        try:
            for i in range(0, segments.shape[0], self.batch_size):
                chunk = segments[i : i + self.batch_size].to(self.device, torch.float32)
                res = self.detector(chunk)
                if not isinstance(res, dict) or "latent" not in res:
                    raise QueryError("the detector's forward must return a dict with a 'latent' entry (batch, dim)")
                lat = res["latent"]
                if lat.ndim != 2 or lat.shape[0] != chunk.shape[0]:
                    raise QueryError(f"detector latent has shape {tuple(lat.shape)}; expected ({chunk.shape[0]}, dim)")
                out.append(lat.detach().float().cpu())
        finally:
            self.detector.train(was_training)
        return torch.cat(out, dim=0)

    def gate(self, rms_dbfs: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Which segments of ONE file pass the energy gate. ``rms_dbfs (n,)`` -> (bool mask ``(n,)``, reasons)."""
        loudest = float(rms_dbfs.max())
        used, reasons = [], []
        for v in rms_dbfs.tolist():
            if not v > self.floor_dbfs:
                used.append(False)
                reasons.append(f"below floor ({self.floor_dbfs:g} dBFS)")
            elif v < loudest - self.relative_db:
                used.append(False)
                reasons.append(f"more than {self.relative_db:g} dB below the loudest segment")
            else:
                used.append(True)
                reasons.append("used")
        return torch.tensor(used, dtype=torch.bool), reasons

    # ------------------------------------------------------------------ encoding
    def encode_waveform(self, wav: torch.Tensor, name: str = "<waveform>") -> FileEmbedding:
        """Embed one recording already at ``self.sample_rate``.

        Args:
            wav: ``(time,)`` or ``(channels, time)``; channels are averaged to mono.
            name: used in reports and errors.
        """
        if wav.ndim == 1:
            wav = wav[None]
        if wav.ndim != 2:
            raise QueryError(f"{name}: expected (channels, time) audio, got shape {tuple(wav.shape)}")
        mono = audio_io.to_channels(wav.float(), 1)[0]  # (time,)
        if mono.numel() == 0:
            raise NoUsableAudioError(f"{name}: the query audio is empty")
        audio_io.check_finite(mono, name)
        bounds = segment_bounds(mono.shape[-1], self.segment_samples)
        segs = torch.stack([mono[a:b] for a, b in bounds]) if len(bounds) > 1 else mono[None]  # (n_seg, seg_samples)
        levels = segment_rms_dbfs(segs)  # (n_seg,)
        mask, reasons = self.gate(levels)
        infos = [
            SegmentInfo(
                file=name,
                index=i,
                start_s=a / self.sample_rate,
                end_s=b / self.sample_rate,
                rms_dbfs=float(levels[i]),
                used=bool(mask[i]),
                reason=reasons[i],
            )
            for i, (a, b) in enumerate(bounds)
        ]
        self._check_usable(name, levels, mask)
        lat = self.latents(segs[mask])  # (n_used, latent_dim)
        return FileEmbedding(file=name, latent=lat.mean(dim=0), segments=infos)

    def _check_usable(self, name: str, levels: torch.Tensor, mask: torch.Tensor) -> None:
        if not bool(mask.any()):
            loudest = float(levels.max())
            lvl = "digital silence" if math.isinf(loudest) else f"{loudest:.1f} dBFS"
            raise NoUsableAudioError(
                f"{name}: no usable audio in the query file: every {self.segment_seconds:g}-s segment is at or "
                f"below the {self.floor_dbfs:g} dBFS floor (loudest segment: {lvl}); use a recording of the "
                "sound you want, or lower the floor"
            )

    def encode_file(self, path: str | os.PathLike) -> FileEmbedding:
        """Embed one file, streamed: its segments are read, down-mixed and resampled ``batch_size`` at a time
        (:meth:`qsep_core.audio.AudioReader.read_resampled`), so memory does not grow with the file's length.
        Segments, gate and result are those of :meth:`encode_waveform` on the whole file (to float rounding);
        latents are computed for the segments above the floor, and the relative gate is applied at the end."""
        name = str(path)
        with audio_io.AudioReader(path) as reader:
            n = reader.resampled_frames(self.sample_rate)
            bounds = segment_bounds(n, self.segment_samples)
            levels: list[torch.Tensor] = []
            latents: dict[int, torch.Tensor] = {}
            for i0 in range(0, len(bounds), self.batch_size):
                part = bounds[i0: i0 + self.batch_size]
                segs = torch.stack([reader.read_resampled(a, b - a, self.sample_rate, channels=1)[0] for a, b in part])
                lv = segment_rms_dbfs(segs)  # (n_part,)
                above = lv > self.floor_dbfs
                if bool(above.any()):
                    for i, lat in zip(torch.nonzero(above).flatten().tolist(), self.latents(segs[above])):
                        latents[i0 + i] = lat
                levels.append(lv)
        level = torch.cat(levels)
        mask, reasons = self.gate(level)
        infos = [
            SegmentInfo(file=name, index=i, start_s=a / self.sample_rate, end_s=b / self.sample_rate,
                        rms_dbfs=float(level[i]), used=bool(mask[i]), reason=reasons[i])
            for i, (a, b) in enumerate(bounds)
        ]
        self._check_usable(name, level, mask)
        lat = torch.stack([latents[i] for i in torch.nonzero(mask).flatten().tolist()])  # (n_used, latent_dim)
        return FileEmbedding(file=name, latent=lat.mean(dim=0), segments=infos)

    def encode_files(self, paths: Sequence[str | os.PathLike]) -> AudioQueryResult:
        """Condition of a query made of one or more files: mean over files of per-file segment means."""
        if not paths:
            raise QueryError("an audio query needs at least one file")
        files = [self.encode_file(Path(p)) for p in paths]
        cond = torch.stack([f.latent for f in files]).mean(dim=0)  # (latent_dim,)
        return AudioQueryResult(condition=cond, files=files)

    def encode_waveforms(self, waves: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> AudioQueryResult:
        """Like :meth:`encode_files` for in-memory recordings at ``self.sample_rate``."""
        if not waves:
            raise QueryError("an audio query needs at least one recording")
        names = list(names) if names is not None else [f"<waveform {i}>" for i in range(len(waves))]
        files = [self.encode_waveform(w, n) for w, n in zip(waves, names)]
        cond = torch.stack([f.latent for f in files]).mean(dim=0)
        return AudioQueryResult(condition=cond, files=files)

    def describe(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "segment_seconds": self.segment_seconds,
            "relative_db": self.relative_db,
            "floor_dbfs": self.floor_dbfs,
        }
