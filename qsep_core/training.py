"""The one training runner of qsep: run settings, the learning-rate schedule and the Lightning skeleton.

SED training (:mod:`sed.train`), separator training (:mod:`separator.train`) and text-projection training
(:mod:`separator.query.train`) all run through here; mining (:mod:`sed.mining`) shares the placement fields.

- :class:`PlacementConfig`: where a run executes (``accelerator``, ``devices``, ``num_nodes``, ``strategy``,
  ``precision``); the training and mining configs inherit these fields, so YAML keys and ``KEY=VALUE``
  overrides keep their flat names (``devices: 4``, ``precision=bf16-mixed``).
- :class:`RunConfig`: placement plus ``seed``, ``resume``, ``checkpoint_every_n_steps``, ``log_every_n_steps``,
  ``progress`` and ``max_bad_clips``.
- :func:`lr_scale` / :func:`warmup_scheduler`: linear warm-up, then constant or cosine down to a floor.
- :func:`begin_run` (seed, run folder) and :func:`run_training` (provenance check, Trainer, ``last.ckpt`` /
  best checkpoint, resume, signals, progress lines, fit, final validation, rank-0 export).

Run folder layout written by :func:`run_training` (``out_dir``)::

    run.json                 what the run is (config, data fingerprint), its state (running / interrupted /
                             finished), the step reached and the target (max_steps / max_epochs)
    config.yaml              the resolved config (written once the data and model were built)
    checkpoints/last.ckpt    every checkpoint_every_n_steps steps, at the end, and when a signal stops the
                             run; a rerun of the same command resumes from it
    checkpoints/best-*.ckpt  the best checkpoint by the monitored validation metric (one file)
    checkpoints/best.json    which file that is, its score and step (the truth: it never names a missing file)
    logs/metrics.csv         CSV metrics of the whole run, kept across resumes
    previous-N/              an earlier run moved aside by ``resume: false`` (nothing is deleted)

What resume guarantees (tested on CPU with workers 0 and 2): a run stopped anywhere (a kill between
checkpoints, SIGTERM / SIGUSR1 / Ctrl-C, or a finished run continued with a larger ``max_steps``) and
rerun unchanged reaches the same weights and the same logged metrics as an uninterrupted run, bit for bit
on the same machine and device. It holds because (1) every random draw of a training step (dropout,
mixup, SpecAugment) comes from the global RNGs re-seeded from ``(seed, global step, rank)`` before the
step (:class:`StepSeed`), so no RNG state has to travel in the checkpoint; (2) data order and per-item
randomness are pure functions of ``(seed, epoch, position)`` and a mid-epoch resume skips the batches
already trained (:class:`ResumableSampler`); (3) Lightning restores weights, optimiser, schedule and loop
counters from ``last.ckpt``. Not covered: resuming on another device type or precision, or with another
number of devices (the steps still continue from the checkpoint, the numbers differ within float
rounding); nondeterministic GPU kernels (cuDNN, atomics) break bit-equality on GPUs even without a kill.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

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
    "RunMismatch",
    "TrainingInterrupted",
    "BadClipError",
    "BadClipGuard",
    "ResumableSampler",
    "StepSeed",
    "safe_load_checkpoint",
    "RUN_JSON",
    "fingerprint_of",
]

log = logging.getLogger(__name__)

#: file name of the checkpoint a run resumes from
LAST_CHECKPOINT = "last.ckpt"
#: the run's identity and state, in the run folder
RUN_JSON = "run.json"
#: which checkpoint is the best, in ``checkpoints/``
BEST_JSON = "best.json"
RUN_FORMAT = "qsep-training-run"


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
        """The five placement arguments of ``lightning.Trainer`` (``precision`` resolved, see :func:`resolve_precision`).

        Raises:
            ConfigError: a list of device indices where the run goes to the CPU (indices name GPUs; CPU
                processes are given as a count).
        """
        on_cpu = str(self.accelerator).lower() == "cpu" or (
            str(self.accelerator).lower() == "auto" and not torch.cuda.is_available())
        if on_cpu and isinstance(self.devices, (list, tuple)):
            raise ConfigError(f"devices={list(self.devices)} names GPU indices, but this run is on the CPU; give a "
                              f"number of CPU processes instead (e.g. --devices {len(self.devices)}), or --accelerator gpu")
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
        resume: ``true``: continue the run in ``out_dir`` (from ``checkpoints/last.ckpt``) when it is the same
            run (same config apart from :attr:`VOLATILE_FIELDS`, same data); a different run there is refused
            with the differences named. ``"anyway"``: continue it even though config or data differ.
            ``false``: start fresh; an earlier run there is moved to ``out_dir/previous-N/``.
        checkpoint_every_n_steps: save ``last.ckpt`` this often (a kill loses at most this many steps; 0:
            only at the end and on a stop signal).
        log_every_n_steps: metric logging interval, and the interval of the progress lines when no progress
            bar is shown.
        progress: a progress bar on a terminal; on a non-terminal (a log file, SLURM) one progress line every
            ``log_every_n_steps`` steps (and at least every 60 s) instead.
        max_bad_clips: clips that cannot be read (corrupt, missing, NaN/inf samples) are skipped and reported,
            up to this many; one more stops the run with the list. 0: the first bad clip stops the run.
    """

    #: fields that may change between a run and its resume (where and how it executes, how long it runs)
    VOLATILE_FIELDS: ClassVar[tuple[str, ...]] = (
        "accelerator", "devices", "num_nodes", "strategy", "precision", "resume", "checkpoint_every_n_steps",
        "log_every_n_steps", "progress", "max_bad_clips", "out_dir", "max_steps", "max_epochs", "export",
        "num_workers", "data.num_workers", "data.val_batch_size",
    )

    seed: int = 0
    resume: Any = True
    checkpoint_every_n_steps: int = 500
    log_every_n_steps: int = 50
    progress: bool = True
    max_bad_clips: int = 0

    def __post_init__(self) -> None:
        _check_run_fields(self)


