"""Stand-ins with known outputs for the pipeline tests (a detector, a weak-label dataset)."""
from __future__ import annotations

import torch
from torch import nn

#: the fake detector runs at this rate; one frame is FRAME samples (0.1 s)
RATE = 1000
FRAME = 100


class FakeDetector(nn.Module):
    """Frame-wise probabilities read straight off the waveform (HTS-AT's output contract).

    Class 0 probability of a frame = mean of ``clamp(x, 0, 1)`` over the frame; class 1 = mean of
    ``clamp(-x, 0, 1)``. Latent (3,) = (mean of x, mean of |x|, seconds of input). Frames are
    ``FRAME`` samples, frame times are their start times.
    """

    sample_rate = RATE

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # something for Lightning to place on a device
        self.calls = 0

    def forward(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        b, t = wav.shape
        frames = t // FRAME
        x = wav[:, : frames * FRAME].reshape(b, frames, FRAME)  # (batch, frames, samples per frame)
        pos = x.clamp(0, 1).mean(-1)
        neg = (-x).clamp(0, 1).mean(-1)
        framewise = torch.stack([pos, neg], dim=-1) + 0 * self.dummy  # (batch, frames, 2)
        latent = torch.stack([wav.mean(-1), wav.abs().mean(-1), torch.full((b,), t / RATE)], dim=-1)
        return {
            "framewise": framewise,
            "clipwise": framewise.amax(1),
            "latent": latent,
            "frame_times": torch.arange(frames, dtype=torch.float64) * FRAME / RATE,
        }


class PlantedDataset(torch.utils.data.Dataset):
    """Clips with planted events: ``events[i]`` = list of (class, start s, end s); class 0 is +1, class 1 is -1."""

    class_names = ["up", "down"]

    def __init__(self, events: list[list[tuple[int, float, float]]], seconds: float | list[float] = 10.0):
        self.events = events
        self.seconds = seconds if isinstance(seconds, list) else [seconds] * len(events)
        self.paths = [f"/data/clip{i}.wav" for i in range(len(events))]

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int):
        wav = torch.zeros(int(round(self.seconds[i] * RATE)))
        target = torch.zeros(2)
        for k, a, b in self.events[i]:
            wav[int(a * RATE): int(b * RATE)] = 1.0 if k == 0 else -1.0
            target[k] = 1.0
        return wav, target, f"clip{i}"


# ---------------------------------------------------------------------------------------------
# a tiny synthetic segment set for separator training

SYN_RATE = 8000
SYN_CLASSES = ["low tone", "high noise", "mid tone"]


def synthetic_source(kind: int, seconds: float, g: torch.Generator) -> torch.Tensor:
    """(samples,) one source of class ``kind``: 0 low harmonic tone, 1 high-band noise, 2 mid tone."""
    n = int(seconds * SYN_RATE)
    t = torch.arange(n) / SYN_RATE
    if kind == 1:
        spec = torch.fft.rfft(torch.randn(n, generator=g))
        f = torch.fft.rfftfreq(n, 1 / SYN_RATE)
        spec[(f < 2200) | (f > 3600)] = 0
        x = torch.fft.irfft(spec, n)
    else:
        f0 = (150 + 150 * torch.rand((), generator=g)) * (1 if kind == 0 else 4)
        x = sum(torch.sin(2 * torch.pi * f0 * h * t + 6.28 * torch.rand((), generator=g)) / h for h in (1, 2, 3))
    env = 0.5 + 0.5 * torch.sin(2 * torch.pi * (0.5 + torch.rand((), generator=g)) * t) ** 2
    x = x * env
    return (0.1 * x / x.pow(2).mean().sqrt()).float()


def class_latent(labels: list[int], g: torch.Generator, dim: int = 8) -> torch.Tensor:
    """(dim,) a latent that says which classes are present (one-hot sum + small noise)."""
    z = 0.05 * torch.randn(dim, generator=g)
    for k in labels:
        z[k] += 1.0
    return z


def write_synthetic_manifest(folder, per_class: int = 8, seconds: float = 1.0, seed: int = 0, with_files: bool = False,
                             extra_multi_label: bool = True):
    """A mining folder with ``per_class`` one-label segments per class (+ a few two-label ones) at SYN_RATE.

    With ``with_files`` the audio goes to wav files (read back through qsep_core.audio), else it is stored.
    """
    from qsep_core import audio as qaudio
    from sed.mining import write_manifest

    g = torch.Generator().manual_seed(seed)
    rows, lats, wavs = [], [], []
    specs = [[k] for k in range(len(SYN_CLASSES)) for _ in range(per_class)]
    if extra_multi_label:
        specs += [[0, 2], [0, 2], [1, 2]]
    for i, labels in enumerate(specs):
        wav = sum(synthetic_source(k, seconds, g) for k in labels)
        path = ""
        if with_files:
            path = str(folder / "audio" / f"seg{i}.wav")
            (folder / "audio").mkdir(parents=True, exist_ok=True)
            qaudio.save(path, wav[None], SYN_RATE, bit_depth="32f")
        rows.append({"clip_id": f"clip{i}", "clip_index": i, "audio_path": path, "label": labels[0],
                     "label_name": SYN_CLASSES[labels[0]], "clip_labels": labels, "start": 0.0, "end": seconds,
                     "confidence": 0.9})
        lats.append(class_latent(labels, g))
        wavs.append(wav)
    return write_manifest(folder / "mined", rows, torch.stack(lats), SYN_RATE, SYN_CLASSES,
                          audio=None if with_files else torch.stack(wavs), segment_seconds=seconds)


def tiny_unet_overrides() -> dict:
    """QueryUNet field changes for a CPU-fast model at SYN_RATE."""
    return {"sample_rate": SYN_RATE, "n_fft": 128, "hop_length": 32, "channels": [8, 16], "bottleneck": 16,
            "freq_fold": 2, "mask": "magnitude"}
