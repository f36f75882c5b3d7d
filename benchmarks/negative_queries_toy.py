"""Data for a toy run of benchmarks/negative_queries.py: 5 synthetic classes, a random tiny HTS-AT, mined segments.

    python -m benchmarks.negative_queries_toy WORK_DIR
    OMP_NUM_THREADS=1 qsep train separator --config configs/separator_tiny.yaml --manifest WORK_DIR/mined \
        --detector WORK_DIR/det --out WORK_DIR/sep max_steps=200 batch_size=8 num_workers=0 accelerator=cpu \
        devices=1 progress=false epoch_size=400 mixing.val_size=8 "model.channels=[8,16,32,64]" model.bottleneck=64
    OMP_NUM_THREADS=1 python -m benchmarks.negative_queries --model WORK_DIR/sep/model --corpus WORK_DIR/corpus \
        --mixtures-per-pair 3 --seconds 2 --strengths 0.25 0.5 1.0

Classes: a 110 Hz and a 1.8 kHz harmonic tone (random pitch +-5 %, slow amplitude envelope), noise bands
5-12 kHz and 30-300 Hz, and a linear chirp; 40 two-second segments each for training, 4 separate files each
for the benchmark corpus (file 0 of each class is the audio query). Latents come from the detector with
random weights (it only has to tell spectra apart). About 25 s on 2 CPU cores; training about 3 min.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable

import torch

from qsep_core.constants import ANCHOR_SECONDS as SEGMENT_SECONDS
from qsep_core.constants import SAMPLE_RATE as RATE  # the tiny HTS-AT preset's rate (checked below)

TRAIN_PER_CLASS = 40
CORPUS_PER_CLASS = 4


def recipes(g: torch.Generator, n: int, rate: int) -> dict[str, Callable[[], torch.Tensor]]:
    """Class name -> a function making one random ``(n,)`` example of it."""
    t = torch.arange(n) / rate

    def band(lo: float, hi: float) -> torch.Tensor:
        spec = torch.fft.rfft(torch.randn(n, generator=g))
        f = torch.fft.rfftfreq(n, 1 / rate)
        spec[(f < lo) | (f > hi)] = 0
        x = torch.fft.irfft(spec, n)
        return 0.3 * x / x.abs().max()

    def harmonic(f0: float) -> torch.Tensor:
        f = f0 * (1 + 0.05 * float(torch.randn(1, generator=g)))
        env = 0.5 + 0.5 * torch.sin(2 * math.pi * float(0.5 + torch.rand(1, generator=g)) * t).abs()
        return 0.3 * env * sum(torch.sin(2 * math.pi * k * f * t) / k for k in (1, 2, 3))

    def chirp() -> torch.Tensor:
        rate_scale = float(1 + 0.1 * torch.randn(1, generator=g))
        return 0.3 * torch.sin(2 * math.pi * (400 * t + 600 * t**2 * rate_scale))

    return {
        "low hum": lambda: harmonic(110.0),
        "whistle": lambda: harmonic(1800.0),
        "hiss": lambda: band(5000.0, 12000.0),
        "rumble": lambda: band(30.0, 300.0),
        "chirp": chirp,
    }


def main(work: Path) -> None:
    from sed import mining
    from sed.config import htsat_config
    from sed.htsat import HTSAT
    from qsep_core import audio as audio_io
    from separator.checkpoint import Component, save_model
    from qsep_core.config import to_dict

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = htsat_config("tiny")
    assert cfg.sample_rate == RATE, cfg.sample_rate
    det = HTSAT(cfg).eval()
    save_model(work / "det", {"detector": Component("htsat", to_dict(cfg), det.state_dict())}, overwrite=True)
    g = torch.Generator().manual_seed(0)
    n = int(SEGMENT_SECONDS * RATE)
    make = recipes(g, n, RATE)
    names = list(make)
    segments, audio = [], []
    for k, name in enumerate(names):
        for i in range(TRAIN_PER_CLASS):
            audio.append(make[name]())
            segments.append({
                "clip_id": f"{name}-{i}", "clip_index": len(segments), "audio_path": "", "label": k,
                "label_name": name, "clip_labels": (k,), "start": 0.0, "end": SEGMENT_SECONDS, "confidence": 1.0,
            })
    audio_t = torch.stack(audio)  # (segments, samples)
    with torch.no_grad():
        latents = torch.cat([det(audio_t[i : i + 20])["latent"] for i in range(0, len(audio_t), 20)])
    mining.write_manifest(work / "mined", segments, latents, RATE, class_names=names, audio=audio_t)
    for name in names:
        folder = work / "corpus" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(CORPUS_PER_CLASS):
            audio_io.save(folder / f"{i}.wav", make[name]()[None], RATE, bit_depth="32f")
    print(f"toy data in {work}: mined/ (training segments), det/ (detector), corpus/ (benchmark files)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/negative_queries_toy"))