def _check_run_fields(run: "RunConfig") -> None:
    if run.resume not in (True, False, "anyway"):
        raise ConfigError(f"resume must be true, false or 'anyway', got {run.resume!r}")
    if run.max_bad_clips < 0:
        raise ConfigError(f"max_bad_clips must be >= 0, got {run.max_bad_clips}")


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
# errors a run reports
# ----------------------------------------------------------------------------------------------
class RunMismatch(ConfigError):
    """``out_dir`` holds another run (other config or data) and ``resume`` is not ``"anyway"`` / false."""


class TrainingInterrupted(Exception):
    """A stop signal (SIGTERM, SIGUSR1, SIGINT) ended the run after a checkpoint was saved.

    Attributes:
        signal_name: e.g. ``"SIGTERM"``.
        step: the optimiser step saved in ``checkpoint``; a rerun resumes from it.
        checkpoint: path of ``last.ckpt``.
        exit_code: ``128 + signal number`` (what shells and schedulers report for a signal).
    """

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signal_name = signal.Signals(signum).name
        self.step, self.checkpoint, self.exit_code = int(step), str(checkpoint), 128 + int(signum)
        super().__init__(f"stopped by {self.signal_name} at step {self.step}; saved {self.checkpoint}; "
                         f"rerun the same command to resume from step {self.step}")


class BadClipError(ValueError):
    """More clips could not be read than ``max_bad_clips`` allows (the message lists them)."""


# ----------------------------------------------------------------------------------------------
# bad clips
# ----------------------------------------------------------------------------------------------
class BadClipGuard:
    """Skip-and-report for unreadable clips: wraps reading one clip, counts failures, enforces a limit.

    ``read(key, fn)`` returns ``fn()``, or None when it raised an ``OSError`` / ``ValueError`` (corrupt or
    missing file, decode error) or returned a tensor with NaN/inf, while at most ``limit`` distinct clips
    have failed; the next failure raises :class:`BadClipError` naming the clips. ``limit`` 0 is strict: the
    first bad clip raises, naming it. Each DataLoader worker holds its own copy; a clip fails the same way
    in every worker, so the distinct count is per worker (the limit is checked per process).

    Args:
        limit: bad clips tolerated (``RunConfig.max_bad_clips``).
        what: what the clips are, for messages (e.g. ``"training clip"``).
    """

    def __init__(self, limit: int = 0, what: str = "clip"):
        self.limit, self.what = int(limit), what
        self.bad: dict[str, str] = {}

    def read(self, key: str, fn: Callable[[], Any]) -> Any:
        from qsep_core.audio import AudioError

        try:
            out = fn()
            wave = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(wave, torch.Tensor) and wave.is_floating_point() and not bool(torch.isfinite(wave).all()):
                raise ValueError("NaN or inf samples")
            return out
        except (OSError, ValueError, RuntimeError, AudioError) as exc:
            self.bad.setdefault(str(key), f"{type(exc).__name__}: {exc}")
            if len(self.bad) > self.limit:
                listed = "; ".join(f"{k} ({v})" for k, v in list(self.bad.items())[:5])
                hint = ("skip up to N bad clips with max_bad_clips=N (--max-bad-clips N)" if self.limit == 0
                        else f"more than max_bad_clips={self.limit}; fix or remove them, or raise the limit")
                raise BadClipError(f"{len(self.bad)} bad {self.what}(s): {listed}; {hint}") from exc
            log.warning("skipping bad %s %s (%s); %d of at most %d", self.what, key, self.bad[str(key)], len(self.bad), self.limit)
            return None


