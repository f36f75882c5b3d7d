"""Separator training: two-source mixtures made on the fly from mined segments, and a LightningModule.

The chain is ``qsep mine`` (:mod:`sed.mining`) -> this module -> a qsep model folder.

Mixing (:class:`MixtureDataset`, official ZS-ASS recipe):
    a target segment (class-balanced by default: a class first, then one of its
    segments) and an interfering segment whose clip's label set does not overlap
    the target's (with an AudioSet ontology JSON, parents and children of a label
    count as the label). The interferer is scaled to the target's RMS, the ratio
    clipped to ``[0.02, 50]``, then optionally given a random gain. The condition
    is the target segment's own latent (official) or a per-class embedding
    (label/text embedding; ``condition: embedding``).

Reproducibility:
    every mixture is a pure function of ``(seed, key)``: its own
    ``torch.Generator`` is seeded from them. The sampler hands out keys
    ``epoch * epoch_size + i``; Lightning calls its ``set_epoch`` at each epoch and
    it reads the DDP rank when iteration starts, so the mixtures of an epoch do
    not depend on the number of DataLoader workers, and rank ``r`` of ``W`` takes
    items ``r, r + W, ...``. Validation mixtures use keys ``0..val_size-1`` with
    a derived seed, drawn from a held-out part of the clips: the same set every
    epoch and every run.

Training (:class:`SeparatorModule`): any separator ``model(mixture (B, 1, T),
condition (B, D)) -> (B, 1, T)``; L1 waveform loss (official), SI-SDR or
multi-resolution STFT loss; Adam (amsgrad, official) or AdamW with linear
warm-up; validation SDR, SI-SDR and SI-SDRi. :func:`train_separator` wires it
together: checkpoints (resumed after a kill), ``devices`` / ``num_nodes`` DDP,
``bf16-mixed`` on GPU, and export of the best checkpoint to a model folder.
"""
from __future__ import annotations

import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from qsep_core import audio
from qsep_core.config import ConfigError, load_config, to_dict
from qsep_core.metrics import sdr, si_sdr
from qsep_core.training import (
    BadClipGuard,
    BestCheckpoint,
    ResumableSampler,
    RunConfig,
    RunResult,
    begin_run,
    fingerprint_of,
    run_training,
    warmup_scheduler,
)
from separator import augment
from separator.losses import LOSSES

log = logging.getLogger(__name__)

__all__ = [
    "MixingConfig",
    "SeparatorTrainingConfig",
    "SegmentStore",
    "LabelOverlap",
    "MixtureDataset",
    "MixtureSampler",
    "SeparatorDataModule",
    "SeparatorModule",
    "loudness_match",
    "build_model",
    "load_training_config",
    "train_separator",
    "export_checkpoint",
]

