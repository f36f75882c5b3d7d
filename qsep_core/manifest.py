"""The mined-segment manifest: the folder ``qsep mine`` writes (:mod:`sed.mining`) and separator training reads.

Layout::

    out/
      mining.json                 format, content settings, class names, sample rate, shard count
      shards/shard-00000.safetensors   "latent" (N, D) float32 [+ "audio" (N, S), "audio_length" (N,)]
      shards/shard-00000.csv      one row per segment, columns :data:`MANIFEST_COLUMNS`:
                                  clip_id, clip_index, audio_path (relative to the manifest
                                  folder ``out/``, or absolute), label, label_name,
                                  clip_labels (';'-joined class indices), start, end, confidence,
                                  row (row in the shard's tensors)

Each shard is written atomically, tensors first and the CSV last, so a CSV marks a finished
shard (:func:`write_shard`). :func:`load_manifest` reads a finished folder; :func:`write_manifest`
writes segments found some other way (strong labels, hand-made lists) as a one-shard manifest.

Audio paths (format version 2): :func:`write_shard` stores each ``audio_path`` relative to the manifest
folder (absolute when no relative path exists, e.g. another Windows drive) and :func:`load_manifest`
returns absolute paths, so a manifest reads the same from any working directory and keeps working when
the manifest folder and the audio move together. Version 1 folders stored paths as given (relative to
the folder ``qsep mine`` ran in); they are resolved against the manifest folder's parent folders first,
then the working directory.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from qsep_core.atomic import AtomicPath, atomic_write_text
from qsep_core.constants import ANCHOR_SECONDS

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "MINING_JSON",
    "SHARD_DIR",
    "MANIFEST_COLUMNS",
    "ManifestError",
    "ManifestContent",
    "Manifest",
    "shard_paths",
    "shard_done",
    "write_shard",
    "write_meta",
    "write_manifest",
    "load_manifest",
]

MANIFEST_FORMAT = "qsep-mined-segments"
MANIFEST_FORMAT_VERSION = 2
MINING_JSON = "mining.json"
SHARD_DIR = "shards"
#: Columns of every shard CSV, in order.
MANIFEST_COLUMNS = (
    "clip_id",
    "clip_index",
    "audio_path",
    "label",
    "label_name",
    "clip_labels",
    "start",
    "end",
    "confidence",
    "row",
)


class ManifestError(ValueError):
    """A manifest folder is missing, incomplete or inconsistent, or segments cannot be written as one."""


@dataclass
class ManifestContent:
    """The settings that define a manifest's content (recorded in ``mining.json``; a resumed run must agree).

    Attributes:
        segment_seconds: anchor length in seconds (official: 2 s).
        min_prob: keep only anchors whose mean probability is at least this (None: no threshold, official).
        max_anchors: non-overlapping anchors per (clip, label).
        positive_threshold: a label counts as present in a clip when its weak target is above this.
        shard_size: clips per shard.
        store_audio: each anchor's audio (mono, detector rate) is stored in the shard; needed for datasets
            without audio files (HDF5 packs).
    """

    segment_seconds: float = ANCHOR_SECONDS
    min_prob: float | None = None
    max_anchors: int = 1
    positive_threshold: float = 0.5
    shard_size: int = 1000
    store_audio: bool = False

    def content(self) -> dict[str, Any]:
        """The content fields as a dict (those of :class:`ManifestContent`, also on subclasses)."""
        return {f.name: getattr(self, f.name) for f in fields(ManifestContent)}


def shard_paths(out_dir: str | os.PathLike, index: int) -> tuple[Path, Path]:
    """``(csv, safetensors)`` paths of shard ``index``."""
    base = Path(out_dir) / SHARD_DIR / f"shard-{index:05d}"
    return base.with_suffix(".csv"), base.with_suffix(".safetensors")


def shard_done(out_dir: str | os.PathLike, index: int) -> bool:
    """Whether shard ``index`` was written completely (both files present)."""
    csv_path, st_path = shard_paths(out_dir, index)
    return csv_path.is_file() and st_path.is_file()


def write_shard(out_dir: str | os.PathLike, index: int, rows: Sequence[Mapping[str, Any]],
                tensors: Mapping[str, torch.Tensor]) -> None:
    """Write one shard atomically: tensors first, then the CSV (its presence marks the shard finished).

    Args:
        rows: one dict per segment with the keys of :data:`MANIFEST_COLUMNS`.
        tensors: ``"latent"`` ``(N, D)`` and optionally ``"audio"`` ``(N, S)``, ``"audio_length"`` ``(N,)``.

    Raises:
        FileNotFoundError: ``out_dir/shards`` does not exist.
    """
    csv_path, st_path = shard_paths(out_dir, index)
    rows = [{**r, "audio_path": _relative_audio_path(r.get("audio_path"), out_dir)} for r in rows]
    with AtomicPath(st_path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    frame = pd.DataFrame(list(rows), columns=list(MANIFEST_COLUMNS))
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.6f"))


def _relative_audio_path(path: Any, out_dir: str | os.PathLike) -> str:
    """``path`` (absolute, or relative to the working directory) as stored: relative to ``out_dir`` when possible."""
    if path is None or str(path) == "":
        return ""
    absolute = os.path.abspath(os.fspath(path))
    try:
        return Path(os.path.relpath(absolute, os.path.abspath(os.fspath(out_dir)))).as_posix()
    except ValueError:  # no relative path between them (another drive)
        return absolute


def _resolve_audio_path(stored: str, out_dir: Path, version: int) -> str:
    """An absolute audio path from a stored one (see the module docstring)."""
    if not stored or os.path.isabs(stored):
        return stored
    here = os.path.abspath(os.fspath(out_dir))
    if version >= 2:
        return os.path.normpath(os.path.join(here, stored))
    # version 1: relative to wherever `qsep mine` ran; the manifest usually sits below that folder
    for base in [here, *map(str, Path(here).parents)]:
        candidate = os.path.join(base, stored)
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    return os.path.abspath(stored)


def write_meta(out_dir: str | os.PathLike, content: ManifestContent, *, sample_rate: int, num_clips: int,
               num_shards: int, class_names: Sequence[str] | None, class_mids: Sequence[str] | None) -> dict[str, Any]:
    """Write ``mining.json`` atomically and return what it holds."""
    meta = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "config": content.content(),
        "sample_rate": int(sample_rate),
        "num_clips": int(num_clips),
        "num_shards": int(num_shards),
        "class_names": list(class_names) if class_names is not None else None,
        "class_mids": list(class_mids) if class_mids is not None else None,
    }
    atomic_write_text(Path(out_dir) / MINING_JSON, json.dumps(meta, indent=2) + "\n")
    return meta


def write_manifest(
    out_dir: str | os.PathLike,
    segments: Sequence[Mapping[str, Any]],
    latents: torch.Tensor,
    sample_rate: int,
    class_names: Sequence[str] | None = None,
    audio: torch.Tensor | None = None,
    audio_length: torch.Tensor | None = None,
    segment_seconds: float = ANCHOR_SECONDS,
    class_mids: Sequence[str] | None = None,
) -> Path:
    """Write segments found some other way (strong labels, hand-made lists) as a one-shard manifest.

    Args:
        segments: dicts with the keys of :data:`MANIFEST_COLUMNS` except ``row`` (``clip_labels`` may be a
            sequence of class indices; ``audio_path`` may be empty when ``audio`` is given).
        latents: ``(segments, D)`` conditions (e.g. HTS-AT latents of the segments).
        sample_rate: rate of ``audio`` in Hz (and the rate the latents were computed at).
        audio: optional ``(segments, S)`` stored audio, ``audio_length`` ``(segments,)`` valid samples.
        segment_seconds: the segments' length in seconds, recorded in ``mining.json``.

    Returns:
        ``out_dir``.

    Raises:
        ManifestError: the number of segments and of latents differ.
    """
    out = Path(out_dir)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    if len(segments) != latents.shape[0]:
        raise ManifestError(f"{len(segments)} segments but {latents.shape[0]} latents")
    rows = []
    for i, seg in enumerate(segments):
        row = {k: seg.get(k, "") for k in MANIFEST_COLUMNS if k != "row"}
        labels = seg.get("clip_labels", (seg["label"],))
        if not isinstance(labels, str):
            row["clip_labels"] = ";".join(str(int(k)) for k in labels)
        rows.append({**row, "row": i})
    tensors = {"latent": latents.float()}
    store_audio = audio is not None
    if store_audio:
        tensors["audio"] = audio.float()
        tensors["audio_length"] = (
            audio_length.long() if audio_length is not None else torch.full((audio.shape[0],), audio.shape[-1])
        )
    content = ManifestContent(segment_seconds=segment_seconds, store_audio=store_audio, shard_size=max(1, len(rows)))
    write_shard(out, 0, rows, tensors)
    write_meta(out, content, sample_rate=sample_rate, num_clips=len({r["clip_id"] for r in rows}), num_shards=1,
               class_names=class_names, class_mids=class_mids)
    return out


@dataclass
class Manifest:
    """All segments of a finished manifest folder.

    Attributes:
        segments: one row per segment (:data:`MANIFEST_COLUMNS` less ``row``), ``clip_labels`` parsed to tuples.
        latents: ``(segments, D)`` float32.
        audio: ``(segments, S)`` float32 when the run stored audio, else None; ``audio_length`` ``(segments,)``.
        sample_rate: the detector rate (Hz) the times and stored audio refer to.
        class_names: class names of the detector's label space (None if unknown).
        class_mids: AudioSet MIDs of those classes when the dataset had them (for the ontology).
        config: the content settings (:meth:`ManifestContent.content`) it was written with.
    """

    segments: pd.DataFrame
    latents: torch.Tensor
    sample_rate: int
    class_names: list[str] | None = None
    class_mids: list[str] | None = None
    audio: torch.Tensor | None = None
    audio_length: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.segments)


def load_manifest(out_dir: str | os.PathLike) -> Manifest:
    """Read every shard of a finished manifest folder, in shard order.

    Raises:
        ManifestError: ``mining.json`` is missing, shards are missing (an unfinished run), a shard's CSV
            and tensors disagree, or no segment was mined.
    """
    out = Path(out_dir)
    meta_path = out / MINING_JSON
    if not meta_path.is_file():
        raise ManifestError(f"{out} is not a mining output folder ({MINING_JSON} is missing)")
    meta = json.loads(meta_path.read_text())
    missing = [s for s in range(meta["num_shards"]) if not shard_done(out, s)]
    if missing:
        raise ManifestError(
            f"{out}: mining is incomplete, {len(missing)} of {meta['num_shards']} shards missing "
            f"(first {missing[:5]}); run the same `qsep mine` again to finish it"
        )
    frames, lats, audios, lengths = [], [], [], []
    for s in range(meta["num_shards"]):
        csv_path, st_path = shard_paths(out, s)
        df = pd.read_csv(csv_path, dtype={"clip_id": str, "audio_path": str, "clip_labels": str, "label_name": str},
                         keep_default_na=False)
        t = load_file(str(st_path))
        if len(df) != t["latent"].shape[0]:
            raise ManifestError(f"{csv_path}: {len(df)} rows but {t['latent'].shape[0]} latents; delete both files and rerun")
        if len(df):
            frames.append(df)
            lats.append(t["latent"])
            if "audio" in t:
                audios.append(t["audio"])
                lengths.append(t["audio_length"])
    if not frames:
        raise ManifestError(f"{out}: no segments were mined (no positive labels, or min_prob too high)")
    seg = pd.concat(frames, ignore_index=True).drop(columns=["row"])
    version = int(meta.get("format_version", 1))
    seg["audio_path"] = [_resolve_audio_path(str(p), out, version) for p in seg["audio_path"]]
    seg["clip_labels"] = [tuple(int(x) for x in str(v).split(";") if x != "") for v in seg["clip_labels"]]
    return Manifest(
        segments=seg,
        latents=torch.cat(lats),
        sample_rate=int(meta["sample_rate"]),
        class_names=meta.get("class_names"),
        class_mids=meta.get("class_mids"),
        audio=torch.cat(audios) if audios else None,
        audio_length=torch.cat(lengths) if lengths else None,
        config=meta.get("config", {}),
    )
