"""The training runner's run folder: exact resume, reruns, provenance, signals, safe loading, logs (issue 16)."""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from qsep_core.config import ConfigError
from qsep_core.training import (
    BadClipError,
    BadClipGuard,
    BestCheckpoint,
    ResumableSampler,
    RunConfig,
    RunMismatch,
    TrainingInterrupted,
    begin_run,
    run_training,
)


class _EpochShuffle(torch.utils.data.Sampler):
    """A seeded permutation per epoch (the contract ResumableSampler needs)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())


class _Net(L.LightningModule):
    """Regression with dropout and input noise from the global RNG: resume is exact only if both are restored."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
        self.steps: list[int] = []

    def training_step(self, batch, batch_idx):
        self.steps.append(self.global_step)
        x, y = batch
        x = x + 0.1 * torch.randn_like(x)
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        # a score that wanders (not monotone), so the best step is not simply the last one
        self.log("val_score", -torch.nn.functional.mse_loss(self.net(x), y) + 0.05 * torch.cos(torch.tensor(self.global_step * 1.7)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Data(L.LightningDataModule):
    def __init__(self, n: int = 40, shift: float = 0.0, workers: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 4, generator=g)
        self.ds = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) + shift)
        self.val = torch.utils.data.TensorDataset(x[:8], x[:8].sum(1, keepdim=True) + shift)
        self.workers = workers

    def train_dataloader(self):
        sampler = ResumableSampler(_EpochShuffle(len(self.ds), 3), 4, lambda: self.trainer)
        return torch.utils.data.DataLoader(self.ds, batch_size=4, sampler=sampler, num_workers=self.workers,
                                           persistent_workers=self.workers > 0)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val, batch_size=8)


RUN = RunConfig(accelerator="cpu", devices=1, seed=7, checkpoint_every_n_steps=5, progress=False, log_every_n_steps=1)
BEST = BestCheckpoint("val_score", "max", "best-step{step}", auto_insert_metric_name=False)