# ----------------------------------------------------------------------------------------------
# exact resume: data order and per-step randomness
# ----------------------------------------------------------------------------------------------
class ResumableSampler(torch.utils.data.Sampler):
    """Wraps an epoch-seeded sampler so a run resumed mid-epoch trains on the batches an uninterrupted run would.

    The wrapped sampler must give the same order for the same epoch (``set_epoch``). Before each epoch's
    iteration the wrapper asks the trainer how many batches of this epoch were already trained (non-zero
    only right after a mid-epoch resume) and skips their indices; ``len`` stays the full epoch, as Lightning
    counts batches from the restored position. With ``epoch_keys`` each index ``i`` becomes the key
    ``epoch * dataset_size + i``, so a dataset can draw per-item randomness (random crops) from the key alone,
    the same in every DataLoader worker.

    Args:
        inner: the sampler (e.g. a class-balanced or shuffled one) with ``set_epoch`` if it depends on the epoch.
        batch_size: the loader's batch size (the number of indices per skipped batch).
        trainer: a callable returning the Lightning trainer (or None outside a fit).
        dataset_size: with ``epoch_keys``: the dataset's length.
    """

    def __init__(self, inner: Any, batch_size: int, trainer: Callable[[], Any], *, epoch_keys: bool = False,
                 dataset_size: int | None = None):
        self.inner, self.batch_size, self._trainer = inner, int(batch_size), trainer
        self.epoch_keys, self.dataset_size, self.epoch = epoch_keys, dataset_size, 0
        if epoch_keys and not dataset_size:
            raise ValueError("epoch_keys needs dataset_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def _done_batches(self) -> int:
        t = self._trainer()
        try:
            done = int(t.fit_loop.epoch_loop.batch_progress.current.processed) if t is not None else 0
        except AttributeError:
            return 0
        per_epoch = math.ceil(len(self.inner) / self.batch_size)
        return done if 0 < done < per_epoch else 0

    def __iter__(self) -> Iterator[int]:
        skip = self._done_batches() * self.batch_size
        offset = self.epoch * int(self.dataset_size) if self.epoch_keys else 0
        for j, i in enumerate(self.inner):
            if j >= skip:
                yield offset + int(i)


def fingerprint_of(*parts: Any) -> str:
    """A short SHA-256 hex digest of ``parts`` (tensors by their bytes, the rest by ``repr``)."""
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of optimiser step ``step`` on rank ``rank`` (a 63-bit mix of the three)."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + int(rank) * 0x94D049BB133111EB + 1) % (2**63 - 1)


def _seed_all(s: int) -> None:
    import numpy as np

    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def _lightning_callback_base() -> type:
    import lightning as L

    return L.Callback


class StepSeed(_lightning_callback_base()):
    """Re-seed Python, NumPy and torch (all devices) from ``(seed, global step, rank)`` before every training step.

    Dropout, mixup and SpecAugment then draw the same numbers at step ``n`` whether or not the run was
    stopped and resumed in between, with no RNG state in the checkpoint.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _seed_all(step_seed(self.seed, trainer.global_step, trainer.global_rank))


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------
@dataclass
class BestCheckpoint:
    """Keep the best checkpoint by a logged validation metric.

    Attributes:
        monitor: the metric name (None: no best checkpoint; exports use ``last.ckpt``).
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
        trainer: the fitted ``lightning.Trainer`` (None when the run was already complete).
        best: path of the best checkpoint (None: no best checkpoint was kept or none was written).
        best_score: its monitored metric (None without one).
        last: path of ``<out_dir>/checkpoints/last.ckpt`` (None without a run folder).
        exported: the rank-0 export hook's return value (None on other ranks, without a hook, or when the run
            was already complete).
        complete: the run folder held this run, finished with the same target: nothing was trained.
        global_step: the optimiser steps of the run.
    """

    trainer: Any
    best: str | None
    best_score: float | None
    last: str | None
    exported: Any = None
    complete: bool = False
    global_step: int = 0


def begin_run(run: RunConfig, out_dir: str | Path | None = None, record: Any = None) -> Path | None:
    """Seed everything from ``run.seed`` and create the run folder; call it before building the model.

    Seeds Python, NumPy and torch (``lightning.seed_everything``, workers included), so weight
    initialisation and everything random in the run follow the seed. ``config.yaml`` is written later, by
    :func:`run_training`, once the data and model were built (a failed start leaves the folder's
    provenance as it was). ``record`` is accepted for compatibility and unused. Returns the folder (or None).
    """
    import lightning as L

    L.seed_everything(run.seed, workers=True, verbose=False)
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def safe_load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` of a Lightning checkpoint with ``weights_only=True``, whatever the environment says.

    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is ignored for this load (it would let a planted file run code).

    Raises:
        ConfigError: the file is not a checkpoint that loads as plain tensors and containers.
    """
    saved = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        ckpt = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip / truncated), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a training checkpoint this runner can load safely ({first}); "
                          "delete it, or start fresh with resume=false (--no-resume)") from None
    finally:
        if saved is not None:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = saved
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{path} is not a Lightning training checkpoint (no state_dict)")
    return ckpt


