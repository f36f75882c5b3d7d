"""qsep_core.training: the one schedule, the shared run fields and the runner (checkpoints, resume, rank-0 export)."""
from __future__ import annotations

import dataclasses
import math

import lightning as L
import pytest
import torch

from qsep_core.config import ConfigError, load_config
from qsep_core.training import PlacementConfig, RunConfig, begin_run, lr_scale, resolve_precision, run_training


def test_lr_scale_known_answers():
    # warm-up: (step + 1) / warmup
    assert [lr_scale(s, warmup_steps=4) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    # cosine from 1 at the end of warm-up to the floor at total_steps, held afterwards
    kw = dict(warmup_steps=2, total_steps=12, cosine=True, min_ratio=0.1)
    assert lr_scale(2, **kw) == pytest.approx(1.0)
    assert lr_scale(7, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: the mean of 1 and the floor
    assert lr_scale(12, **kw) == pytest.approx(0.1) and lr_scale(50, **kw) == pytest.approx(0.1)
    # no total: constant after warm-up even with cosine asked
    assert lr_scale(100, warmup_steps=2, cosine=True, min_ratio=0.1) == 1.0
    with pytest.raises(ValueError, match="min_ratio"):
        lr_scale(0, min_ratio=1.5)


def test_precision_auto_resolves_by_accelerator():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"


def test_every_config_has_the_flat_placement_and_run_fields():
    from sed.mining import MiningConfig
    from sed.train import SEDTrainingConfig
    from separator.train import SeparatorTrainingConfig

    placement = {f.name for f in dataclasses.fields(PlacementConfig)}
    run = {f.name for f in dataclasses.fields(RunConfig)}
    assert issubclass(MiningConfig, PlacementConfig) and placement <= {f.name for f in dataclasses.fields(MiningConfig)}
    for cls in (SEDTrainingConfig, SeparatorTrainingConfig):
        assert issubclass(cls, RunConfig) and run <= {f.name for f in dataclasses.fields(cls)}
    # each keeps its own defaults
    assert SEDTrainingConfig().precision == "32-true" and SEDTrainingConfig().checkpoint_every_n_steps == 200
    assert SeparatorTrainingConfig().precision == "auto" and SeparatorTrainingConfig().checkpoint_every_n_steps == 500
    assert MiningConfig().devices == 1 and MiningConfig().precision == "32-true"
    # flat keys as before: devices / precision as YAML keys and KEY=VALUE overrides
    cfg = load_config(SEDTrainingConfig, None, ["devices=4", "precision=bf16-mixed", "num_nodes=2"])
    assert (cfg.devices, cfg.precision, cfg.num_nodes) == (4, "bf16-mixed", 2)


def test_separator_old_checkpoint_field_name_still_reads(tmp_path):
    from separator.train import SeparatorTrainingConfig

    assert load_config(SeparatorTrainingConfig, None, {"checkpoint_every_steps": 4}).checkpoint_every_n_steps == 4
    (tmp_path / "old.yaml").write_text("checkpoint_every_steps: 7\n")  # a config.yaml saved before the rename
    assert load_config(SeparatorTrainingConfig, tmp_path / "old.yaml").checkpoint_every_n_steps == 7
    # an override under either name replaces the file's value under the other name
    assert load_config(SeparatorTrainingConfig, tmp_path / "old.yaml", ["checkpoint_every_n_steps=9"]).checkpoint_every_n_steps == 9
    (tmp_path / "new.yaml").write_text("checkpoint_every_n_steps: 7\n")
    assert load_config(SeparatorTrainingConfig, tmp_path / "new.yaml", ["checkpoint_every_steps=3"]).checkpoint_every_n_steps == 3
    (tmp_path / "both.yaml").write_text("checkpoint_every_steps: 7\ncheckpoint_every_n_steps: 7\n")
    with pytest.raises(ConfigError, match="old name"):
        load_config(SeparatorTrainingConfig, tmp_path / "both.yaml")


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.first_step: int | None = None

    def training_step(self, batch, batch_idx):
        if self.first_step is None:
            self.first_step = self.global_step
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Data(L.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 3, generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def test_runner_checkpoints_resumes_and_exports_on_rank_zero(tmp_path):
    run = RunConfig(accelerator="cpu", devices=1, seed=5, checkpoint_every_n_steps=2, progress=False, log_every_n_steps=1)
    begin_run(run, tmp_path, record=run)
    assert not (tmp_path / "config.yaml").exists()  # written by run_training, once the data and model were built
    seen = []
    first = run_training(_Regression(), _Data(), run, out_dir=tmp_path, max_steps=3, export=lambda r: seen.append(r.last) or "done")
    assert "checkpoint_every_n_steps: 2" in (tmp_path / "config.yaml").read_text()
    assert first.exported == "done" and seen == [str(tmp_path / "checkpoints" / "last.ckpt")]
    assert torch.load(first.last, map_location="cpu", weights_only=True)["global_step"] == 3  # every 2 steps and at the end
    module = _Regression()
    again = run_training(module, _Data(), run, out_dir=tmp_path, max_steps=6)
    assert module.first_step == 3 and again.trainer.global_step == 6 and again.exported is None
    fresh = _Regression()
    run_training(fresh, _Data(), dataclasses.replace(run, resume=False), out_dir=tmp_path, max_steps=1)
    assert fresh.first_step == 0


def test_begin_run_seeds_the_initialisation():
    run = RunConfig(seed=11)
    begin_run(run)
    a = torch.nn.Linear(4, 4).weight.detach().clone()
    begin_run(run)
    assert torch.equal(a, torch.nn.Linear(4, 4).weight) and not math.isnan(float(a.sum()))