#: added to the seed of the validation mixtures, so they never coincide with training mixtures
_VAL_SEED_OFFSET = 1_000_003
#: what a training mixture is conditioned on (see :class:`MixingConfig`)
CONDITION_MODES = ("latent", "embedding", "centroid", "mixed")


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
@dataclass
class MixingConfig:
    """How two-source training mixtures are made.

    Attributes:
        segment_seconds: length of every training example (None: the mining segment length).
        rms_ratio_min, rms_ratio_max: clip of the gain that brings the interferer to the target's RMS (official 0.02, 50).
        random_gain_db: extra interferer gain, uniform in ``[-g, g]`` dB (0: off, official).
        balanced: pick the target class uniformly first, then a segment of it (official: balanced queue);
            False: a uniformly random segment.
        condition: ``latent`` (the target segment's own latent, official), ``embedding`` (row ``label`` of
            ``embeddings``: a label or text embedding per class), ``centroid`` (the mean latent of the target's
            class over the training segments: what a label query gives at inference) or ``mixed``: per
            mixture one of own latent / class centroid / a routed condition (the target class's centroid
            weighted ``U(routed_weight_min, 1)`` plus 1-2 unrelated classes' centroids with the rest of the
            weight, as soft text routing produces), drawn with probabilities ``condition_probs``. Used with a
            separator that has ``cond_norm`` these reach the network at one scale (norm matched).
        condition_probs: ``[own latent, centroid, routed]`` probabilities of ``mixed`` (normalised).
        routed_weight_min: lowest weight of the target class in a routed condition.
        snr_db: ``[low, high]``: the interferer is set to a target-to-interferer ratio drawn from this range (dB),
            replacing the official RMS match (``null``: official).
        level_dbfs: ``[low, high]``: the mixture is scaled to an RMS level drawn from this range (dBFS), target
            and interferer with it (``null``: off).
        bandlimit_prob, bandlimit_hz: probability that BOTH sources are low-passed at ``bandlimit_hz`` (a
            narrow-band recording); the target is then the band-limited source.
        reverb_prob, reverb_rt60, reverb_wet_db: probability that each source gets its own light synthetic
            reverb (RT60 and tail energy drawn from the ranges); the target is the reverberant source.
        val_manifest: a separate manifest (same class list) whose segments make the validation mixtures,
            e.g. recordings never used for training; validation then uses ``centroid`` conditions (label
            queries). ``null``: a clip-hash split of ``manifest`` (``val_fraction``).
        embeddings: ``.safetensors`` file with a tensor ``embeddings`` ``(classes, D)`` in the class order of
            the manifest (``condition: embedding`` only).
        ontology: AudioSet ontology JSON (list of ``{id, name, child_ids}``); labels related as parent/child
            then count as overlapping.
        val_fraction: fraction of the clips held out for validation mixtures (split by clip id hash).
        val_size: number of fixed validation mixtures.
        cache_mb: decoded segments are kept in memory (per worker) up to this size.
        max_tries: random draws of an interferer before scanning all segments for a compatible one.
    """

    segment_seconds: float | None = None
    rms_ratio_min: float = 0.02
    rms_ratio_max: float = 50.0
    random_gain_db: float = 0.0
    balanced: bool = True
    condition: str = "latent"
    condition_probs: tuple[float, float, float] = (0.3, 0.4, 0.3)
    routed_weight_min: float = 0.5
    embeddings: str | None = None
    ontology: str | None = None
    snr_db: tuple[float, float] | None = None
    level_dbfs: tuple[float, float] | None = None
    bandlimit_prob: float = 0.0
    bandlimit_hz: float = 8000.0
    reverb_prob: float = 0.0
    reverb_rt60: tuple[float, float] = (0.15, 0.6)
    reverb_wet_db: tuple[float, float] = (-18.0, -8.0)
    val_manifest: str | None = None
    val_fraction: float = 0.1
    val_size: int = 64
    cache_mb: float = 512.0
    max_tries: int = 64

    def __post_init__(self) -> None:
        if self.condition not in CONDITION_MODES:
            raise ConfigError(f"mixing.condition={self.condition!r}; choose one of {CONDITION_MODES}")
        if len(self.condition_probs) != 3 or min(self.condition_probs) < 0 or sum(self.condition_probs) <= 0:
            raise ConfigError(f"mixing.condition_probs must be 3 non-negative numbers with a positive sum, got {self.condition_probs}")
        for name in ("snr_db", "level_dbfs", "reverb_rt60", "reverb_wet_db"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or v[0] > v[1]):
                raise ConfigError(f"mixing.{name} must be [low, high] with low <= high, got {v}")
        if not (0 <= self.bandlimit_prob <= 1 and 0 <= self.reverb_prob <= 1):
            raise ConfigError(f"mixing.bandlimit_prob and reverb_prob must be in [0, 1], got {self.bandlimit_prob}, {self.reverb_prob}")
        if self.condition == "embedding" and not self.embeddings:
            raise ConfigError("mixing.condition='embedding' needs mixing.embeddings (a .safetensors file)")
        if not 0 < self.rms_ratio_min <= self.rms_ratio_max:
            raise ConfigError(f"need 0 < rms_ratio_min <= rms_ratio_max, got {self.rms_ratio_min}, {self.rms_ratio_max}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"mixing.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class SeparatorTrainingConfig(RunConfig):
    """Everything one separator training run needs (YAML files in ``configs/`` override these fields).

    Attributes:
        manifest: output folder of ``qsep mine``.
        out_dir: run folder: ``checkpoints/``, ``logs/``, ``config.yaml`` and the exported ``model/``.
        model_kind: component kind of the separator (``query_unet``; any kind in ``checkpoint.BUILDERS``).
        model_preset: :data:`separator.models.PRESETS` name (``query_unet`` only).
        model: field overrides of the preset (``query_unet``) or the whole config dict (other kinds).
            ``cond_dim`` is filled from the data when not given.
        detector: model folder of the detector used for mining; its HTS-AT component is copied into the
            export as ``audio_encoder`` so audio queries work with the exported model.
        mixing: :class:`MixingConfig`.
        batch_size: mixtures per step per device.
        epoch_size: training mixtures per epoch (all devices together).
        max_epochs, max_steps: stopping (``max_steps`` -1: no step limit).
        loss: ``l1`` (official), ``sisdr`` or ``mrstft``.
        optimizer: ``adam`` or ``adamw``; ``lr``, ``weight_decay``, ``amsgrad`` (official Adam amsgrad 1e-3).
        warmup_steps: linear learning-rate warm-up.
        lr_schedule: ``warmup_constant`` (official: constant after warm-up) or ``warmup_cosine`` (cosine decay to
            ``min_lr_ratio * lr`` at ``max_steps``; needs ``max_steps``).
        grad_clip: gradient norm clip (None: off).
        export: write ``out_dir/model`` from the best checkpoint at the end.
        num_workers: DataLoader workers.

    Placement (``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision``: ``auto`` = ``bf16-mixed``
    on CUDA), ``seed`` (of the weights, the mixtures and the validation set), ``resume``,
    ``checkpoint_every_n_steps`` (``last.ckpt`` this often, and at every epoch end), ``log_every_n_steps`` and
    ``progress`` are the fields of :class:`qsep_core.training.RunConfig`. ``checkpoint_every_steps`` is the old
    name of ``checkpoint_every_n_steps`` and is still read.
    """

    RENAMED_FIELDS: ClassVar[dict[str, str]] = {"checkpoint_every_steps": "checkpoint_every_n_steps"}

    manifest: str = ""
    out_dir: str = "runs/separator"
    model_kind: str = "query_unet"
    model_preset: str = "resunet_film_small"
    model: dict[str, Any] = field(default_factory=dict)
    detector: str | None = None
    mixing: MixingConfig = field(default_factory=MixingConfig)
    batch_size: int = 16
    epoch_size: int = 8192
    max_epochs: int = 100
    max_steps: int = -1
    loss: str = "l1"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    amsgrad: bool = True
    warmup_steps: int = 0
    lr_schedule: str = "warmup_constant"
    min_lr_ratio: float = 0.05
    grad_clip: float | None = None
    export: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r}; choose one of {sorted(LOSSES)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}; choose 'adam' or 'adamw'")
        if self.lr_schedule not in ("warmup_constant", "warmup_cosine"):
            raise ConfigError(f"lr_schedule={self.lr_schedule!r}; choose 'warmup_constant' or 'warmup_cosine'")
        if self.lr_schedule == "warmup_cosine" and self.max_steps <= 0:
            raise ConfigError("lr_schedule=warmup_cosine needs max_steps > 0 (the step the decay ends at)")
        if self.batch_size < 1 or self.epoch_size < 1:
            raise ConfigError(f"batch_size and epoch_size must be >= 1, got {self.batch_size}, {self.epoch_size}")


