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
    times = frame_times.double().tolist()
    ends = times[1:] + [duration]
    idx = range(framewise.shape[1]) if classes is None else classes
    events: list[Event] = []
    for k in idx:
        col = framewise[:, k]
        active = (col > threshold).tolist()
        j = 0
        while j < len(active):
            if not active[j]:
                j += 1
                continue
            s = j
            while j < len(active) and active[j]:
                j += 1
            conf = float(col[s:j].max())
            if min(ends[j - 1], duration) <= times[s]:
                continue  # a run that starts at or after the end of the signal covers no audio
            events.append(Event(class_label(k, class_names), int(k), round(times[s], 3),
                                round(min(ends[j - 1], duration), 3), round(conf, 4)))
    return sorted(events, key=lambda e: (e.start, e.label))


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
        peak = float(wave.abs().max())
        why = (f"the input peaks at {peak:.3g}, far beyond full scale (1.0): scale it down" if peak > 1e3
               else f"the input is finite (peak {peak:.3g}): the model is broken")
        raise ValueError(f"{path or 'the signal'}: the detector's scores overflowed to NaN/inf; {why}")
    times = out["frame_times"].cpu()
    k = cfg.num_classes if top_k is None else min(top_k, cfg.num_classes)
    top = torch.topk(clip, k).indices.tolist()
    duration = wave.shape[-1] / cfg.sample_rate
    names = model.class_names
    events = events_from_framewise(frame, times, duration, threshold, top, names)
    shown = top[: min(k, 10)]
    clipwise = {class_label(i, names): round(float(clip[i]), 4) for i in shown}
    return Detection(path, round(duration, 3), events, clipwise, frame, times)


def detect_file(model: HTSAT, path: str | os.PathLike, threshold: float = 0.5, top_k: int | None = None) -> Detection:
    """Events in an audio file (any rate / channels: mixed to mono, resampled to the model's rate).

    Raises:
        qsep_core.audio.AudioError: the file is missing, unreadable, empty or not finite.
        ValueError: as :func:`detect_wave` (too short, scores not finite).
    """
    from qsep_core.audio import load

    wav, _ = load(path, sample_rate=model.cfg.sample_rate, channels=1)
    return detect_wave(model, wav[0], threshold, top_k, str(path))


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