def _train(out, *, max_steps=23, run=RUN, data=None, callbacks=(), **kw):
    begin_run(run)
    module = _Net()
    result = run_training(module, data or _Data(), run, out_dir=out, max_steps=max_steps, best=BEST,
                          callbacks=list(callbacks), trainer_kwargs={"val_check_interval": 6, "check_val_every_n_epoch": None},
                          fingerprint={"n": len((data or _Data()).ds)}, **kw)
    return module, result


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _metrics(out: Path) -> list[dict[str, str]]:
    with (out / "logs" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


class _KillAt(L.Callback):
    """A kill -9 stand-in: an exception at the start of a given step (nothing saved on the way out)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


class _SignalAt(L.Callback):
    """Send this process a signal during a given step (what SLURM / systemd / Ctrl-C do)."""

    def __init__(self, step: int, sig: int):
        self.step, self.sig = step, sig

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    _, result = _train(out)
    return out, result


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 8, 12, 17])  # at a checkpoint, between checkpoints, at a validation step, mid-epoch
def test_kill_and_rerun_reaches_the_uninterrupted_weights_metrics_and_best(tmp_path, straight, kill_at):
    ref_out, ref = straight
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        _train(out, callbacks=[_KillAt(kill_at)])
    module, result = _train(out)
    saved = (kill_at // 5) * 5
    assert module.steps[0] == saved  # resumed from the last checkpoint before the kill
    a, b = _weights(ref_out), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ from the uninterrupted run"
    # the whole history is in metrics.csv, once per step, equal to the uninterrupted run's
    assert _metrics(out) == _metrics(ref_out)
    assert Path(result.best).name == Path(ref.best).name and result.best_score == ref.best_score
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == sorted(["last.ckpt", Path(ref.best).name])


def test_best_is_the_best_validation_and_never_a_missing_file(straight):
    out, result = straight
    rows = [r for r in _metrics(out) if r.get("val_score")]
    best_row = max(rows, key=lambda r: float(r["val_score"]))
    assert result.best_score == pytest.approx(float(best_row["val_score"]))
    assert Path(result.best).is_file() and Path(result.best).name == f"best-step{best_row['step']}.ckpt"
    rec = json.loads((out / "checkpoints" / "best.json").read_text())
    assert (out / "checkpoints" / rec["file"]).is_file()
    # the final weights (step 23, between validations) were validated too
    assert max(int(r["step"]) for r in rows) == 23 or any(r["step"] == "22" for r in rows)


def test_rerunning_a_finished_run_is_a_no_op_and_a_longer_target_continues(tmp_path):
    out = tmp_path / "run"
    _train(out, max_steps=10)
    before = _weights(out)
    module, again = _train(out, max_steps=10)
    assert again.complete and again.trainer is None and module.steps == [] and again.global_step == 10
    assert Path(again.best).is_file()
    assert all(torch.equal(before[k], _weights(out)[k]) for k in before)
    longer, res = _train(out, max_steps=14)
    assert longer.steps[0] == 10 and res.global_step == 14 and not res.complete


def test_other_data_or_config_in_the_folder_is_refused_unless_told(tmp_path):
    out = tmp_path / "run"
    _train(out, max_steps=5)
    with pytest.raises(RunMismatch, match=r"data.n: 40 -> 44"):
        _train(out, max_steps=8, data=_Data(n=44))
    with pytest.raises(RunMismatch, match="seed: 7 -> 8"):
        _train(out, max_steps=8, run=RunConfig(**{**RUN.__dict__, "seed": 8}))
    assert json.loads((out / "run.json").read_text())["config"]["seed"] == 7  # provenance untouched
    assert "seed: 7" in (out / "config.yaml").read_text()
    module, _ = _train(out, max_steps=8, data=_Data(n=44), run=RunConfig(**{**RUN.__dict__, "resume": "anyway"}))
    assert module.steps[0] == 5
    fresh, _ = _train(out, max_steps=3, run=RunConfig(**{**RUN.__dict__, "resume": False}))
    assert fresh.steps[0] == 0 and (out / "previous-1" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_stop_signal_saves_a_checkpoint_and_reports_a_nonzero_exit(tmp_path, straight, sig):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as err:
        _train(out, callbacks=[_SignalAt(7, sig)])
    assert err.value.exit_code == 128 + sig and err.value.step == 8
    assert "rerun the same command to resume from step 8" in str(err.value)
    assert torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8
    assert json.loads((out / "run.json").read_text())["state"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    if sig == signal.SIGTERM:  # and the resumed run is the uninterrupted one
        module, _ = _train(out)
        assert module.steps[0] == 8
        a, b = _weights(straight[0]), _weights(out)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert _metrics(out) == _metrics(straight[0])


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["QSEP_TEST_PWNED"]),))


def test_a_planted_checkpoint_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _train(out, max_steps=5)
    flag = tmp_path / "pwned"
    monkeypatch.setenv("QSEP_TEST_PWNED", str(flag))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"state_dict": {}, "payload": _Payload()}, out / "checkpoints" / "last.ckpt", pickle_module=pickle)
    with pytest.raises(ConfigError, match="not a training checkpoint this runner can load safely"):
        _train(out, max_steps=8)
    assert not flag.exists()


def test_a_run_shorter_than_one_epoch_validates_and_keeps_one_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    begin_run(RUN)
    result = run_training(_Net(), _Data(), RUN, out_dir=out, max_steps=3, best=BEST, last_every_epoch=True)
    assert result.best_score is not None and Path(result.best).name == "best-step3.ckpt"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best-step3.ckpt", "best.json", "last.ckpt"]


def test_progress_lines_and_banner_when_not_on_a_terminal(tmp_path, caplog):
    run = RunConfig(**{**RUN.__dict__, "progress": True, "log_every_n_steps": 4})
    with caplog.at_level(logging.INFO, logger="qsep_core.training"):
        _train(tmp_path / "run", max_steps=8, run=run, banner=["data: 40 rows"])
    text = caplog.text
    assert "training into" in text and "placement: accelerator cpu" in text and "data: 40 rows" in text
    assert "step 4/8 | epoch 0 | loss" in text and "steps/s" in text and "ETA" in text
    assert "validation at step 6: val_score" in text


def test_bad_clip_guard_skips_up_to_the_limit_and_names_them():
    strict = BadClipGuard(0, "clip")
    with pytest.raises(BadClipError, match=r"a\.wav .*--max-bad-clips"):
        strict.read("a.wav", lambda: (_ for _ in ()).throw(OSError("corrupt")))
    lenient = BadClipGuard(1, "clip")
    assert lenient.read("b.wav", lambda: torch.tensor([float("nan")])) is None
    assert lenient.read("ok.wav", lambda: torch.zeros(2)).shape == (2,)
    with pytest.raises(BadClipError, match=r"2 bad clip\(s\): b.wav .*NaN.*c.wav"):
        lenient.read("c.wav", lambda: (_ for _ in ()).throw(ValueError("bad header")))


def test_manifest_audio_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    from qsep_core.manifest import load_manifest, write_manifest

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.wav").write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # mined from here, with a path relative to this folder
    seg = {"clip_id": "a", "clip_index": 0, "audio_path": "corpus/a.wav", "label": 0, "label_name": "x",
           "clip_labels": [0], "start": 0.0, "end": 1.0, "confidence": 1.0}
    write_manifest(tmp_path / "mined", [seg], torch.zeros(1, 2), 8000)
    stored = (tmp_path / "mined" / "shards" / "shard-00000.csv").read_text()
    assert "../corpus/a.wav" in stored  # relative to the manifest folder, as the schema says
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = load_manifest(tmp_path / "mined").segments.audio_path[0]
    assert os.path.isabs(path) and Path(path) == tmp_path / "corpus" / "a.wav"


def test_config_presets_resolve_from_any_folder(tmp_path, monkeypatch):
    from qsep_core.config import load_yaml, resolve_config
    from sed.train import load_sed_config

    monkeypatch.chdir(tmp_path)
    for name in ("sed_tiny", "sed_tiny.yaml", "configs/sed_tiny.yaml"):
        assert resolve_config(name).name == "sed_tiny.yaml" and load_yaml(name)
    assert load_sed_config("sed_tiny").model == load_sed_config(resolve_config("sed_tiny")).model
    with pytest.raises(ConfigError, match="not one of the shipped presets .*sed_tiny"):
        resolve_config("sed_tinyy")