def load_training_config(path: str | os.PathLike | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> SeparatorTrainingConfig:
    """Defaults <- YAML file <- overrides.

    ``overrides``: ``["mixing.val_size=8", ...]`` (values parsed as YAML) or a mapping whose keys may be
    dotted (``{"mixing.val_size": 8}``) or nested (``{"mixing": {"val_size": 8}}``); ``model`` is a free-form
    section (fields of the chosen preset).
    """
    return load_config(SeparatorTrainingConfig, path, overrides)


# ----------------------------------------------------------------------------------------------
# signal helpers
# ----------------------------------------------------------------------------------------------
def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).sqrt()


def loudness_match(reference: torch.Tensor, other: torch.Tensor, ratio_min: float = 0.02, ratio_max: float = 50.0) -> torch.Tensor:
    """``other`` ``(..., T)`` scaled to the RMS of ``reference`` ``(..., T)``, gain clipped to ``[ratio_min, ratio_max]``.

    A silent ``other`` gets the maximum gain (and stays silent).
    """
    ratio = _rms(reference) / _rms(other).clamp_min(1e-12)
    return other * ratio.clamp(ratio_min, ratio_max)




# ----------------------------------------------------------------------------------------------
# segments and label overlap
# ----------------------------------------------------------------------------------------------
class SegmentStore:
    """Audio, labels and conditions of mined segments, at the separator's rate.

    Args:
        manifest: a :class:`sed.mining.Manifest`.
        sample_rate: the separator's rate.
        segment_samples: length of every example (shorter segments are zero-padded at the end).
        cache_mb: keep decoded segments in memory up to this size (per process / worker).
    """

    def __init__(self, manifest: Any, sample_rate: int, segment_samples: int, cache_mb: float = 512.0):
        self.manifest = manifest
        self.segments = manifest.segments.reset_index(drop=True)
        self.sample_rate = int(sample_rate)
        self.segment_samples = int(segment_samples)
        self.cache_limit = int(cache_mb * 2**20)
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_bytes = 0
        self.labels = [frozenset(int(x) for x in v) or frozenset([int(lab)]) for v, lab in zip(self.segments.clip_labels, self.segments.label)]
        self.mined_label = [int(x) for x in self.segments.label]
        self.clip_ids = [str(x) for x in self.segments.clip_id]

    def __len__(self) -> int:
        return len(self.segments)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"], state["_cache_bytes"] = {}, 0  # each worker fills its own cache
        return state

    def audio(self, index: int) -> torch.Tensor:
        """``(segment_samples,)`` mono float32 of segment ``index``."""
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        m = self.manifest
        if m.audio is not None:
            wav = m.audio[index, : int(m.audio_length[index])][None]  # (1, samples) at the mining rate
            if m.sample_rate != self.sample_rate:
                wav = audio.resample(wav, m.sample_rate, self.sample_rate)
        else:
            row = self.segments.iloc[index]
            if not row.audio_path:
                raise ValueError(f"segment {index} (clip {row.clip_id}) has neither an audio path nor stored audio")
            wav, _ = audio.load(row.audio_path, sample_rate=self.sample_rate, channels=1,
                                start=float(row.start), duration=float(row.end - row.start))
        wav = wav[0, : self.segment_samples]
        if wav.shape[-1] < self.segment_samples:
            wav = F.pad(wav, (0, self.segment_samples - wav.shape[-1]))
        wav = wav.contiguous()
        if self._cache_bytes + wav.numel() * 4 <= self.cache_limit:
            self._cache[index] = wav
            self._cache_bytes += wav.numel() * 4
        return wav


