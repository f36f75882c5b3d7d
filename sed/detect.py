"""Sound event detection on files: frame-wise probabilities -> events (label, start, end, confidence).

Used by ``qsep detect``. Files of any length go through :class:`sed.htsat.HTSAT` (windowed
above one clip). Short files use the plain stretch (``tile=False``, the official eval path),
so the frame axis is monotone in time.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sed.htsat import HTSAT

__all__ = [
    "Event", "Detection", "events_from_framewise", "detect_wave", "detect_file", "class_label", "plot_detection",
    "MIN_DETECT_SECONDS",
]

#: shortest input :func:`detect_wave` accepts (10 HTS-AT frames): a shorter one would be tiled into a
#: 10-s clip of a few repeated samples, and its "events" would mean nothing
MIN_DETECT_SECONDS = 0.1


@dataclass(frozen=True)
class Event:
    """One detected event: class ``label`` (index ``index``) active from ``start`` to ``end`` seconds."""

    label: str
    index: int
    start: float
    end: float
    confidence: float


@dataclass
class Detection:
    """Detections of one file."""

    path: str
    duration: float
    events: list[Event]
    clipwise: dict[str, float] = field(default_factory=dict)  # top classes of the whole file
    framewise: torch.Tensor | None = None  # (frames, classes), kept for plotting
    frame_times: torch.Tensor | None = None

    def to_json(self) -> dict:
        return {
            "file": self.path,
            "duration": self.duration,
            "events": [asdict(e) for e in self.events],
            "clipwise": self.clipwise,
        }


def class_label(index: int, class_names: Sequence[str] | None) -> str:
    """The class name, or ``class_<index>`` when the model carries no names."""
    return class_names[index] if class_names is not None else f"class_{index}"


class _Runs:
    """Runs of frames above a threshold, per class, fed frames in order (so long files never need all their
    frames at once). A run ends where the first frame below the threshold starts, or at ``duration``."""

    def __init__(self, n_classes: int, threshold: float):
        self.threshold = threshold
        self.active = np.zeros(n_classes, dtype=bool)
        self.start = np.zeros(n_classes)
        self.peak = np.full(n_classes, -np.inf)
        self.found: list[tuple[int, float, float, float]] = []  # (class, start, end, peak)

    def feed(self, frames: np.ndarray, times: np.ndarray) -> None:
        """``frames (m, classes)`` probabilities of the next ``m`` frames starting at ``times (m,)`` seconds."""
        if frames.shape[0] == 0:
            return
        act = frames > self.threshold
        prev = np.concatenate([self.active[None], act[:-1]])
        starts, ends = act & ~prev, ~act & prev
        for k in np.nonzero(act.any(0) | self.active)[0]:
            col, running, since = frames[:, k], bool(self.active[k]), 0
            for t in np.nonzero(starts[:, k] | ends[:, k])[0]:
                if ends[t, k]:
                    peak = max(self.peak[k], float(col[since:t].max())) if t > since else self.peak[k]
                    self.found.append((int(k), float(self.start[k]), float(times[t]), peak))
                    running = False
                else:
                    self.start[k], self.peak[k], since, running = times[t], -np.inf, t, True
            if running:
                self.peak[k] = max(self.peak[k], float(col[since:].max()))
            self.active[k] = running

    def events(self, duration: float, classes: Sequence[int] | None, class_names: Sequence[str] | None) -> list[Event]:
        """The runs as events (open runs end at ``duration``), for ``classes`` only (None: all), sorted."""
        found = self.found + [(int(k), float(self.start[k]), duration, float(self.peak[k]))
                              for k in np.nonzero(self.active)[0]]
        keep = None if classes is None else set(int(c) for c in classes)
        events = []
        for k, start, end, peak in found:
            end = min(end, duration)
            if (keep is not None and k not in keep) or end <= start:
                continue  # a run that starts at or after the end of the signal covers no audio
            events.append(Event(class_label(k, class_names), k, round(start, 3), round(end, 3), round(float(peak), 4)))
        return sorted(events, key=lambda e: (e.start, e.label))


def events_from_framewise(
    framewise: torch.Tensor,
    frame_times: torch.Tensor,
    duration: float,
    threshold: float = 0.5,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[Event]:
    """Runs of frames above ``threshold``, per class.

    Args:
        framewise: ``(frames, classes)`` probabilities.
        frame_times: ``(frames,)`` increasing start time (s) of each frame.
        duration: length of the signal (s); the last frame ends there.
        classes: class indices to consider (None: all).

    Returns:
        Events sorted by start time, then label. An event ends where the next frame starts.
    """
    if framewise.dim() != 2 or framewise.shape[0] != frame_times.shape[0]:
        raise ValueError(f"framewise {tuple(framewise.shape)} does not match frame_times {tuple(frame_times.shape)}")
    runs = _Runs(framewise.shape[1], threshold)
    runs.feed(framewise.float().numpy(), frame_times.double().numpy())
    return runs.events(duration, classes, class_names)


#: frames kept per file for plotting: a longer file keeps the maximum over bins of frames (memory stays bounded)
PLOT_FRAMES = 4000


def _overflow(path: str, peak: float) -> ValueError:
    why = (f"the input peaks at {peak:.3g}, far beyond full scale (1.0): scale it down" if peak > 1e3
           else f"the input is finite (peak {peak:.3g}): the model is broken")
    return ValueError(f"{path or 'the signal'}: the detector's scores overflowed to NaN/inf; {why}")


@torch.no_grad()
def detect_wave(
    model: HTSAT,
    wave: torch.Tensor,
    threshold: float = 0.5,
    top_k: int | None = None,
    path: str = "",
) -> Detection:
    """Events in one mono signal.

    Args:
        wave: ``(samples,)`` at ``model.cfg.sample_rate``.
        top_k: only the ``top_k`` classes with the highest clip-wise probability (None: all).

    Raises:
        ValueError: a malformed argument, a signal shorter than :data:`MIN_DETECT_SECONDS`, or a model output
            that is not finite (the message gives the input's peak).
    """
    cfg = model.cfg
    if wave.dim() != 1:
        raise ValueError(f"expected a mono (samples,) signal, got shape {tuple(wave.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if wave.shape[-1] < MIN_DETECT_SECONDS * cfg.sample_rate:
        raise ValueError(f"{path or 'the signal'} is {wave.shape[-1] / cfg.sample_rate * 1000:.1f} ms long; detection "
                         f"needs at least {MIN_DETECT_SECONDS * 1000:.0f} ms of audio")
    device = next(model.parameters()).device
    out = model(wave[None].to(device), tile=False)
    clip = out["clipwise"][0].cpu()
    frame = out["framewise"][0].cpu()
    if not (bool(torch.isfinite(clip).all()) and bool(torch.isfinite(frame).all())):
        raise _overflow(path, float(wave.abs().max()))
    times = out["frame_times"].cpu()
    k = cfg.num_classes if top_k is None else min(top_k, cfg.num_classes)
    top = torch.topk(clip, k).indices.tolist()
    duration = wave.shape[-1] / cfg.sample_rate
    names = model.class_names
    events = events_from_framewise(frame, times, duration, threshold, top, names)
    shown = top[: min(k, 10)]
    clipwise = {class_label(i, names): round(float(clip[i]), 4) for i in shown}
    return Detection(path, round(duration, 3), events, clipwise, frame, times)


@torch.no_grad()
def detect_file(model: HTSAT, path: str | os.PathLike, threshold: float = 0.5, top_k: int | None = None) -> Detection:
    """Events in an audio file (any rate / channels: mixed to mono, resampled to the model's rate).

    Streamed: a file longer than one clip is read window by window
    (:meth:`qsep_core.audio.AudioReader.read_resampled`, :meth:`sed.htsat.HTSAT.iter_long`) and its events are
    found as its frames become final, so memory does not grow with the length; the events, clip-wise scores
    and frames equal :func:`detect_wave` on the whole signal. ``Detection.framewise`` keeps at most
    :data:`PLOT_FRAMES` frames (for plots): the maximum over bins of frames when the file is longer.

    Raises:
        qsep_core.audio.AudioError: the file is missing, unreadable, empty or not finite.
        ValueError: as :func:`detect_wave` (too short, scores not finite).
    """
    from qsep_core.audio import AudioReader

    cfg = model.cfg
    rate, clip = cfg.sample_rate, cfg.clip_samples
    with AudioReader(path) as reader:
        n = reader.resampled_frames(rate)
        if n <= clip:
            wave = reader.read_resampled(0, n, rate, channels=1)[0]
            return detect_wave(model, wave, threshold, top_k, str(path))
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        total = cfg.frames(n)
        step = cfg.hop_length / rate
        pool = max(1, -(-total // PLOT_FRAMES))  # frames per plotted bin
        pooled = torch.zeros(-(-total // pool), cfg.num_classes)
        runs = _Runs(cfg.num_classes, threshold)
        peak = 0.0

        def read(row: int, start: int) -> torch.Tensor:
            nonlocal peak
            window = reader.read_resampled(start, clip, rate, channels=1)[0]
            peak = max(peak, float(window.abs().max()))
            return window

        result: dict[str, torch.Tensor] = {}
        for first, frames in model.iter_long(read, 1, n, True, result):
            fr = frames[0].float().cpu()  # (m, classes)
            if not bool(torch.isfinite(fr).all()):
                raise _overflow(str(path), peak)
            times = torch.arange(first, first + fr.shape[0], dtype=torch.float64) * step
            runs.feed(fr.numpy(), times.numpy())
            bins = (torch.arange(first, first + fr.shape[0]) // pool)[:, None].expand_as(fr)
            pooled.scatter_reduce_(0, bins, fr, reduce="amax", include_self=True)
    clipwise = result["clipwise"][0].float().cpu()
    if not bool(torch.isfinite(clipwise).all()):
        raise _overflow(str(path), peak)
    k = cfg.num_classes if top_k is None else min(top_k, cfg.num_classes)
    top = torch.topk(clipwise, k).indices.tolist()
    duration = n / rate
    names = model.class_names
    events = runs.events(duration, top, names)
    clip_scores = {class_label(i, names): round(float(clipwise[i]), 4) for i in top[: min(k, 10)]}
    pooled_times = (torch.arange(pooled.shape[0], dtype=torch.float64) * pool * step).float()
    return Detection(str(path), round(duration, 3), events, clip_scores, pooled, pooled_times)


def plot_detection(det: Detection, path: str | os.PathLike, n_classes: int = 5,
                   class_names: Sequence[str] | None = None, threshold: float | None = None) -> Path:
    """Draw the frame-wise probability of the ``n_classes`` top classes of ``det`` to an image file, with the
    event ``threshold`` (when given) as a dashed line and the legend outside the curves.

    Raises:
        qsep_core.extras.MissingExtraError: matplotlib (the ``plots`` extra) is not installed.
        ValueError: ``det`` carries no frame-wise output.
        OSError: the image cannot be written.
    """
    from qsep_core.extras import require

    matplotlib = require("matplotlib", "plots", "plotting detections")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if det.framewise is None or det.frame_times is None:
        raise ValueError("this detection carries no frame-wise output to plot")
    peak = det.framewise.max(dim=0).values
    top = torch.topk(peak, min(n_classes, peak.numel())).indices.tolist()
    fig, ax = plt.subplots(figsize=(12, 3.5))
    t = det.frame_times.numpy()
    for k in top:
        ax.plot(t, det.framewise[:, k].numpy(), label=class_label(k, class_names), lw=1.2)
    if threshold is not None:
        ax.axhline(threshold, color="0.3", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max(det.duration, float(t[-1]) if len(t) else 0.0))
    ax.set_title(Path(det.path).name or "detection")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
