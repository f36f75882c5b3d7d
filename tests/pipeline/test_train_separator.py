"""Separator training on a tiny synthetic segment set: it learns, resumes, and exports a loadable model."""
from __future__ import annotations

import pytest
import torch

from separator.checkpoint import ModelFolder
from qsep_core.metrics import sdr, si_sdr
from separator.train import SeparatorModule, load_training_config, train_separator

from .fakes import SYN_RATE, class_latent, synthetic_source, tiny_unet_overrides, write_synthetic_manifest


def _config(tmp_path, manifest, **changes):
    base = {
        "manifest": str(manifest),
        "out_dir": str(tmp_path / "run"),
        "model": tiny_unet_overrides(),
        "batch_size": 8,
        "epoch_size": 64,
        "max_epochs": 1,
        "lr": 1e-2,
        "accelerator": "cpu",
        "devices": 1,
        "progress": False,
        "log_every_n_steps": 1,
        "checkpoint_every_n_steps": 4,
        "mixing": {"val_size": 8, "val_fraction": 0.0},
    }
    base.update(changes)
    return load_training_config(overrides=base)


def test_metrics_known_answers():
    ref = torch.randn(2, 1000, generator=torch.Generator().manual_seed(1))
    assert torch.all(si_sdr(estimate=3 * ref, reference=ref) > 60) and torch.all(sdr(estimate=ref, reference=ref) > 60)
    noise = torch.randn(2, 1000, generator=torch.Generator().manual_seed(2))
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref  # orthogonal
    noise = noise * ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True) / 10 ** 0.5  # 10 dB below
    assert si_sdr(estimate=ref + noise, reference=ref).tolist() == pytest.approx([10.0, 10.0], abs=0.05)


def test_warmup_and_optimizers():
    net = torch.nn.Linear(2, 2)
    m = SeparatorModule(net, optimizer="adamw", lr=1e-2, warmup_steps=4)
    cfg = m.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.AdamW)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])
    assert isinstance(SeparatorModule(net).configure_optimizers(), torch.optim.Adam)


def _held_out_mixtures(n: int = 12, seconds: float = 0.5):
    """Fresh sources (never seen in training) of classes 0 and 1, each the target once."""
    g = torch.Generator().manual_seed(1234)
    mixes, targets, conds = [], [], []
    for _ in range(n // 2):
        a, b = synthetic_source(0, seconds, g), synthetic_source(1, seconds, g)
        for tgt, k in ((a, 0), (b, 1)):
            mixes.append((a + b)[None])
            targets.append(tgt[None])
            conds.append(class_latent([k], g))
    return torch.stack(mixes), torch.stack(targets), torch.stack(conds)


def test_brief_training_beats_the_mixture_and_exports(tmp_path):
    manifest = write_synthetic_manifest(tmp_path, per_class=8, seconds=0.5)
    cfg = _config(tmp_path, manifest, max_epochs=2, epoch_size=48)
    folder = train_separator(cfg)
    model = ModelFolder(folder).build("separator")
    assert ModelFolder(folder).kind("separator") == "query_unet"
    assert ModelFolder(folder).metadata["class_names"][0] == "low tone"
    mix, tgt, cond = _held_out_mixtures()
    with torch.no_grad():
        est = model(mix, cond)
    gain = (si_sdr(estimate=est, reference=tgt) - si_sdr(estimate=mix, reference=tgt)).mean().item()
    assert gain > 2.0, f"SI-SDRi on held-out mixtures only {gain:.2f} dB"


def test_resume_after_a_kill_continues_to_the_same_weights(tmp_path):
    manifest = write_synthetic_manifest(tmp_path, per_class=4, seconds=0.25, extra_multi_label=False)
    small = {"epoch_size": 8, "batch_size": 4, "mixing": {"val_size": 4, "val_fraction": 0.0}}
    straight = train_separator(_config(tmp_path / "a", manifest, max_epochs=2, **small))
    # "killed" after the first epoch: same run folder, then started again with the full budget
    train_separator(_config(tmp_path / "b", manifest, max_epochs=1, export=False, **small))
    resumed = train_separator(_config(tmp_path / "b", manifest, max_epochs=2, **small))
    last = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * 8 // 4
    sa, sb = ModelFolder(straight).state_dict("separator"), ModelFolder(resumed).state_dict("separator")
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_resume_mid_epoch_with_a_worker_and_augmentation_is_exact(tmp_path):
    """Stopped in the middle of an epoch (data order, mixing, augmentation and dropout RNG all mid-stream), with a
    DataLoader worker: the resumed run ends on the weights of the uninterrupted one, bit for bit."""
    manifest = write_synthetic_manifest(tmp_path, per_class=4, seconds=0.25, extra_multi_label=False)
    common = {"epoch_size": 32, "batch_size": 4, "num_workers": 1, "max_epochs": 5, "checkpoint_every_n_steps": 3,
              "mixing": {"val_size": 4, "val_fraction": 0.0, "snr_db": [-5.0, 5.0], "level_dbfs": [-30.0, -10.0],
                         "bandlimit_prob": 0.5, "reverb_prob": 0.5}}
    straight = train_separator(_config(tmp_path / "a", manifest, max_steps=6, **common))
    train_separator(_config(tmp_path / "b", manifest, max_steps=3, export=False, **common))  # stops at step 3 of 8
    resumed = train_separator(_config(tmp_path / "b", manifest, max_steps=6, **common))
    sa, sb = ModelFolder(straight).state_dict("separator"), ModelFolder(resumed).state_dict("separator")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