class LabelOverlap:
    """Which class indices count as the same sound: each label itself, plus its ontology ancestors and descendants.

    Args:
        num_classes: size of the class list.
        class_mids: MID of each class (AudioSet); used to place classes in the ontology.
        class_names: names, used for classes without a MID.
        ontology: path of the AudioSet ontology JSON, or its parsed list; None: labels overlap only when equal.
    """

    def __init__(self, num_classes: int, class_mids: Sequence[str] | None = None,
                 class_names: Sequence[str] | None = None, ontology: str | os.PathLike | list | None = None):
        self.related: list[frozenset[int]] = [frozenset([k]) for k in range(num_classes)]
        if ontology is None:
            return
        nodes = json.loads(Path(ontology).read_text()) if not isinstance(ontology, list) else ontology
        children = {n["id"]: list(n.get("child_ids", [])) for n in nodes}
        by_name = {n["name"].lower(): n["id"] for n in nodes}
        parents: dict[str, list[str]] = {}
        for p, cs in children.items():
            for c in cs:
                parents.setdefault(c, []).append(p)
        index_of: dict[str, int] = {}
        for k in range(num_classes):
            mid = class_mids[k] if class_mids and k < len(class_mids) and class_mids[k] else None
            if mid is None and class_names and k < len(class_names):
                mid = by_name.get(str(class_names[k]).lower())
            if mid is not None:
                index_of[mid] = k

        def walk(start: str, graph: Mapping[str, list[str]]) -> set[str]:
            seen, stack = set(), [start]
            while stack:
                for nxt in graph.get(stack.pop(), []):
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            return seen

        for mid, k in index_of.items():
            rel = walk(mid, children) | walk(mid, parents)
            self.related[k] = frozenset({k} | {index_of[m] for m in rel if m in index_of})

    def expand(self, labels: frozenset[int]) -> frozenset[int]:
        """All classes that overlap any of ``labels``."""
        out: set[int] = set()
        for k in labels:
            out |= self.related[k] if k < len(self.related) else {k}
        return frozenset(out)

    def overlap(self, a: frozenset[int], b: frozenset[int]) -> bool:
        return not self.expand(a).isdisjoint(b)


# ----------------------------------------------------------------------------------------------
# mixtures
# ----------------------------------------------------------------------------------------------
def _item_seed(seed: int, key: int) -> int:
    return (int(seed) * 0x9E3779B1 + int(key) * 0x85EBCA6B + 0x2545F491) % (2**63 - 1)


