"""SED training: clip-level BCE on weakly labeled clips, as the official HTS-AT recipe.

Pieces (lightning-hydra-template style: the network is a plain ``nn.Module`` passed in):

- :class:`SEDTrainingConfig` (+ :class:`SEDDataConfig`, :class:`SpecAugmentConfig`): every
  setting of a run; YAML files in ``configs/sed_*.yaml`` overlay its fields.
- :class:`SEDModule`: the LightningModule. Loss = BCE between ``clipwise`` probabilities and
  the multi-hot targets; SpecAugment and mixup on the normalised log-mel (between the
  network's ``features`` and ``forward_mel``); AdamW + warm-up; validation mAP (macro AP over
  the classes that have a positive clip in the validation set; the others are excluded and
  counted) and per-class AP.
- :class:`SEDDataModule`: datasets of :mod:`sed.data`, the balanced sampler, loaders.
- :func:`train_sed`: runs :func:`qsep_core.training.run_training` (CPU, one GPU or ``devices=N``
  DDP), which keeps ``last.ckpt`` for resuming after a kill; exports the best model as a qsep
  model folder on rank 0.

Distributed training: the trainer runs with ``use_distributed_sampler=False``; the training
sampler (balanced or shuffled) draws one global, seeded sequence per epoch and each rank
takes every ``world_size``-th item; validation clips are split without padding and their
scores gathered, so the mAP is the same as on one device. ``batch_size`` is per device.

Resuming: a run started again with the same ``out_dir`` continues from
``checkpoints/last.ckpt`` (weights, optimiser, schedule, step, epoch) and reaches the weights and
metrics of an uninterrupted run exactly (see :mod:`qsep_core.training`): the batches already trained
in the current epoch are skipped (:class:`qsep_core.training.ResumableSampler`), random crops are a
function of ``(seed, epoch, clip)`` carried by the sampler's keys (the same in every DataLoader
worker), and mixup / SpecAugment draw from the per-step seed of :class:`qsep_core.training.StepSeed`.

Bad clips: a clip that cannot be read or holds NaN/inf is skipped and reported up to ``max_bad_clips``
(default 0: the first one stops the run, named); a class whose every training clip is missing or bad
is warned about by name.

What the network must provide (``sed.htsat.HTSAT`` does; a test fake can too)::

    net(wave)                 # wave (B, samples) at the model rate -> {"clipwise": (B, K) probabilities, ...}
    net.features(wave)        # -> normalised log-mel (B, 1, frames, mel)  (after bn0)
    net.forward_mel(x)        # normalised log-mel -> the same dict as net(wave)

In training the module computes ``x = net.features(wave)``, applies SpecAugment, then mixup
``x * lam + x.flip(0) * (1 - lam)`` with one ``lam ~ Beta(alpha, alpha)`` per clip, and calls
``net.forward_mel(x)``: the order and place of the official HTS-AT forward (both after ``bn0``,
SpecAugment first). The targets are NOT mixed (the official choice, commented in its
``training_step``), so a mixed clip keeps the labels of its first component. A network
without ``features``/``forward_mel`` trains with ``mixup_alpha: 0`` and
``spec_augment.enabled: false`` only.

Official recipe facts reproduced by ``configs/sed_audioset.yaml``: AdamW lr 1e-3, betas
(0.9, 0.999), eps 1e-8, weight decay 0.05; the per-epoch LambdaLR schedule (scales 0.02, 0.05,
0.1 for epochs 0-2, then 0.1 until epoch 10, 0.05 until 20, 0.02 until 30, then 0.03); batch
128 in total; gradient clipping 1.0; balanced sampling; SpecAugment time 64x2, freq 8x2;
sync BatchNorm under DDP.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from qsep_core.config import ConfigError, load_config, to_dict, upgrade_fields
from qsep_core.extras import require
from qsep_core.training import (
    BadClipGuard,
    fingerprint_of,
    BestCheckpoint,
    ResumableSampler,
    RunConfig,
    RunResult,
    begin_run,
    run_training,
    warmup_scheduler,
)
from sed.data import (
    DATA_FORMATS,
    ClassList,
    WeakLabelDataset,
    BalancedClassSampler,
    manifest_classes,
    open_weak_dataset,
)

__all__ = [
    "SpecAugmentConfig",
    "SEDDataConfig",
    "SEDTrainingConfig",
    "SpecAugment",
    "NetworkSpec",
    "SEDModule",
    "SEDDataModule",
    "average_precision",
    "mean_average_precision",
    "official_lr_scale",
    "build_network",
    "build_datasets",
    "load_sed_config",
    "train_sed",
]

log = logging.getLogger(__name__)

#: Name of the validation metric logged and monitored for the best checkpoint.
VAL_METRIC = "val_mAP"
#: Component name and kind of the exported detector.
DETECTOR_COMPONENT = "detector"
DETECTOR_KIND = "htsat"


# --------------------------------------------------------------------------------------------
# configs


@dataclass
class SpecAugmentConfig:
    """SpecAugment on the normalised log-mel (official: time 64 x 2 stripes, freq 8 x 2).

    Widths are maxima in frames / mel bins; each stripe's width is uniform in ``[0, width)``,
    as torchlibrosa's ``DropStripes``. Scale them with the number of frames of the model.
    """

    enabled: bool = True
    time_drop_width: int = 64
    time_stripes: int = 2
    freq_drop_width: int = 8
    freq_stripes: int = 2


@dataclass
class SEDDataConfig:
    """Where the clips are and how they are read.

    ``format``: ``"audioset"`` (``train``/``val`` = segments CSVs, ``*_audio_dir`` = audio folders,
    ``class_labels`` = ``class_labels_indices.csv``), ``"hdf5"`` (``train``/``val`` = one ``.h5``
    pack or a list of packs; ``class_labels`` optional) or ``"manifest"`` (``train``/``val`` =
    ``path,labels[,caption]`` CSVs; ``class_labels`` optional, default: the sorted labels of the
    training manifest). Relative paths are taken from the current directory.
    """

    format: str = "manifest"
    train: Any = None
    val: Any = None
    train_audio_dir: str | None = None
    val_audio_dir: str | None = None
    class_labels: str | None = None
    clip_seconds: float | None = None  # None: the model's clip length
    crop: str = "random"  # train-time crop of longer files: start | center | random (val: start)
    balanced: bool = True
    epoch_size: int | None = None  # clips per epoch (all ranks); None: the training set size
    batch_size: int = 32  # per device
    val_batch_size: int | None = None
    num_workers: int = 2
    pack_sample_rate: int | None = None  # hdf5: rate of the stored waveforms if not in the file


@dataclass
class SEDTrainingConfig(RunConfig):
    """Everything about one SED training run (YAML files overlay these fields).

    Placement (``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``precision``), ``seed``,
    ``resume``, ``checkpoint_every_n_steps``, ``log_every_n_steps`` and ``progress`` are the fields of
    :class:`qsep_core.training.RunConfig`.
    """

    data: SEDDataConfig = field(default_factory=SEDDataConfig)
    model: str = "tiny"  # HTS-AT preset name (sed.config.PRESETS)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # qsep model folder to fine-tune from (its detector component)
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: str = "warmup_cosine"  # official | warmup_cosine | warmup_constant
    warmup_steps: int = 0  # warmup_* schedules
    min_lr_ratio: float = 0.01  # warmup_cosine: final lr / lr
    official_warmup_scales: tuple[float, ...] = (0.02, 0.05, 0.1)  # official schedule
    official_milestones: tuple[int, ...] = (10, 20, 30)
    max_steps: int = -1
    max_epochs: int | None = None
    grad_clip: float = 1.0
    mixup_alpha: float = 0.5  # 0 disables mixup
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    precision: str = "32-true"  # RunConfig field, SED's default
    sync_batchnorm: bool = True  # under DDP on GPUs (ignored on CPU)
    val_every_n_steps: int | None = None  # None: once per epoch
    limit_val_batches: Any = 1.0
    checkpoint_every_n_steps: int = 200  # RunConfig field, SED's default
    log_per_class_ap: bool = True
    out_dir: str = "runs/sed"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_schedule not in ("official", "warmup_cosine", "warmup_constant"):
            raise ConfigError(f"lr_schedule must be official, warmup_cosine or warmup_constant, got {self.lr_schedule!r}")
        if self.mixup_alpha < 0:
            raise ConfigError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if self.data.format not in DATA_FORMATS:
            raise ConfigError(f"data.format must be audioset, hdf5 or manifest, got {self.data.format!r}")
        if self.data.crop not in ("start", "center", "random"):
            raise ConfigError(f"data.crop must be start, center or random, got {self.data.crop!r}")


def load_sed_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None) -> SEDTrainingConfig:
    """Defaults, overlaid by the YAML file at ``path``, overlaid by ``overrides``.

    ``overrides`` maps dotted field names to values, e.g. ``{"data.batch_size": 8, "lr": 3e-4}``, or is a
    list of ``KEY=VALUE`` strings. Unknown fields are a :class:`ConfigError` naming them.
    """
    return load_config(SEDTrainingConfig, path, overrides)


# --------------------------------------------------------------------------------------------
# augmentation, metrics, schedule


class SpecAugment(nn.Module):
    """Zero random time and frequency stripes of ``(B, C, frames, mel)`` in training mode.

    Each example gets ``time_stripes`` stripes of width ``U[0, time_drop_width)`` frames and
    ``freq_stripes`` of width ``U[0, freq_drop_width)`` bins, uniformly placed (torchlibrosa's
    ``SpecAugmentation`` semantics). Identity in eval mode. Uses the global torch RNG of the
    input's device (seeded by ``lightning.seed_everything``).
    """

    def __init__(self, cfg: SpecAugmentConfig):
        super().__init__()
        self.cfg = cfg

    def _drop(self, x: torch.Tensor, dim: int, width: int, stripes: int) -> torch.Tensor:
        total = x.shape[dim]
        if width <= 0 or stripes <= 0 or total <= 1:
            return x
        b = x.shape[0]
        width = min(width, total)
        widths = torch.randint(0, width, (b, stripes), device=x.device)  # (batch, stripes)
        starts = (torch.rand(b, stripes, device=x.device) * (total - widths + 1)).floor().long()  # (batch, stripes)
        pos = torch.arange(total, device=x.device)  # (total,)
        hit = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # (batch, stripes, total)
        keep = ~hit.any(1)  # (batch, total)
        shape = [b] + [1] * (x.dim() - 1)
        shape[dim] = total
        return x * keep.reshape(shape).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, frames, mel)`` -> same shape."""
        if not self.training or not self.cfg.enabled:
            return x
        x = self._drop(x, 2, self.cfg.time_drop_width, self.cfg.time_stripes)
        return self._drop(x, 3, self.cfg.freq_drop_width, self.cfg.freq_stripes)


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of one class (scikit-learn's definition, ties grouped).

    ``scores``, ``labels``: ``(N,)``. AP = sum over distinct thresholds of
    ``(recall_n - recall_{n-1}) * precision_n``. NaN when there is no positive.
    """
    scores = scores.double().flatten()
    labels = (labels.flatten() > 0).double()
    n_pos = labels.sum()
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    tp = torch.cumsum(y, 0)
    # keep the last index of every run of equal scores: the thresholds
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, k = tp[last], torch.nonzero(last).flatten().double() + 1
    precision = tp / k
    recall = tp / n_pos
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((d_recall * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor, int]:
    """Macro AP over classes with at least one positive.

    Args:
        scores: ``(N, classes)`` predicted probabilities.
        targets: ``(N, classes)`` multi-hot.

    Returns:
        ``(mAP, per_class (classes,) with NaN for excluded classes, number of excluded classes)``.
        ``mAP`` is NaN if no class has a positive.
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be (N, classes)")
    per = torch.tensor([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])], dtype=torch.float64)
    valid = ~torch.isnan(per)
    m = float(per[valid].mean()) if bool(valid.any()) else float("nan")
    return m, per, int((~valid).sum())


