"""The one training runner of qsep: run settings, the learning-rate schedule and the Lightning skeleton.

SED training (:mod:`sed.train`), separator training (:mod:`separator.train`) and text-projection training
(:mod:`separator.query.train`) all run through here; mining (:mod:`sed.mining`) shares the placement fields.

- :class:`PlacementConfig`: where a run executes (``accelerator``, ``devices``, ``num_nodes``, ``strategy``,
  ``precision``); the training and mining configs inherit these fields, so YAML keys and ``KEY=VALUE``
  overrides keep their flat names (``devices: 4``, ``precision=bf16-mixed``).
- :class:`RunConfig`: placement plus ``seed``, ``resume``, ``checkpoint_every_n_steps``, ``log_every_n_steps``
  and ``progress``.
- :func:`lr_scale` / :func:`warmup_scheduler`: linear warm-up, then constant or cosine down to a floor.
- :func:`begin_run` (seed, run folder, ``config.yaml``) and :func:`run_training` (Trainer, ``last.ckpt`` /
  best checkpoints, resume, fit, optional validation of the best checkpoint, rank-0 export).

Run folder layout written by :func:`run_training` (``out_dir``)::

    config.yaml              the resolved config (begin_run)
    checkpoints/last.ckpt    every checkpoint_every_n_steps steps (and at each epoch end if asked);
                             a new run with the same out_dir resumes from it unless resume is false
    checkpoints/best-*.ckpt  the best checkpoint by the monitored validation metric
    logs/                    CSV metrics
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from qsep_core.config import ConfigError, to_dict

__all__ = [
    "PlacementConfig",
    "RunConfig",
    "BestCheckpoint",
    "RunResult",
    "resolve_precision",
    "lr_scale",
    "warmup_scheduler",
    "begin_run",
    "run_training",
]

log = logging.getLogger(__name__)

#: file name of the checkpoint a run resumes from
LAST_CHECKPOINT = "last.ckpt"


@dataclass
class PlacementConfig:
    """Where a run executes (Lightning placement).

    Attributes:
        accelerator: ``auto``, ``cpu``, ``gpu`` / ``cuda``.
        devices: devices per node: a number (``4`` -> DDP), a list of indices, or ``auto``.
        num_nodes: nodes for multi-node DDP.
        strategy: Lightning strategy (``auto``, ``ddp``, ``ddp_spawn``, ...).
        precision: any Lightning precision, or ``auto`` = ``bf16-mixed`` on CUDA and ``32-true`` elsewhere.
    """

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"

    def trainer_placement(self) -> dict[str, Any]:
        """The five placement arguments of ``lightning.Trainer`` (``precision`` resolved, see :func:`resolve_precision`)."""
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "strategy": self.strategy,
            "precision": resolve_precision(self.precision, self.accelerator),
        }


@dataclass
class RunConfig(PlacementConfig):
    """Placement plus what every training run shares.

    Attributes:
        seed: seeds Python, NumPy and torch (:func:`begin_run`) and everything the run derives from it.
        resume: continue from ``<out_dir>/checkpoints/last.ckpt`` when it exists.
        checkpoint_every_n_steps: save ``last.ckpt`` this often (a kill loses at most this many steps; 0: never).
        log_every_n_steps: metric logging interval.
        progress: show the progress bar and the model summary.
    """

    seed: int = 0
    resume: bool = True
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 50
    progress: bool = True


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``precision`` with ``auto`` replaced: ``bf16-mixed`` when the run is on CUDA, else ``32-true``."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


# ----------------------------------------------------------------------------------------------
# the schedule
# ----------------------------------------------------------------------------------------------
def lr_scale(step: int, *, warmup_steps: int = 0, total_steps: int = 0, cosine: bool = False,
             min_ratio: float = 0.0) -> float:
    """Learning-rate factor at optimiser step ``step`` (0-based): linear warm-up, then constant or cosine.

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``. After it: 1 (``cosine`` false, or
    ``total_steps <= warmup_steps``), or a half cosine from 1 at ``warmup_steps`` down to ``min_ratio`` at
    ``total_steps``, held at ``min_ratio`` afterwards.

    Raises:
        ValueError: ``min_ratio`` outside ``[0, 1]``.
    """
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine or total_steps <= warmup_steps:
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_scheduler(optimizer: torch.optim.Optimizer, *, warmup_steps: int = 0, total_steps: int = 0,
                     cosine: bool = False, min_ratio: float = 0.0) -> dict[str, Any]:
    """A per-step ``LambdaLR`` of :func:`lr_scale`, as the ``lr_scheduler`` entry Lightning expects."""
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_scale(s, warmup_steps=warmup_steps, total_steps=total_steps, cosine=cosine, min_ratio=min_ratio),
    )
    return {"scheduler": sched, "interval": "step"}


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------
@dataclass
class BestCheckpoint:
    """Keep the best checkpoint by a logged validation metric.

    Attributes:
        monitor: the metric name (None: the most recent checkpoint, saved at each validation).
        mode: ``max`` or ``min``.
        filename: Lightning filename template, e.g. ``best-step{step}-map{val_mAP:.4f}``.
        auto_insert_metric_name: Lightning's option of the same name.
    """

    monitor: str | None
    mode: str = "max"
    filename: str = "best-{epoch}-{step}"
    auto_insert_metric_name: bool = True


@dataclass
class RunResult:
    """What :func:`run_training` hands back.

    Attributes:
        trainer: the fitted ``lightning.Trainer``.
        best: path of the best checkpoint (None: no best checkpoint was kept or none was written).
        best_score: its monitored metric (None without one).
        last: path of ``<out_dir>/checkpoints/last.ckpt`` (None without a run folder; it may not exist
            when ``checkpoint_every_n_steps`` is 0 and nothing else wrote it).
        exported: the rank-0 export hook's return value (None on other ranks or without a hook).
    """

    trainer: Any
    best: str | None
    best_score: float | None
    last: str | None
    exported: Any = None


def begin_run(run: RunConfig, out_dir: str | Path | None = None, record: Any = None) -> Path | None:
    """Seed everything from ``run.seed`` and prepare the run folder; call it before building the model.

    Seeds Python, NumPy and torch (``lightning.seed_everything``, workers included), so weight
    initialisation and everything random in the run follow the seed. With ``out_dir``: creates it and
    writes ``config.yaml`` (``record``, a dataclass; default ``run``). Returns the folder (or None).
    """
    import lightning as L

    L.seed_everything(run.seed, workers=True, verbose=False)
    if out_dir is None:
        return None
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(record if record is not None else run), sort_keys=False))
    return out


def run_training(
    module: Any,
    datamodule: Any,
    run: RunConfig,
    *,
    out_dir: str | Path | None,
    max_steps: int = -1,
    max_epochs: int | None = None,
    best: BestCheckpoint | None = None,
    last_every_epoch: bool = False,
    log_version: int | str = "",
    validate_best: bool = False,
    export: Callable[[RunResult], Any] | None = None,
    callbacks: Sequence[Any] = (),
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> RunResult:
    """Fit ``module`` on ``datamodule`` with the placement, checkpoints and resume of ``run``.

    Args:
        module: a ``lightning.LightningModule``.
        datamodule: a ``lightning.LightningDataModule``.
        run: placement, seed (already applied by :func:`begin_run`), resume, checkpoint cadence, logging.
        out_dir: the run folder (checkpoints under ``checkpoints/``, CSV logs under ``logs/``); None: no
            checkpoints, no logs, no resume (a short in-memory run).
        max_steps, max_epochs: stopping (Lightning semantics; ``max_epochs`` None with ``max_steps > 0``
            means "until ``max_steps``").
        best: keep the best checkpoint (None: only ``last.ckpt``).
        last_every_epoch: also write ``last.ckpt`` at each epoch end (a finished run then resumes to
            "nothing left to do").
        log_version: CSV logger version (``""``: ``logs/metrics.csv``; ``0``: ``logs/version_0/``).
        validate_best: after fitting, run validation (all ranks) on the best checkpoint, so the
            module's validation results describe the weights that are exported.
        export: called on global rank 0 only, after fitting (and ``validate_best``), with the
            :class:`RunResult`; its return value becomes ``RunResult.exported``. Other ranks wait for it.
        callbacks: extra Lightning callbacks.
        trainer_kwargs: extra ``lightning.Trainer`` arguments (override the runner's; ``callbacks`` are added).

    Returns:
        The :class:`RunResult` (trainer, best and last checkpoint paths, export result).

    Raises:
        ConfigError: ``run.checkpoint_every_n_steps`` is negative.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    if run.checkpoint_every_n_steps < 0:
        raise ConfigError(f"checkpoint_every_n_steps must be >= 0, got {run.checkpoint_every_n_steps}")
    cbs: list[Any] = []
    best_cb = None
    ckdir = Path(out_dir) / "checkpoints" if out_dir is not None else None
    if ckdir is not None:
        if best is not None:
            best_cb = ModelCheckpoint(dirpath=ckdir, filename=best.filename, monitor=best.monitor, mode=best.mode,
                                      save_top_k=1, auto_insert_metric_name=best.auto_insert_metric_name)
            cbs.append(best_cb)
        if run.checkpoint_every_n_steps > 0:
            # last.ckpt every N steps; Lightning wants the step and the epoch trigger in separate callbacks
            cbs.append(ModelCheckpoint(dirpath=ckdir, filename="last-steps", save_top_k=0, save_last=True,
                                       every_n_train_steps=run.checkpoint_every_n_steps))
        if last_every_epoch:
            cbs.append(ModelCheckpoint(dirpath=ckdir, filename="last-epoch", save_top_k=0, save_last=True, every_n_epochs=1))
    cbs.extend(callbacks)
    kwargs: dict[str, Any] = dict(
        **run.trainer_placement(),
        max_steps=max_steps,
        max_epochs=max_epochs if max_epochs is not None else (-1 if max_steps > 0 else None),
        logger=CSVLogger(str(out_dir), name="logs", version=log_version) if out_dir is not None else False,
        enable_checkpointing=bool(ckdir is not None and (best_cb is not None or run.checkpoint_every_n_steps > 0 or last_every_epoch)),
        enable_progress_bar=run.progress,
        enable_model_summary=run.progress,
        log_every_n_steps=run.log_every_n_steps,
        use_distributed_sampler=False,  # every data module of qsep shards by rank itself
        num_sanity_val_steps=0,
    )
    if out_dir is not None:
        kwargs["default_root_dir"] = str(out_dir)
    extra = dict(trainer_kwargs or {})
    cbs.extend(extra.pop("callbacks", []))
    kwargs.update(extra)
    trainer = L.Trainer(callbacks=cbs, **kwargs)

    last = ckdir / LAST_CHECKPOINT if ckdir is not None else None
    ckpt_path = str(last) if run.resume and last is not None and last.is_file() else None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    best_path = best_cb.best_model_path if best_cb is not None and best_cb.best_model_path else None
    if validate_best:
        trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
    score = best_cb.best_model_score if best_cb is not None and best.monitor is not None else None
    result = RunResult(trainer, best_path, float(score) if score is not None else None, str(last) if last is not None else None)
    if export is not None:
        if trainer.is_global_zero:
            result.exported = export(result)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
    return result