class MixtureDataset(torch.utils.data.Dataset):
    """Two-source mixtures: ``dataset[key]`` is a pure function of ``(seed, key)`` (any int key).

    Items are dicts: ``mixture (1, T)``, ``target (1, T)``, ``interferer (1, T)`` (as mixed),
    ``condition (D,)``, ``target_index``, ``interferer_index`` (segment rows), ``gain`` (applied to the interferer).
    """

    def __init__(self, store: SegmentStore, indices: Sequence[int], overlap: LabelOverlap, config: MixingConfig,
                 seed: int, length: int, conditions: torch.Tensor, condition_rows: Sequence[int],
                 centroids: torch.Tensor | None = None, condition_mode: str | None = None):
        self.mode = condition_mode or config.condition
        if self.mode in ("centroid", "mixed") and centroids is None:
            raise ValueError(f"condition mode {self.mode!r} needs class centroids")
        self.centroids = centroids  # (classes, D) or None
        self.centroid_classes = [] if centroids is None else [k for k in range(centroids.shape[0]) if bool(centroids[k].abs().sum() > 0)]
        if len(indices) < 2:
            raise ValueError(f"need at least 2 segments to make mixtures, got {len(indices)}")
        self.store = store
        self.indices = list(indices)
        self.overlap = overlap
        self.cfg = config
        self.seed = seed
        self.length = length
        self.conditions = conditions  # (rows, D)
        self.condition_rows = list(condition_rows)  # segment -> row of ``conditions``
        # a segment can be a target only if some segment has no overlapping label (checked per label set)
        sets = {store.labels[i] for i in self.indices}
        ok: dict[frozenset[int], bool] = {}
        for ls in sets:
            blocked = overlap.expand(ls)
            ok[ls] = any(blocked.isdisjoint(other) for other in sets)
        self.targets = [i for i in self.indices if ok[store.labels[i]]]
        dropped = len(self.indices) - len(self.targets)
        if dropped:
            log.warning("%d segment(s) overlap every other segment's labels and are used only as interferers", dropped)
        self.target_table = self._by_class(self.targets)
        self.partner_table = self._by_class(self.indices)
        if len(self.target_table) < 1 or len(self.partner_table) < 2:
            raise ValueError(
                f"the segments cover {len(self.partner_table)} class(es) and none has a partner with disjoint labels; "
                "mixtures need at least 2 unrelated classes"
            )

    def _by_class(self, rows: Sequence[int]) -> dict[int, list[int]]:
        table: dict[int, list[int]] = {}
        for i in rows:
            table.setdefault(self.store.mined_label[i], []).append(i)
        return {k: table[k] for k in sorted(table)}

    def __len__(self) -> int:
        return self.length

    def _pick(self, g: torch.Generator, table: Mapping[int, list[int]], flat: Sequence[int]) -> int:
        if self.cfg.balanced:
            classes = list(table)
            members = table[classes[int(torch.randint(len(classes), (1,), generator=g))]]
            return members[int(torch.randint(len(members), (1,), generator=g))]
        return flat[int(torch.randint(len(flat), (1,), generator=g))]

    def _partner(self, target: int, g: torch.Generator) -> int:
        blocked = self.overlap.expand(self.store.labels[target])
        for _ in range(self.cfg.max_tries):
            j = self._pick(g, self.partner_table, self.indices)
            if blocked.isdisjoint(self.store.labels[j]):
                return j
        pool = [j for j in self.indices if blocked.isdisjoint(self.store.labels[j])]
        return pool[int(torch.randint(len(pool), (1,), generator=g))]  # non-empty: targets have a partner

    def _augment(self, s1: torch.Tensor, s2: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Band limit (both sources) and light reverb (each source) before mixing; draws nothing when off."""
        cfg, rate = self.cfg, self.store.sample_rate
        if cfg.bandlimit_prob > 0 and float(torch.rand((), generator=g)) < cfg.bandlimit_prob:
            s1, s2 = augment.lowpass(s1, rate, cfg.bandlimit_hz), augment.lowpass(s2, rate, cfg.bandlimit_hz)
        if cfg.reverb_prob > 0:
            out = []
            for x in (s1, s2):
                if float(torch.rand((), generator=g)) < cfg.reverb_prob:
                    rir = augment.synthetic_rir(rate, augment.uniform(*cfg.reverb_rt60, g), augment.uniform(*cfg.reverb_wet_db, g), g)
                    x = augment.convolve(x, rir)
                out.append(x)
            s1, s2 = out
        return s1, s2

    def _condition(self, t: int, g: torch.Generator) -> torch.Tensor:
        """The condition ``(D,)`` of target segment ``t`` under this dataset's condition mode."""
        own = self.conditions[self.condition_rows[t]]
        if self.mode in ("latent", "embedding"):
            return own
        cls = self.store.mined_label[t]
        centroid = self.centroids[cls]
        if self.mode == "centroid":
            return centroid
        p = torch.tensor(self.cfg.condition_probs, dtype=torch.float64)
        u = float(torch.rand((), generator=g)) * float(p.sum())
        if u < p[0]:
            return own
        if u < p[0] + p[1]:
            return centroid
        blocked = self.overlap.expand(self.store.labels[t])
        others = [k for k in self.centroid_classes if k not in blocked]
        if not others:
            return centroid
        n = min(len(others), 1 + int(torch.randint(2, (1,), generator=g)))
        picked = [others[int(j)] for j in torch.randperm(len(others), generator=g)[:n]]
        w_t = augment.uniform(self.cfg.routed_weight_min, 1.0, g)
        w = torch.rand(n, generator=g) + 1e-3
        w = w / w.sum() * (1 - w_t)
        return w_t * centroid + (w[:, None] * self.centroids[picked]).sum(0)

    def __getitem__(self, key: int) -> dict[str, Any] | None:
        """The mixture of ``key``; None when a segment could not be read and ``bad_clips`` allows skipping it."""
        if self.bad_clips is None:
            return self._item(key)
        return self.bad_clips.read(f"mixture {key}", lambda: self._item(key))

    #: skip-and-report of unreadable segments (``BadClipGuard``); None: the first one raises
    bad_clips: BadClipGuard | None = None

    def _item(self, key: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(_item_seed(self.seed, key))
        t = self._pick(g, self.target_table, self.targets)
        i = self._partner(t, g)
        s1, s2 = self.store.audio(t), self.store.audio(i)
        s1, s2 = self._augment(s1, s2, g)
        if self.cfg.snr_db is None:
            s2 = loudness_match(s1, s2, self.cfg.rms_ratio_min, self.cfg.rms_ratio_max)
        else:  # target-to-interferer ratio drawn in dB
            snr = augment.uniform(*self.cfg.snr_db, g)
            r1, r2 = float(_rms(s1)), float(_rms(s2))
            if r1 > augment.SILENCE_RMS and r2 > augment.SILENCE_RMS:
                s2 = s2 * (r1 / r2 * 10 ** (-snr / 20))
        gain = 1.0
        if self.cfg.random_gain_db > 0:
            db = (torch.rand((), generator=g).item() * 2 - 1) * self.cfg.random_gain_db
            gain = 10 ** (db / 20)
            s2 = s2 * gain
        if self.cfg.level_dbfs is not None:
            k = augment.scale_to_db(s1 + s2, augment.uniform(*self.cfg.level_dbfs, g))
            s1, s2 = s1 * k, s2 * k
        return {
            "mixture": (s1 + s2)[None],
            "target": s1[None],
            "interferer": s2[None],
            "condition": self._condition(t, g),
            "target_index": t,
            "interferer_index": i,
            "gain": gain,
        }


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MixtureSampler(torch.utils.data.Sampler):
    """Keys ``epoch * size + i`` for this rank's share ``i = rank, rank + W, ...`` (every rank the same count).

    ``set_epoch`` is called by Lightning at the start of each training epoch; ``fixed=True`` (validation)
    ignores the epoch. Use with ``use_distributed_sampler=False``.
    """

    def __init__(self, size: int, fixed: bool = False):
        self.size = size
        self.fixed = fixed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.size / _rank_world()[1])

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_world()
        base = 0 if self.fixed else self.epoch * self.size
        # when size is not a multiple of W the last keys wrap around, so every rank runs the same number of
        # batches (DDP needs that); a few validation mixtures are then counted twice
        for j in range(len(self)):
            yield base + (rank + j * world) % self.size


def _split_by_clip(clip_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Segment rows of the training and validation clips (a clip's segments stay together)."""
    train, val = [], []
    for i, c in enumerate(clip_ids):
        h = zlib.crc32(f"{seed}:{c}".encode()) / 2**32
        (val if h < fraction else train).append(i)
    return train, val


class SeparatorDataModule:
    """Builds the training and validation mixture loaders from a mining output folder.

    A plain object with Lightning's DataModule hooks (``setup``, ``train_dataloader``,
    ``val_dataloader``), wrapped by :func:`as_lightning` for the Trainer.
    """

    def __init__(self, config: SeparatorTrainingConfig, sample_rate: int):
        from qsep_core.manifest import load_manifest

        self.cfg = config
        mix = config.mixing
        self.manifest = load_manifest(config.manifest)
        seconds = mix.segment_seconds or float(self.manifest.config.get("segment_seconds", 2.0))
        self.segment_samples = int(round(seconds * sample_rate))
        self.store = SegmentStore(self.manifest, sample_rate, self.segment_samples, mix.cache_mb)
        names = self.manifest.class_names
        labels_used = set(int(k) for ls in self.store.labels for k in ls)
        num_classes = len(names) if names else max(labels_used) + 1
        self.overlap = LabelOverlap(num_classes, self.manifest.class_mids, names, mix.ontology)
        if mix.condition != "embedding":
            self.conditions = self.manifest.latents.float()
            rows = list(range(len(self.store)))
        else:
            from safetensors.torch import load_file

            emb = load_file(mix.embeddings)
            if "embeddings" not in emb:
                raise ConfigError(f"{mix.embeddings}: no tensor named 'embeddings' (classes, D); it has {sorted(emb)}")
            self.conditions = emb["embeddings"].float()
            if self.conditions.shape[0] < num_classes:
                raise ConfigError(f"{mix.embeddings}: {self.conditions.shape[0]} rows for {num_classes} classes")
            rows = self.store.mined_label
        self.cond_dim = int(self.conditions.shape[-1])
        if mix.val_manifest:  # validation on other recordings: every segment of this manifest is for training
            train_idx, val_idx = list(range(len(self.store))), []
        else:
            train_idx, val_idx = _split_by_clip(self.store.clip_ids, mix.val_fraction, config.seed)
            if len({self.store.mined_label[i] for i in val_idx}) < 2:
                # too little held out (or val_fraction 0): validate on fixed mixtures of the training segments
                log.warning("held-out segments cover fewer than 2 classes: validation mixtures come from the training segments")
                val_idx = train_idx
        #: mean training latent (the separator's ``cond_center`` when it has ``cond_norm``)
        self.latent_mean = self.manifest.latents.float()[train_idx].mean(0)
        self.centroids = class_centroids(self.manifest.latents.float(), self.store.mined_label, train_idx, num_classes)
        self.train_set = MixtureDataset(self.store, train_idx, self.overlap, mix, config.seed, config.epoch_size,
                                        self.conditions, rows, centroids=self.centroids)
        self.val_set = None
        if mix.val_size > 0 and mix.val_manifest:
            vm = load_manifest(mix.val_manifest)
            if list(vm.class_names or []) != list(names or []):
                raise ConfigError(f"mixing.val_manifest {mix.val_manifest} has another class list than {config.manifest}")
            self.val_store = SegmentStore(vm, sample_rate, self.segment_samples, mix.cache_mb)
            clean = replace(mix, bandlimit_prob=0.0, reverb_prob=0.0)
            self.val_set = MixtureDataset(self.val_store, list(range(len(self.val_store))), self.overlap, clean,
                                          config.seed + _VAL_SEED_OFFSET, mix.val_size, vm.latents.float(),
                                          list(range(len(self.val_store))), centroids=self.centroids, condition_mode="centroid")
        elif mix.val_size > 0 and val_idx:
            self.val_set = MixtureDataset(self.store, val_idx, self.overlap, mix, config.seed + _VAL_SEED_OFFSET, mix.val_size,
                                          self.conditions, rows, centroids=self.centroids)

    def _loader(self, ds: MixtureDataset, fixed: bool, trainer: Any = None) -> torch.utils.data.DataLoader:
        world = _rank_world()[1]
        sampler: Any = MixtureSampler(len(ds) if fixed else max(1, self.cfg.epoch_size), fixed=fixed)
        if not fixed:  # a mid-epoch resume skips the batches already trained (keys are pure functions of the epoch)
            sampler = ResumableSampler(sampler, self.cfg.batch_size, lambda: trainer)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            drop_last=not fixed and self.cfg.epoch_size >= self.cfg.batch_size * world,
            collate_fn=_collate,
        )

    def train_dataloader(self, trainer: Any = None) -> torch.utils.data.DataLoader:
        return self._loader(self.train_set, fixed=False, trainer=trainer)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self._loader(self.val_set, fixed=True) if self.val_set is not None else []

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the training data: the manifest's segments and latents (compared on resume)."""
        seg = self.manifest.segments
        out = {"segments": len(seg), "classes": fingerprint_of(list(self.manifest.class_names or [])),
               "id": fingerprint_of(list(seg.clip_id), list(seg.label), list(seg.start), self.manifest.latents)}
        if getattr(self, "val_store", None) is not None:
            vm = self.val_store.manifest
            out["val_manifest"] = fingerprint_of(list(vm.segments.clip_id), list(vm.segments.label), vm.latents)
        return out


def class_centroids(latents: torch.Tensor, labels: Sequence[int], rows: Sequence[int], num_classes: int) -> torch.Tensor:
    """Mean latent per class over segment ``rows`` ``(num_classes, D)``; classes without a segment stay 0.

    These are what a label query gives at inference (the label bank is built the same way from the same
    segments), so ``centroid`` / ``mixed`` training conditions match inference conditions.
    """
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    cls = torch.as_tensor(list(labels), dtype=torch.long)[rows]  # (n,)
    out = torch.zeros(num_classes, latents.shape[-1]).index_add_(0, cls, latents[rows].float())
    count = torch.zeros(num_classes).index_add_(0, cls, torch.ones(len(rows)))
    return out / count.clamp(min=1)[:, None]


def _collate(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    items = [it for it in items if it is not None]  # mixtures of bad segments skipped (max_bad_clips)
    if not items:
        return None
    out: dict[str, Any] = {}
    for k in items[0]:
        v = [it[k] for it in items]
        out[k] = torch.stack(v) if isinstance(v[0], torch.Tensor) else torch.tensor(v)
    return out


# ----------------------------------------------------------------------------------------------
# LightningModule
# ----------------------------------------------------------------------------------------------
class SeparatorModule(L.LightningModule):
    """Trains any separator ``model(mixture (B, 1, T), condition (B, D)) -> (B, 1, T)``.

    Args:
        model: the network (a :class:`~separator.models.QueryUNet` or any module with that contract).
        loss: ``l1`` (official), ``sisdr`` or ``mrstft``.
        optimizer: ``adam`` or ``adamw``; ``lr``, ``weight_decay``, ``amsgrad``.
        warmup_steps: linear warm-up of the learning rate from ``lr / warmup_steps``.
    """

    def __init__(self, model: nn.Module, loss: str = "l1", optimizer: str = "adam", lr: float = 1e-3,
                 weight_decay: float = 0.0, amsgrad: bool = True, warmup_steps: int = 0,
                 cosine_steps: int = 0, min_lr_ratio: float = 0.05):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; choose one of {sorted(LOSSES)}")
        self.model = model
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.optimizer_name = optimizer
        self.lr, self.weight_decay, self.amsgrad, self.warmup_steps = lr, weight_decay, amsgrad, warmup_steps
        self.cosine_steps, self.min_lr_ratio = cosine_steps, min_lr_ratio
        self.save_hyperparameters(ignore=["model"])

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.model(mixture, condition)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every mixture of the batch was skipped (max_bad_clips)
            return None
        est = self.model(batch["mixture"], batch["condition"])  # (batch, 1, T)
        loss = self.loss_fn(estimate=est.float(), reference=batch["target"])
        self.log("train/loss", loss, prog_bar=True, batch_size=est.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if batch is None:
            return
        est = self.model(batch["mixture"], batch["condition"]).float()
        ref, mix = batch["target"], batch["mixture"]
        n = est.shape[0]
        s = si_sdr(estimate=est, reference=ref, dtype=None)
        self.log("val/loss", self.loss_fn(estimate=est, reference=ref), sync_dist=True, batch_size=n)
        self.log("val/sdr", sdr(estimate=est, reference=ref, dtype=None).mean(), sync_dist=True, batch_size=n)
        self.log("val/sisdr", s.mean(), sync_dist=True, batch_size=n)
        self.log("val/sisdri", (s - si_sdr(estimate=mix, reference=ref, dtype=None)).mean(), sync_dist=True,
                 prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, amsgrad=self.amsgrad)
        else:
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay, amsgrad=self.amsgrad)
        if self.warmup_steps <= 0 and self.cosine_steps <= 0:
            return opt
        total = self.cosine_steps
        return {"optimizer": opt, "lr_scheduler": warmup_scheduler(
            opt, warmup_steps=self.warmup_steps, total_steps=total, cosine=total > 0, min_ratio=self.min_lr_ratio)}


# ----------------------------------------------------------------------------------------------
# wiring
# ----------------------------------------------------------------------------------------------
def build_model(config: SeparatorTrainingConfig, cond_dim: int) -> tuple[nn.Module, dict[str, Any]]:
    """The separator of ``config`` (fresh weights) and its component config dict."""
    from separator.checkpoint import build_component

    if config.model_kind == "query_unet":
        from separator.models import preset

        changes = dict(config.model)
        if changes.get("cond_dim", cond_dim) != cond_dim:
            raise ConfigError(f"model.cond_dim={changes['cond_dim']} but the conditions are {cond_dim}-d; drop model.cond_dim")
        changes["cond_dim"] = cond_dim
        model_cfg = to_dict(preset(config.model_preset, **changes))
    else:
        model_cfg = dict(config.model)
        model_cfg.setdefault("cond_dim", cond_dim)
    return build_component(config.model_kind, model_cfg), model_cfg


class _LightningDataModule(L.LightningDataModule):
    """Hands :class:`SeparatorDataModule`'s loaders to the Trainer (module level, so DDP spawn can pickle it)."""

    def __init__(self, dm: SeparatorDataModule):
        super().__init__()
        self.dm = dm

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self.dm.train_dataloader(getattr(self, "trainer", None))

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self.dm.val_dataloader()  # [] without a validation set (the Trainer then has limit_val_batches=0)


def export_checkpoint(ckpt_path: str | os.PathLike, model: nn.Module, kind: str, model_config: Mapping[str, Any],
                      out: str | os.PathLike, detector: str | os.PathLike | None = None,
                      metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a qsep model folder from a Lightning checkpoint of :class:`SeparatorModule`.

    Component ``separator`` (``kind``); with ``detector`` (a model folder holding an ``htsat`` component) also
    component ``audio_encoder``, so audio queries work with the exported model. Metadata ``class_names`` is then
    the detector's class list (``training_classes``: the classes of the mined segments).
    """
    from separator.checkpoint import CheckpointError, Component, ModelFolder, load_strict, save_model

    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    sd = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_strict(model, sd, what=f"{ckpt_path}")
    components = {"separator": Component(kind, dict(model_config), model.state_dict())}
    if detector is not None:
        folder = ModelFolder(detector)
        names = [n for n in folder.components if folder.kind(n) == "htsat"]
        if not names:
            raise CheckpointError(f"{detector} holds no HTS-AT component (kinds: "
                                  f"{sorted({folder.kind(n) for n in folder.components})})")
        name = "audio_encoder" if "audio_encoder" in names else names[0]
        components["audio_encoder"] = Component("htsat", folder.component_config(name), folder.state_dict(name))
        metadata = dict(metadata or {})
        if folder.metadata.get("class_names") is not None:
            # the encoder's own label space (what `sed.load_detector` checks against its head)
            metadata["training_classes"] = metadata.get("class_names")
            metadata["class_names"] = folder.metadata["class_names"]
    return save_model(out, components, metadata=dict(metadata or {}), overwrite=True)


def train_separator(config: SeparatorTrainingConfig) -> Path:
    """Train a separator on mined segments; returns the exported model folder (or the run folder if ``export`` is off).

    Re-running the same config after a kill resumes from ``out_dir/checkpoints/last.ckpt`` and reaches the
    weights of an uninterrupted run (:mod:`qsep_core.training`); rerunning a finished run does nothing.
    """
    if not config.manifest:
        raise ConfigError("manifest is not set: give the output folder of `qsep mine`")
    out = Path(config.out_dir)
    begin_run(config, out)

    if config.model_kind == "query_unet":
        from separator.models import preset

        rate = preset(config.model_preset, **{k: v for k, v in config.model.items() if k != "cond_dim"}).sample_rate
    else:
        from separator.models import QueryUNetConfig

        rate = int(config.model.get("sample_rate", QueryUNetConfig().sample_rate))
    dm = SeparatorDataModule(config, rate)
    model, model_cfg = build_model(config, dm.cond_dim)
    if getattr(model, "cond_center", None) is not None:  # cond_norm: centre conditions on the mean training latent
        with torch.no_grad():
            model.cond_center.copy_(dm.latent_mean)
    module = SeparatorModule(model, config.loss, config.optimizer, config.lr, config.weight_decay, config.amsgrad,
                             config.warmup_steps, config.max_steps if config.lr_schedule == "warmup_cosine" else 0,
                             config.min_lr_ratio)
    has_val = dm.val_set is not None
    dm.train_set.bad_clips = BadClipGuard(config.max_bad_clips, "training segment")
    if dm.val_set is not None:
        dm.val_set.bad_clips = BadClipGuard(config.max_bad_clips, "validation segment")

    def export(result: RunResult) -> Path:
        chosen = result.best or str(result.last)
        metrics = {k: float(v) for k, v in result.trainer.callback_metrics.items() if k.startswith("val/")}
        meta = {
            "trained_with": "qsep train separator",
            "preset": config.model_preset if config.model_kind == "query_unet" else config.model_kind,
            "condition": config.mixing.condition,
            "sample_rate": rate,
            "segment_samples": dm.segment_samples,
            "class_names": dm.manifest.class_names,
            "manifest": str(config.manifest),
            "checkpoint": Path(chosen).name,
            "best_val_sisdri": result.best_score,
            "last_val": metrics,
        }
        fresh, _ = build_model(config, dm.cond_dim)
        return export_checkpoint(chosen, fresh, config.model_kind, model_cfg, out / "model", config.detector, meta)

    # the best checkpoint by validation SI-SDRi (without validation: the latest); last.ckpt every
    # checkpoint_every_n_steps steps (a kill loses at most that many) and at every epoch end (a finished run
    # resumes to "nothing left to do")
    n_classes = len({k for ls in dm.store.labels for k in ls})
    banner = [f"data: {config.manifest}: {len(dm.store)} segments of {n_classes} classes; {len(dm.train_set.indices)} for "
              f"training mixtures ({config.epoch_size} per epoch, batch {config.batch_size}), "
              f"{0 if dm.val_set is None else len(dm.val_set)} validation mixtures; condition {config.mixing.condition}",
              f"model: {config.model_kind} ({config.model_preset}), {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
              f"{rate} Hz, {dm.segment_samples / rate:g} s segments"]
    run_training(
        module, _LightningDataModule(dm), config, out_dir=out, max_steps=config.max_steps, max_epochs=config.max_epochs,
        best=BestCheckpoint("val/sisdri" if has_val else None, "max", "best-{epoch}-{step}"), last_every_epoch=True,
        log_version=0, export=export if config.export else None,
        trainer_kwargs={"gradient_clip_val": config.grad_clip, "limit_val_batches": 1.0 if has_val else 0,
                        "deterministic": False},
        record=config, fingerprint=dm.fingerprint(), banner=banner,
    )
    return out / "model" if config.export else out