def official_lr_scale(epoch: int, warmup_scales: Sequence[float] = (0.02, 0.05, 0.1), milestones: Sequence[int] = (10, 20, 30)) -> float:
    """The official HTS-AT per-epoch lr factor (``lr_foo`` in its ``sed_model.py``), reproduced.

    Epochs ``< len(warmup_scales)`` use ``warmup_scales[epoch]``. Later epochs walk the scales
    backwards at each milestone (0.1 -> 0.05 -> 0.02); after the last milestone the factor is
    ``max(warmup_scales[0] * 0.98**epoch, 0.03)``.
    """
    n = len(warmup_scales)
    if epoch < n:
        return float(warmup_scales[epoch])
    import bisect

    pos = -1 - bisect.bisect_left(list(milestones), epoch)
    if pos < -n:
        return max(float(warmup_scales[0]) * 0.98**epoch, 0.03)
    return float(warmup_scales[pos])


# --------------------------------------------------------------------------------------------
# network


@dataclass
class NetworkSpec:
    """A network to train and how to rebuild it from a model folder (``BUILDERS[kind](config)``)."""

    module: nn.Module
    kind: str
    config: dict[str, Any]
    sample_rate: int
    clip_samples: int


def _first_field(names: Sequence[str], available: set[str]) -> str | None:
    return next((n for n in names if n in available), None)


