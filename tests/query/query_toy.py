"""Stand-ins for the query tests: a fixed random detector and toy sound classes (tones / noise bands)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

TOY_RATE = 8000
TOY_LATENT_DIM = 32


class FakeDetector(nn.Module):
    """A fixed random encoder with the detector's interface: ``(batch, samples) -> {"latent": (batch, dim), ...}``.

    Latent = tanh(W @ log band energies + b) with seeded random W: different spectra give different latents,
    equal inputs give equal latents; any input length works. Records the lengths it was called with.
    """

    def __init__(self, sample_rate: int = TOY_RATE, latent_dim: int = TOY_LATENT_DIM, n_fft: int = 256, seed: int = 0):
        super().__init__()
        self.config = SimpleNamespace(sample_rate=sample_rate)
        g = torch.Generator().manual_seed(seed)
        n_bins = n_fft // 2 + 1
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft))
        self.proj = nn.Linear(n_bins, latent_dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(latent_dim, n_bins, generator=g) / math.sqrt(n_bins))
            self.proj.bias.copy_(0.1 * torch.randn(latent_dim, generator=g))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append(tuple(x.shape))
        spec = torch.stft(x, self.n_fft, self.n_fft // 2, window=self.window, return_complex=True).abs() ** 2
        feat = torch.log10(spec.mean(dim=-1) + 1e-8)  # (batch, bins)
        latent = torch.tanh(self.proj(feat) / 4)
        return {"latent": latent, "clipwise": torch.sigmoid(latent[:, :4]), "framewise": latent[:, None, :4]}


def build_fake_detector(config: dict) -> FakeDetector:
    """Checkpoint-builder signature (config dict -> module), for model folders made in tests."""
    return FakeDetector(**config)


def tone(freq: float, seconds: float, rate: int = TOY_RATE, amp: float = 0.5, phase: float = 0.0) -> torch.Tensor:
    t = torch.arange(int(round(seconds * rate))) / rate
    return amp * torch.sin(2 * math.pi * freq * t + phase)


def noise_band(lo: float, hi: float, seconds: float, g: torch.Generator, rate: int = TOY_RATE, amp: float = 0.3) -> torch.Tensor:
    n = int(round(seconds * rate))
    spec = torch.fft.rfft(torch.randn(n, generator=g))
    f = torch.fft.rfftfreq(n, 1 / rate)
    spec[(f < lo) | (f > hi)] = 0
    x = torch.fft.irfft(spec, n)
    return amp * x / x.abs().max()


#: toy classes: a real-sound name (for the text side) and a synthetic signal recipe (tones / noise bands)
TOY_CLASSES = {
    "dog barking": ("tone", 300.0),
    "church bell": ("tone", 1200.0),
    "siren": ("tone", 2500.0),
    "rain": ("noise", (2000.0, 3800.0)),
    "car engine": ("noise", (40.0, 250.0)),
    "speech": ("noise", (300.0, 900.0)),
    "guitar": ("tone", 600.0),
    "thunder": ("noise", (100.0, 500.0)),
}


def toy_clip(name: str, g: torch.Generator, seconds: float = 0.5) -> torch.Tensor:
    kind, p = TOY_CLASSES[name]
    if kind == "tone":
        f = p * (1 + 0.03 * float(torch.randn(1, generator=g)))
        x = tone(f, seconds, phase=float(torch.rand(1, generator=g)) * 6.28) + tone(2 * f, seconds, amp=0.2)
    else:
        x = noise_band(p[0], p[1], seconds, g)
    return x + 0.003 * torch.randn(x.shape, generator=g)
