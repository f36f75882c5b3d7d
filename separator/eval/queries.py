"""Stem queries for MUSDB18 built from its train set, cached as embeddings.

As the ZS-ASS evaluation did, the query for a stem is an average of latent embeddings of that
stem's non-silent 2-s segments from MUSDB18 *train* tracks (the separator is never trained on
MUSDB18; the test tracks are never used for queries). qsep makes the choice explicit and
bounded: all non-overlapping 2-s segments of each train track's stem (mono) whose RMS is above
``min_rms_dbfs`` are candidates, ``segments_per_stem`` of them (64 by default) are drawn with a
seeded generator, written per track as wav files under ``<query_dir>/audio/<stem>/`` and handed
to the embedding callable, which averages per file then across files (as the official
query processor). The result is saved as ``<query_dir>/<stem>.npy`` plus ``<stem>.json``
(which segments, which embedder, the settings); a later run with the same settings reuses it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from qsep_core import audio
from qsep_core.constants import ANCHOR_SECONDS
from separator.eval.musdb import STEMS

__all__ = ["StemQueryConfig", "build_stem_queries", "DEFAULT_STEM_TEXTS"]

#: Text queries used for the MUSDB18 stems with ``--text-queries`` (documented, overridable).
DEFAULT_STEM_TEXTS = {
    "vocals": "singing voice",
    "drums": "drum kit",
    "bass": "bass guitar",
    "other": "piano, guitar and synthesizer",
}

EmbedFiles = Callable[[Sequence[Path]], torch.Tensor]


@dataclass(frozen=True)
class StemQueryConfig:
    """How stem queries are drawn from the train set.

    Attributes:
        segment_seconds: segment length (the query encoder's window).
        segments_per_stem: how many non-silent segments per stem are embedded.
        min_rms_dbfs: a segment is silent below this RMS. -58 dBFS is the official threshold
            (sum of squares 0.1 over a 2-s, 32 kHz segment) expressed per sample.
        seed: seed of the draw.
    """

    segment_seconds: float = ANCHOR_SECONDS
    segments_per_stem: int = 64
    min_rms_dbfs: float = -58.0
    seed: int = 0


def _candidates(tracks, stem: str, cfg: StemQueryConfig, load) -> list[tuple[str, int, torch.Tensor, int]]:
    """Non-silent mono segments ``(track name, segment index, (samples,) tensor, rate)``."""
    out = []
    for t in tracks:
        wav, rate = load(t, stem)  # (channels, time)
        mono = wav.mean(0)
        seg = int(round(cfg.segment_seconds * rate))
        n = mono.shape[-1] // seg
        if n == 0:
            continue
        segs = mono[: n * seg].reshape(n, seg)  # (segments, samples)
        rms = segs.pow(2).mean(-1).sqrt()
        keep = 20 * torch.log10(rms.clamp(min=1e-12)) > cfg.min_rms_dbfs
        out += [(t.name, i, segs[i], rate) for i in torch.nonzero(keep).flatten().tolist()]
    return out


def _musdb_load(track, stem: str) -> tuple[torch.Tensor, int]:
    x = torch.from_numpy(np.ascontiguousarray(track.targets[stem].audio.T)).float()  # (channels, time)
    return x, int(track.rate)


def build_stem_queries(
    train_tracks: Sequence,
    embed_files: EmbedFiles,
    query_dir: str | os.PathLike,
    stems: Sequence[str] = STEMS,
    config: StemQueryConfig = StemQueryConfig(),
    embedder_id: str = "",
    load: Callable = _musdb_load,
) -> dict[str, torch.Tensor]:
    """Query embeddings per stem from train-set stems, cached in ``query_dir``.

    Args:
        train_tracks: musdb train tracks (anything with ``.name``; ``load(track, stem)`` reads it).
        embed_files: maps a list of wav files to one embedding ``(dim,)`` (mean over each file's
            segments, then over files).
        embedder_id: identifies the embedder in the cache (e.g. the model folder); a different
            id recomputes.
        load: ``load(track, stem) -> ((channels, time) tensor, rate)``.

    Returns:
        stem -> ``(dim,)`` float32 embedding.
    """
    root = Path(query_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(t.name for t in train_tracks)
    out: dict[str, torch.Tensor] = {}
    for stem in stems:
        key = {"config": asdict(config), "embedder": embedder_id, "tracks": names, "stem": stem}
        meta_path, emb_path = root / f"{stem}.json", root / f"{stem}.npy"
        if meta_path.is_file() and emb_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                out[stem] = torch.from_numpy(np.load(emb_path, allow_pickle=False)).float()
                continue
        cands = _candidates(train_tracks, stem, config, load)
        if not cands:
            raise ValueError(f"no non-silent {config.segment_seconds}-s segment of {stem!r} in the train tracks {names}")
        gen = torch.Generator().manual_seed(config.seed)
        pick = sorted(torch.randperm(len(cands), generator=gen)[: config.segments_per_stem].tolist())
        by_track: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for i in pick:
            name, idx, seg, rate = cands[i]
            by_track.setdefault(name, []).append((idx, seg))
        files = []
        for name, segs in by_track.items():
            path = root / "audio" / stem / f"{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            audio.save(path, torch.cat([s for _, s in segs])[None], rate, bit_depth="32f")
            files.append(path)
        emb = embed_files(files).detach().float().reshape(-1)
        if not torch.isfinite(emb).all():
            raise ValueError(f"the query embedding of {stem!r} is not finite")
        np.save(emb_path, emb.numpy())
        used = {name: [i for i, _ in segs] for name, segs in by_track.items()}
        meta_path.write_text(json.dumps({"key": key, "segments": used, "n_segments": len(pick),
                                         "candidates": len(cands)}, indent=2))
        out[stem] = emb
    return out