def build_network(cfg: SEDTrainingConfig, num_classes: int) -> NetworkSpec:
    """The HTS-AT of preset ``cfg.model`` with ``cfg.model_overrides`` and ``num_classes`` outputs."""
    import dataclasses

    from sed import config as sed_config
    from sed import htsat

    base = sed_config.htsat_config(cfg.model)
    fields = {f.name for f in dataclasses.fields(base)}
    changes = dict(cfg.model_overrides)
    ncls = _first_field(("num_classes", "classes_num", "n_classes"), fields)
    if ncls is None:
        raise ConfigError(f"HTSATConfig has no class-count field among {sorted(fields)}")
    changes[ncls] = int(num_classes)
    mcfg = sed_config.htsat_config(cfg.model, **changes)
    net = htsat.HTSAT(mcfg)
    sr = int(getattr(mcfg, "sample_rate"))
    if hasattr(mcfg, "clip_samples"):
        clip = int(getattr(mcfg, "clip_samples"))
    elif hasattr(mcfg, "clip_seconds"):
        clip = int(round(float(getattr(mcfg, "clip_seconds")) * sr))
    else:
        raise ConfigError("HTSATConfig has neither clip_samples nor clip_seconds")
    return NetworkSpec(net, DETECTOR_KIND, to_dict(mcfg), sr, clip)