def _checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class _SafeCheckpointIO(TorchCheckpointIO):
        """Every checkpoint the trainer reads (resume, validate on the best) loads with ``weights_only=True``."""

        def load_checkpoint(self, path, map_location=None, weights_only=None):  # noqa: D401
            return safe_load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            # written next to the target and renamed: a kill never leaves half a checkpoint under the name
            path = Path(path)
            tmp = path.with_name(path.name + ".tmp")
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)

    return _SafeCheckpointIO()


def _atomic_json(path: Path, data: Any) -> None:
    from qsep_core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], volatile: Sequence[str]) -> list[str]:
    """``"key: old -> new"`` for every differing, non-volatile field of two flattened records."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k in volatile or k.split(".")[-1] in ("out_dir", "resume"):
            continue
        if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str):
            out.append(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}")
    return out


def _move_aside(out: Path) -> Path | None:
    """Move an earlier run's files (run.json, config.yaml, checkpoints/, logs/, model/) to ``out/previous-N``."""
    names = [n for n in (RUN_JSON, "config.yaml", "checkpoints", "logs", "model") if (out / n).exists()]
    if not names:
        return None
    n = 1
    while (out / f"previous-{n}").exists():
        n += 1
    dest = out / f"previous-{n}"
    dest.mkdir()
    for name in names:
        shutil.move(str(out / name), str(dest / name))
    return dest


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); move the run folder aside or start fresh with resume=false") from None


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _KeepingCSVLogger:
    """Lightning's CSV logger that keeps ``metrics.csv`` across resumes (Lightning's deletes it)."""

    @staticmethod
    def make(save_dir: str, name: str, version: Any):
        from lightning.pytorch.loggers import CSVLogger
        from lightning.pytorch.loggers.csv_logs import ExperimentWriter

        class _Writer(ExperimentWriter):
            def _check_log_dir_exists(self) -> None:
                # keep the rows of the run so far (run_training already cut them to the resumed checkpoint);
                # later rows are appended under the same header (or the file is rewritten with a wider one)
                self.rows = 0
                if os.path.isfile(self.metrics_file_path):
                    import csv

                    with open(self.metrics_file_path, newline="") as f:
                        reader = csv.DictReader(f)
                        self.metrics_keys = sorted(reader.fieldnames or [])
                        self.rows = sum(1 for _ in reader)

            def save(self) -> None:
                n = len(self.metrics)
                super().save()
                self.rows += n

        class _Logger(CSVLogger):
            @property
            def experiment(self):
                if self._experiment is None:
                    self._fs.makedirs(self.root_dir, exist_ok=True)
                    self._experiment = _Writer(log_dir=self.log_dir)
                return self._experiment

        return _Logger(save_dir, name=name, version=version)