NetworkFactory = Callable[[SEDTrainingConfig, int], NetworkSpec]


# --------------------------------------------------------------------------------------------
# LightningModule


class SEDModule(L.LightningModule):
    """Clip-level BCE training of a sound event detector.

    Args:
        net: the network (see the module docstring for what it must provide).
        cfg: the training config (optimiser, schedule, augmentation).
        classes: class list (names used for the per-class AP logs).

    Batches are :class:`sed.data.WeakItem` ``(wave (B, samples), target (B, K), ids)``.
    """

    def __init__(self, net: nn.Module, cfg: SEDTrainingConfig, classes: ClassList):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.classes = classes
        self.save_hyperparameters({"training": to_dict(cfg), "classes": classes.to_dict()})
        self.spec_augment = SpecAugment(cfg.spec_augment)
        self._mixup = cfg.mixup_alpha > 0
        self._specaug = cfg.spec_augment.enabled
        staged = callable(getattr(net, "features", None)) and callable(getattr(net, "forward_mel", None))
        if (self._mixup or self._specaug) and not staged:
            raise ConfigError(
                f"{type(net).__name__} has no features()/forward_mel() to augment the log-mel in between; "
                "set mixup_alpha: 0 and spec_augment.enabled: false"
            )
        self._val_scores: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        #: results of the last validation epoch: mAP, per-class AP (NaN = excluded), excluded count
        self.val_result: dict[str, Any] = {}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """``wave`` ``(B, samples)`` -> the network's output dict (no augmentation unless training)."""
        return self.net(wave)

    def _sample_lambda(self, b: int, device: torch.device) -> torch.Tensor:
        a = torch.tensor(float(self.cfg.mixup_alpha))
        return torch.distributions.Beta(a, a).sample((b,)).to(device=device, dtype=torch.float32)  # (batch,)

    @staticmethod
    def mixup(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Official HTS-AT mixup: ``x * lam + x.flip(0) * (1 - lam)``; ``x`` ``(B, ...)``, ``lam`` ``(B,)``."""
        lam = lam.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))  # (batch, 1, ...)
        return x * lam + x.flip(0) * (1 - lam)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every clip of the batch was bad and skipped (max_bad_clips)
            return None
        wave, target = batch[0], batch[1]  # (B, samples), (B, K)
        if self._mixup or self._specaug:
            x = self.net.features(wave)  # (B, 1, frames, mel)
            x = self.spec_augment(x)
            if self._mixup:
                x = self.mixup(x, self._sample_lambda(wave.shape[0], wave.device))
            out = self.net.forward_mel(x)
        else:
            out = self.net(wave)
        loss = self._loss(out["clipwise"], target)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=wave.shape[0], sync_dist=True)
        return loss

    @staticmethod
    def _loss(clipwise: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # BCE on probabilities is unsafe under autocast: compute it in float32
        with torch.autocast(device_type=clipwise.device.type, enabled=False):
            return F.binary_cross_entropy(clipwise.float().clamp(0.0, 1.0), target.float())

    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_targets = [], []

    def validation_step(self, batch, batch_idx: int) -> None:
        if batch is None:  # every clip of the batch was bad and skipped (max_bad_clips)
            return
        wave, target = batch[0], batch[1]
        out = self.net(wave)
        clipwise = out["clipwise"].float()
        self.log("val_loss", self._loss(clipwise, target), on_epoch=True, batch_size=wave.shape[0], sync_dist=True)
        self._val_scores.append(clipwise.detach())
        self._val_targets.append(target.detach().float())

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        scores = torch.cat(self._val_scores)  # (n, K)
        targets = torch.cat(self._val_targets)  # (n, K)
        if self.trainer is not None and self.trainer.world_size > 1:
            scores, targets = self._gather_uneven(scores), self._gather_uneven(targets)  # (N, K) every clip once
        m, per, excluded = mean_average_precision(scores.cpu(), targets.cpu())
        self.val_result = {"mAP": m, "per_class": per, "excluded": excluded, "clips": int(scores.shape[0])}
        # every rank computed the same numbers from the gathered tensors (the sync averages equal values)
        self.log(VAL_METRIC, m if not math.isnan(m) else 0.0, prog_bar=True, sync_dist=True)
        self.log("val_classes_without_positives", float(excluded), sync_dist=True)
        if self.cfg.log_per_class_ap:
            self.log_dict({f"val_ap/{self.classes.name(k)}": float(v) for k, v in enumerate(per.tolist()) if not math.isnan(v)}, sync_dist=True)
        self._val_scores, self._val_targets = [], []

    def _gather_uneven(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``(n_rank, K)`` rows, concatenated (ranks may hold different counts)."""
        n = torch.tensor([x.shape[0]], device=x.device)
        counts = self.all_gather(n).flatten().tolist()  # (world,)
        pad = x.new_zeros(max(counts) - x.shape[0], x.shape[1])
        allx = self.all_gather(torch.cat([x, pad]))  # (world, max_n, K)
        return torch.cat([allx[r, :c] for r, c in enumerate(counts)])

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
        if cfg.lr_schedule == "official":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda e: official_lr_scale(e, cfg.official_warmup_scales, cfg.official_milestones)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else 0
        return {"optimizer": opt, "lr_scheduler": warmup_scheduler(
            opt, warmup_steps=cfg.warmup_steps, total_steps=total, cosine=cfg.lr_schedule == "warmup_cosine",
            min_ratio=cfg.min_lr_ratio)}


# --------------------------------------------------------------------------------------------
# data


def build_classes(cfg: SEDDataConfig) -> ClassList:
    """The class list of a run: ``class_labels`` if given, else derived from the data."""
    if cfg.class_labels:
        return ClassList.from_csv(cfg.class_labels)
    if cfg.format == "manifest":
        if not cfg.train:
            raise ConfigError("data.train (the training manifest) is not set")
        return manifest_classes(cfg.train)
    if cfg.format == "hdf5":
        h5py = require("h5py", "hdf5", "reading HDF5 packs")
        first = cfg.train[0] if isinstance(cfg.train, (list, tuple)) else cfg.train
        if not first or not Path(first).is_file():
            raise ConfigError(f"data.train: HDF5 pack not found: {first}")
        with h5py.File(first, "r") as f:
            return ClassList.generic(int(f["target"].shape[1]))
    raise ConfigError("data.class_labels (class_labels_indices.csv) is required for the audioset format")


def build_dataset(cfg: SEDDataConfig, split: str, classes: ClassList, sample_rate: int, clip_samples: int, seed: int) -> WeakLabelDataset | None:
    """The ``"train"`` or ``"val"`` dataset described by ``cfg`` (``None`` when ``val`` is unset)."""
    src = getattr(cfg, split)
    if not src:
        if split == "train":
            raise ConfigError("data.train is not set")
        return None
    crop = cfg.crop if split == "train" else "start"
    folder = getattr(cfg, f"{split}_audio_dir")
    if cfg.format == "audioset" and not folder:
        raise ConfigError(f"data.{split}_audio_dir (folder of the {split} clips) is not set")
    return open_weak_dataset(src, format=cfg.format, classes=classes, sample_rate=sample_rate, clip_samples=clip_samples,
                             crop=crop, seed=seed, audio_dir=folder, pack_sample_rate=cfg.pack_sample_rate)


def build_datasets(cfg: SEDTrainingConfig, classes: ClassList, sample_rate: int, clip_samples: int) -> tuple[WeakLabelDataset, WeakLabelDataset | None]:
    """(train, val) datasets; the clip length is ``data.clip_seconds`` or the model's."""
    if cfg.data.clip_seconds:
        want = int(round(cfg.data.clip_seconds * sample_rate))
        if want > clip_samples:
            raise ConfigError(
                f"data.clip_seconds={cfg.data.clip_seconds} is longer than the model's clip "
                f"({clip_samples / sample_rate:g} s); raise the model's clip_samples in model_overrides instead"
            )
        clip_samples = want
    train = build_dataset(cfg.data, "train", classes, sample_rate, clip_samples, cfg.seed)
    val = build_dataset(cfg.data, "val", classes, sample_rate, clip_samples, cfg.seed)
    return train, val


class _ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``0..n-1``: a split without padding (shares may differ by one)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class SEDDataModule(L.LightningDataModule):
    """Loaders for SED training.

    Training uses :class:`BalancedClassSampler` (or a seeded shuffle) sharded by the trainer's
    rank; under DDP the validation set is split between the ranks without padding and the
    scores are gathered, so the mAP counts every validation clip exactly once.
    Run the trainer with ``use_distributed_sampler=False`` (as :func:`train_sed` does).
    """

    def __init__(self, cfg: SEDTrainingConfig, train: WeakLabelDataset, val: WeakLabelDataset | None):
        super().__init__()
        self.cfg, self.train_set, self.val_set = cfg, train, val

    def _rank(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader_kwargs(self) -> dict[str, Any]:
        n = self.cfg.data.num_workers
        return {"num_workers": n, "persistent_workers": n > 0, "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        d = self.cfg.data
        if d.balanced:
            sampler = BalancedClassSampler(self.train_set.targets, d.epoch_size, seed=self.cfg.seed, rank=rank, world_size=world)
            if sampler.empty_classes:
                log.warning("%d class(es) have no training clip and are never sampled", len(sampler.empty_classes))
        else:
            sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.cfg.seed, drop_last=False)
        # keys epoch * N + index: the item's random crop follows the key, the same in every worker;
        # a mid-epoch resume skips the batches already trained
        resumable = ResumableSampler(sampler, d.batch_size, lambda: getattr(self, "trainer", None), epoch_keys=True,
                                     dataset_size=len(self.train_set))
        return DataLoader(self.train_set, batch_size=d.batch_size, sampler=resumable, drop_last=False,
                          collate_fn=_collate_good, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        rank, world = self._rank()
        # every validation clip exactly once over all ranks (no padding duplicates: they would bias the mAP)
        sampler = _ShardSampler(len(self.val_set), rank, world) if world > 1 else None
        bs = self.cfg.data.val_batch_size or self.cfg.data.batch_size
        return DataLoader(self.val_set, batch_size=bs, sampler=sampler, shuffle=False, collate_fn=_collate_good,
                          **self._loader_kwargs())


# --------------------------------------------------------------------------------------------
# the run


def _collate_good(items: list) -> Any:
    """Default collation of the items that were read (a bad clip skipped by ``max_bad_clips`` is None)."""
    good = [it for it in items if it is not None]
    if not good:
        return None  # a whole batch of bad clips: Lightning skips the step
    return torch.utils.data.default_collate(good)


class _EpochToDataset(L.Callback):
    """Tell the training set the epoch (random crops change per epoch)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm.train_set, "set_epoch"):
            dm.train_set.set_epoch(trainer.current_epoch)


def _init_weights(spec: NetworkSpec, folder: str) -> list[str]:
    """Load the detector of a qsep model folder into ``spec.module`` for fine-tuning.

    The architecture must be the same except for the number of classes; when that differs
    (e.g. AudioSet's 527 -> your own labels), the weights whose shape depends on it (the
    token-semantic head) keep their fresh initialisation. Returns the names of those weights.
    """
    from qsep_core.checkpoint import ModelFolder
    from sed.config import HTSATConfig

    mf = ModelFolder(folder)
    src_cfg = upgrade_fields(HTSATConfig, mf.component_config(DETECTOR_COMPONENT))  # folders written before a field rename
    differ = sorted(k for k in set(src_cfg) | set(spec.config) if k != "num_classes" and src_cfg.get(k) != spec.config.get(k))
    if differ:
        raise ConfigError(
            f"init_from {folder}: its detector differs from the configured model in {differ}; "
            "pick the preset / model_overrides it was built with"
        )
    src = mf.state_dict(DETECTOR_COMPONENT)
    own = spec.module.state_dict()
    missing = sorted(set(own) - set(src))
    unexpected = sorted(set(src) - set(own))
    if missing or unexpected:
        raise ConfigError(f"init_from {folder}: missing weights {missing[:8]}, unexpected weights {unexpected[:8]}")
    reshaped = sorted(k for k in own if own[k].shape != src[k].shape)
    if reshaped and src_cfg.get("num_classes") == spec.config.get("num_classes"):
        raise ConfigError(f"init_from {folder}: shape mismatches in {reshaped[:8]}")
    spec.module.load_state_dict({k: (own[k] if k in reshaped else src[k]) for k in own}, strict=True)
    if reshaped:
        log.warning("init_from %s: %d class(es) there, %d here; re-initialised %s", folder, src_cfg.get("num_classes"), spec.config.get("num_classes"), reshaped)
    return reshaped


def train_sed(cfg: SEDTrainingConfig, network_factory: NetworkFactory | None = None, trainer_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Train a sound event detector and export the best model.

    Args:
        cfg: the run's config.
        network_factory: ``(cfg, num_classes) -> NetworkSpec``; default :func:`build_network`
            (HTS-AT of ``cfg.model``). Tests pass a small stand-in.
        trainer_kwargs: extra ``lightning.Trainer`` arguments (e.g. callbacks).

    Returns:
        The exported qsep model folder ``<out_dir>/model`` (component ``"detector"``).

    Files under ``out_dir``: ``checkpoints/last.ckpt`` (every ``checkpoint_every_n_steps``;
    a new run with the same ``out_dir`` resumes from it unless ``resume: false``),
    ``checkpoints/best-*.ckpt`` (highest ``val_mAP``), ``logs/`` (CSV metrics),
    ``config.yaml`` (the resolved config) and ``model/``.
    """
    from qsep_core.checkpoint import Component, save_model

    out = Path(cfg.out_dir)
    begin_run(cfg, out)
    classes = build_classes(cfg.data)
    spec = (network_factory or build_network)(cfg, len(classes))
    if cfg.init_from:
        _init_weights(spec, cfg.init_from)
    train_set, val_set = build_datasets(cfg, classes, spec.sample_rate, spec.clip_samples)
    train_set.bad_clips = BadClipGuard(cfg.max_bad_clips, "training clip")
    if val_set is not None:
        val_set.bad_clips = BadClipGuard(cfg.max_bad_clips, "validation clip")
    empty = [classes.name(k) for k, c in enumerate(train_set.class_counts().tolist()) if c == 0]
    if empty:
        log.warning("%d class(es) have no training clip (missing on disk or never labelled): %s%s", len(empty),
                    ", ".join(empty[:10]), " ..." if len(empty) > 10 else "")
    dm = SEDDataModule(cfg, train_set, val_set)
    module = SEDModule(spec.module, cfg, classes)

    extra: dict[str, Any] = dict(
        gradient_clip_val=cfg.grad_clip or None,
        # SyncBatchNorm only works on CUDA modules (DDP on CPU refuses it)
        sync_batchnorm=cfg.sync_batchnorm and cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available(),
        limit_val_batches=cfg.limit_val_batches if val_set is not None else 0,
    )
    if cfg.val_every_n_steps:
        extra.update(val_check_interval=int(cfg.val_every_n_steps), check_val_every_n_epoch=None)
    extra.update(trainer_kwargs or {})
    model_dir = out / "model"

    def export(result: RunResult) -> Path:
        res = module.val_result
        per = res.get("per_class")
        best = result.best
        meta = {
            "task": "sound_event_detection",
            "class_names": list(classes.names),
            "class_mids": list(classes.mids),
            "training_config": to_dict(cfg),
            "global_step": int(result.trainer.global_step),
            "best_checkpoint": os.path.relpath(best, out) if best else None,
            "val_mAP": None if not res or math.isnan(res["mAP"]) else float(res["mAP"]),
            "val_classes_without_positives": res.get("excluded"),
            "val_clips": res.get("clips"),
            "val_per_class_ap": None if per is None else {classes.name(k): (None if math.isnan(v) else float(v)) for k, v in enumerate(per.tolist())},
            "train_clips": len(train_set),
            "train_missing_clips": len(train_set.report.missing),
            "val_missing_clips": None if val_set is None else len(val_set.report.missing),
        }
        state = {k: v.detach().cpu() for k, v in module.net.state_dict().items()}
        return save_model(model_dir, {DETECTOR_COMPONENT: Component(spec.kind, spec.config, state)},
                          metadata=json.loads(json.dumps(meta)), overwrite=True)

    best = None
    if val_set is not None:
        best = BestCheckpoint(VAL_METRIC, "max", "best-step{step}-map{val_mAP:.4f}", auto_insert_metric_name=False)
    data_id = {
        "classes": fingerprint_of(list(classes.names)),
        "train": {"clips": len(train_set), "id": fingerprint_of(list(train_set.clip_ids), train_set.targets)},
        "val": None if val_set is None else {"clips": len(val_set), "id": fingerprint_of(list(val_set.clip_ids), val_set.targets)},
    }
    banner = [f"data ({cfg.data.format}): {len(train_set)} training clips"
              f"{'' if val_set is None else f', {len(val_set)} validation clips'}, {len(classes)} classes, "
              f"batch {cfg.data.batch_size} per device, model {spec.kind} ({cfg.model})"]
    run_training(
        module, dm, cfg, out_dir=out, max_steps=cfg.max_steps, max_epochs=cfg.max_epochs, best=best,
        # the exported weights' own metrics (loads the best checkpoint when there is one)
        validate_best=val_set is not None, export=export, callbacks=[_EpochToDataset()], trainer_kwargs=extra,
        record=cfg, fingerprint=data_id, banner=banner,
    )
    return model_dir