def _cut_metrics(path: Path, step: int) -> None:
    """Drop the rows of ``metrics.csv`` that a resume from optimiser step ``step`` logs again.

    Lightning labels the rows of the batch that makes global step ``n + 1`` (and of a validation right
    after it) with step ``n``, so the rows labelled ``step`` and later belong to batches after the checkpoint.
    """
    if not path.is_file():
        return
    import csv
    import io

    from qsep_core.atomic import atomic_write_text

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)

    def later(r: dict[str, str]) -> bool:
        try:
            s = int(float(r.get("step") or 0))
        except ValueError:
            return False
        return s >= step

    kept = [r for r in rows if not later(r)]
    if len(kept) == len(rows):
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(kept)
    atomic_write_text(path, buf.getvalue())


class _Signals:
    """SIGTERM / SIGUSR1 / SIGINT during a fit: remember the first one; a second SIGINT aborts at once."""

    NAMES = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            log.warning("received %s: saving a checkpoint after this step, then stopping%s", signal.Signals(signum).name,
                        " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else "")

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.NAMES:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            self._old.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old = {}


class _RunCallback(_lightning_callback_base()):
    """last.ckpt, the best checkpoint, stop signals, progress lines: the run folder's bookkeeping."""

    def __init__(self, ckdir: Path | None, run: RunConfig, best: BestCheckpoint | None, last_every_epoch: bool,
                 signals: _Signals, lines: bool, banner: Sequence[str]):
        self.ckdir, self.run, self.best, self.last_every_epoch = ckdir, run, best, last_every_epoch
        self.signals, self.lines, self.banner = signals, lines, list(banner)
        self.best_record: dict[str, Any] | None = None
        if ckdir is not None and best is not None and best.monitor:
            rec = _read_json(ckdir / BEST_JSON)
            if rec and (ckdir / rec["file"]).is_file():
                self.best_record = rec
        self._saved_step = -1
        self._pending_step = -1
        self.last_val_step = -1
        self._t0 = time.monotonic()
        self._first_step = 0
        self._last_line = 0.0

    # ---- checkpoints
    @property
    def last_path(self) -> Path | None:
        return self.ckdir / LAST_CHECKPOINT if self.ckdir is not None else None

    def _save_last(self, trainer) -> None:
        if self.ckdir is None:
            return
        for lg in trainer.loggers:
            lg.save()
        trainer.save_checkpoint(self.last_path)
        self._saved_step = trainer.global_step

    def _val_due(self, trainer) -> bool:
        loop = trainer.fit_loop
        try:
            return bool(trainer.enable_validation and loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
        except AttributeError:
            return False

    def on_train_start(self, trainer, pl_module) -> None:
        self.signals.install()  # over Lightning's own SIGTERM handler (which would exit 0 without a checkpoint)
        self._t0, self._first_step = time.monotonic(), trainer.global_step
        if trainer.is_global_zero:
            for line in self.banner:
                log.info("%s", line)
            if trainer.global_step:
                log.info("resuming from step %d (%s)", trainer.global_step, self.last_path)

    def _stop_requested(self, trainer) -> bool:
        flag = self.signals.received is not None
        if trainer.world_size > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=trainer.strategy.root_device)
            flag = bool(trainer.strategy.reduce(t, reduce_op="max").item() > 0)
        return flag

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self._progress_line(trainer)
        stop = self._stop_requested(trainer)
        if stop:
            # saved now (or after this step's validation); the run stops when the next step would start,
            # once this step's metrics are logged
            self._stop_at = step
        every = self.run.checkpoint_every_n_steps
        final = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if (every > 0 and step % every == 0) or final or stop:
            if self._val_due(trainer):
                self._pending_step = step  # saved after this step's validation, so a resume does not skip it
            elif self._saved_step != step:
                self._save_last(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if getattr(self, "_stop_at", None) is not None:
            if self._saved_step != trainer.global_step:
                self._save_last(trainer)
            for lg in trainer.loggers:
                lg.save()
            raise TrainingInterrupted(self.signals.received or signal.SIGTERM, trainer.global_step, str(self.last_path))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs
        if (self.last_every_epoch or last_epoch) and self._saved_step != trainer.global_step:
            self._save_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.last_val_step = trainer.global_step
        self._update_best(trainer)
        if self.lines and trainer.is_global_zero:
            shown = {k: float(v) for k, v in trainer.callback_metrics.items()
                     if (k.startswith("val") and "/" not in k[4:] or k.startswith("val/")) and getattr(v, "numel", lambda: 1)() == 1}
            text = " ".join(f"{k} {v:.4f}" for k, v in list(shown.items())[:6])
            best = ""
            if self.best_record is not None and self.best_record.get("step") == trainer.global_step:
                best = " (best so far)"
            log.info("validation at step %d: %s%s", trainer.global_step, text, best)
        if trainer.state.fn == "fit" and self._pending_step == trainer.global_step and self._saved_step != trainer.global_step:
            self._save_last(trainer)

    def _update_best(self, trainer) -> None:
        if self.ckdir is None or self.best is None or not self.best.monitor:
            return
        value = trainer.callback_metrics.get(self.best.monitor)
        if value is None:
            return
        score = float(value)
        if math.isnan(score):
            return
        rec = self.best_record
        if rec is not None:
            better = score > rec["score"] if self.best.mode == "max" else score < rec["score"]
            if not better:
                return
        from lightning.pytorch.callbacks import ModelCheckpoint

        namer = ModelCheckpoint(dirpath=self.ckdir, filename=self.best.filename,
                                auto_insert_metric_name=self.best.auto_insert_metric_name)
        metrics = {**{k: v for k, v in trainer.callback_metrics.items()},
                   "epoch": torch.tensor(trainer.current_epoch), "step": torch.tensor(trainer.global_step)}
        name = Path(namer.format_checkpoint_name(metrics)).name
        trainer.save_checkpoint(self.ckdir / name)
        new = {"file": name, "score": score, "step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
               "monitor": self.best.monitor, "mode": self.best.mode}
        if trainer.is_global_zero:
            _atomic_json(self.ckdir / BEST_JSON, new)
            if rec is not None and rec["file"] != name:
                (self.ckdir / rec["file"]).unlink(missing_ok=True)
        self.best_record = new

    # ---- progress lines
    def _progress_line(self, trainer) -> None:
        if not self.lines or not trainer.is_global_zero:
            return
        step = trainer.global_step
        now = time.monotonic()
        every = max(1, self.run.log_every_n_steps)
        if step % every != 0 and now - self._last_line < 60:
            return
        self._last_line = now
        done = step - self._first_step
        rate = done / max(now - self._t0, 1e-9)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total is None and trainer.max_epochs and trainer.max_epochs > 0 and trainer.num_training_batches not in (None, float("inf")):
            total = int(trainer.max_epochs * trainer.num_training_batches)
        loss = next((float(v) for k, v in trainer.callback_metrics.items() if "loss" in k and k.startswith("train")
                     and k.endswith("_step")), None)
        if loss is None:
            loss = next((float(v) for k, v in trainer.callback_metrics.items() if "loss" in k and k.startswith("train")), None)
        parts = [f"step {step}" + (f"/{total}" if total else ""), f"epoch {trainer.current_epoch}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{rate:.2f} steps/s")
        parts.append(f"elapsed {_hms(now - self._t0)}")
        if total and rate > 0:
            parts.append(f"ETA {_hms((total - step) / rate)}")
        log.info("%s", " | ".join(parts))


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


#: Lightning warnings that say nothing actionable about a qsep run (they were filed as noise)
_QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*number of training batches.*smaller than the logging interval.*",
    ".*is not resumable.*",
    ".*exists and is not empty.*",
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
    ".*LeafSpec.*deprecated.*",
    ".*Checkpoint directory.*",
    ".*torch.cuda.amp.*deprecated.*",
)


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
    record: Any = None,
    fingerprint: Mapping[str, Any] | None = None,
    banner: Sequence[str] = (),
) -> RunResult:
    """Fit ``module`` on ``datamodule`` with the placement, checkpoints and resume of ``run``.

    Before fitting, with ``out_dir``: a run folder holding another run (config ``record`` apart from
    ``RunConfig.VOLATILE_FIELDS``, or ``fingerprint``) is refused (:class:`RunMismatch`, naming what differs)
    unless ``run.resume`` is ``"anyway"`` (continue it) or false (move it to ``previous-N/`` and start fresh);
    a finished run with the same target returns at once (``RunResult.complete``); otherwise ``config.yaml``
    and ``run.json`` are written and the fit resumes from ``checkpoints/last.ckpt`` when it exists (loaded
    with ``weights_only=True``). After fitting, a monitored run that did not validate its final weights (a
    run shorter than one epoch, or stopping between validations) validates them; the best checkpoint is
    the best of every validation of the run, kept across resumes (``checkpoints/best.json``).

    Args:
        module: a ``lightning.LightningModule``.
        datamodule: a ``lightning.LightningDataModule``.
        run: placement, seed (already applied by :func:`begin_run`), resume, checkpoint cadence, logging.
        out_dir: the run folder (see the module docstring); None: no checkpoints, no logs, no resume.
        max_steps, max_epochs: stopping (Lightning semantics; ``max_epochs`` None with ``max_steps > 0``
            means "until ``max_steps``").
        best: keep the best checkpoint (None: only ``last.ckpt``).
        last_every_epoch: also write ``last.ckpt`` at each epoch end.
        log_version: CSV logger version (``""``: ``logs/metrics.csv``; ``0``: ``logs/version_0/``).
        validate_best: after fitting, run validation (all ranks) on the best checkpoint, so the
            module's validation results describe the weights that are exported.
        export: called on global rank 0 only, after fitting (and ``validate_best``), with the
            :class:`RunResult`; its return value becomes ``RunResult.exported``. Other ranks wait for it.
        callbacks: extra Lightning callbacks.
        trainer_kwargs: extra ``lightning.Trainer`` arguments (override the runner's; ``callbacks`` are added).
        record: the config dataclass written to ``config.yaml`` / ``run.json`` and compared on resume
            (default ``run``).
        fingerprint: a JSON-able description of the data (sizes, hashes) compared on resume.
        banner: lines logged when training starts (data, classes); the runner adds placement and folder.

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: ``run.checkpoint_every_n_steps`` is negative, or ``last.ckpt`` does not load safely.
        RunMismatch: ``out_dir`` holds another run (see above).
        TrainingInterrupted: a stop signal ended the run; ``last.ckpt`` holds its last step.
    """
    import lightning as L

    if run.checkpoint_every_n_steps < 0:
        raise ConfigError(f"checkpoint_every_n_steps must be >= 0, got {run.checkpoint_every_n_steps}")
    _check_run_fields(run)
    out = Path(out_dir) if out_dir is not None else None
    ckdir = out / "checkpoints" if out is not None else None
    last = ckdir / LAST_CHECKPOINT if ckdir is not None else None
    rec_dict = to_dict(record if record is not None else run)
    target = {"max_steps": int(max_steps), "max_epochs": max_epochs}
    volatile = tuple(getattr(type(record if record is not None else run), "VOLATILE_FIELDS", RunConfig.VOLATILE_FIELDS))
    ckpt_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        state = _read_json(out / RUN_JSON)
        if run.resume is False:
            moved = _move_aside(out)
            if moved is not None:
                log.warning("resume=false: moved the earlier run in %s to %s", out, moved)
            state = None
        elif state is not None:
            diffs = _differences(state.get("config", {}), rec_dict, volatile)
            diffs += _differences({"data": state.get("data")}, {"data": fingerprint}, ())
            if diffs and run.resume != "anyway":
                raise RunMismatch(
                    f"{out} holds another run ({len(diffs)} difference(s): {'; '.join(diffs[:6])}); rerun with "
                    "resume=anyway (--resume-anyway) to continue it with these settings, resume=false (--no-resume) "
                    "to start fresh (the old run is moved to previous-N/), or use another out_dir (--out)")
            if diffs:
                log.warning("resume=anyway: continuing %s although %s", out, "; ".join(diffs[:6]))
            if state.get("state") == "finished" and state.get("target") == target:
                best_rec = _read_json(ckdir / BEST_JSON) if ckdir is not None else None
                best_path = str(ckdir / best_rec["file"]) if best_rec and (ckdir / best_rec["file"]).is_file() else None
                log.info("the run in %s is already complete (step %s); nothing to train. Raise max_steps / max_epochs "
                         "to train further, or start fresh with resume=false (--no-resume)", out, state.get("global_step"))
                return RunResult(None, best_path, best_rec["score"] if best_path else None, str(last), complete=True,
                                 global_step=int(state.get("global_step", 0)))
        if run.resume is not False and last is not None and last.is_file():
            ckpt = safe_load_checkpoint(last)
            log_dir = out / "logs" / (f"version_{log_version}" if log_version != "" else "")
            _cut_metrics(log_dir / "metrics.csv", int(ckpt.get("global_step", 0)))
            ckpt_path = str(last)
            del ckpt
        import yaml

        from qsep_core.atomic import atomic_write_text

        atomic_write_text(out / "config.yaml", yaml.safe_dump(rec_dict, sort_keys=False))
        _atomic_json(out / RUN_JSON, {"format": RUN_FORMAT, "format_version": 1, "config": rec_dict,
                                      "data": fingerprint, "state": "running", "target": target,
                                      "global_step": None})

    lines = not (run.progress and _is_tty())
    signals = _Signals()
    where = run.trainer_placement()
    header = [f"training into {out}" if out is not None else "training (no run folder)",
              f"placement: accelerator {where['accelerator']}, devices {where['devices']}, nodes {where['num_nodes']}, "
              f"precision {where['precision']}; seed {run.seed}",
              f"stopping at {'step ' + str(max_steps) if max_steps and max_steps > 0 else ''}"
              f"{' / ' if max_steps and max_steps > 0 and max_epochs else ''}{'epoch ' + str(max_epochs) if max_epochs else ''}"
              f"; last.ckpt every {run.checkpoint_every_n_steps or '-'} steps", *banner]
    book = _RunCallback(ckdir, run, best, last_every_epoch, signals, lines, header)
    cbs: list[Any] = [StepSeed(run.seed), book, *callbacks]
    kwargs: dict[str, Any] = dict(
        **where,
        max_steps=max_steps,
        max_epochs=max_epochs if max_epochs is not None else (-1 if max_steps > 0 else None),
        logger=_KeepingCSVLogger.make(str(out), "logs", log_version) if out is not None else False,
        enable_checkpointing=False,  # the runner's callback writes last.ckpt and the best checkpoint
        enable_progress_bar=run.progress and _is_tty(),
        enable_model_summary=run.progress and _is_tty(),
        log_every_n_steps=run.log_every_n_steps,
        use_distributed_sampler=False,  # every data module of qsep shards by rank itself
        num_sanity_val_steps=0,
        plugins=[_checkpoint_io()],
    )
    if out is not None:
        kwargs["default_root_dir"] = str(out)
    extra = dict(trainer_kwargs or {})
    cbs.extend(extra.pop("callbacks", []))
    kwargs.update(extra)

    pl_log = logging.getLogger("lightning.pytorch")
    old_level = pl_log.level
    if lines:
        pl_log.setLevel(logging.WARNING)  # "GPU available", tips: the banner says what matters
    signals.install()
    try:
        with warnings.catch_warnings():
            for pattern in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            trainer = L.Trainer(callbacks=cbs, **kwargs)
            if ckpt_path:
                log.info("resuming from %s", ckpt_path)
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            except TrainingInterrupted as exc:
                if out is not None and trainer.is_global_zero:
                    _atomic_json(out / RUN_JSON, {**(_read_json(out / RUN_JSON) or {}), "state": "interrupted",
                                                  "global_step": exc.step})
                raise
            if trainer.interrupted:  # Lightning swallowed an exception (KeyboardInterrupt path)
                raise KeyboardInterrupt
            signals.restore()
            # a monitored run validates its final weights (a run shorter than one epoch otherwise never does)
            if best is not None and best.monitor and book.last_val_step != trainer.global_step and trainer.enable_validation \
                    and trainer.global_step > 0:
                trainer.validate(module, datamodule=datamodule, verbose=False)
            rec = book.best_record
            best_path = str(ckdir / rec["file"]) if rec is not None and ckdir is not None else None
            if validate_best:
                trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
    finally:
        signals.restore()
        pl_log.setLevel(old_level)
    result = RunResult(trainer, best_path, float(rec["score"]) if rec is not None else None,
                       str(last) if last is not None else None, global_step=int(trainer.global_step))
    if export is not None:
        if trainer.is_global_zero:
            result.exported = export(result)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
    if out is not None and trainer.is_global_zero:
        _atomic_json(out / RUN_JSON, {**(_read_json(out / RUN_JSON) or {}), "state": "finished",
                                      "global_step": int(trainer.global_step), "target": target,
                                      "best": rec})
    return result
