"""SED training: metrics, schedule, augmentation, and short training runs on a synthetic tone corpus."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torchaudio
from torch import nn

from separator.checkpoint import ModelFolder, load_strict
from qsep_core.config import ConfigError
from sed.data import ClassList, ManifestDataset
from sed.train import (
    NetworkSpec,
    SEDModule,
    SEDTrainingConfig,
    SpecAugment,
    SpecAugmentConfig,
    average_precision,
    load_sed_config,
    mean_average_precision,
    official_lr_scale,
    train_sed,
)
from tests.sed.test_data import TONE_CLASSES, tone_clip, write_class_csv, write_manifest, write_segments, write_tone_corpus

REPO = Path(__file__).resolve().parents[2]
SR, CLIP = 8000, 4000  # the stand-in network's rate and clip (0.5 s)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine run several times faster on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------
# a small stand-in detector with the interface SEDModule needs (features / forward_mel / forward)


class FakeSED(nn.Module):
    """log-mel -> per-frame MLP -> clipwise = sigmoid(mean frame logits) (the HTS-AT head rule)."""

    def __init__(self, num_classes: int, n_mels: int = 32):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(SR, n_fft=256, hop_length=128, n_mels=n_mels)
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.frame = nn.Sequential(nn.Linear(n_mels, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        x = 10 * torch.log10(self.mel(wave).clamp_min(1e-10))  # (batch, mel, frames)
        x = x.transpose(1, 2)[:, :, None]  # (batch, frames, 1, mel)
        x = self.bn0(x.transpose(1, 3))  # (batch, mel, 1, frames)
        return x.transpose(1, 3)  # (batch, 1, frames, mel)

    def forward_mel(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.frame(x[:, 0])  # (batch, frames, classes)
        return {"clipwise": torch.sigmoid(logits.mean(1)), "framewise": torch.sigmoid(logits), "latent": logits.mean(1)}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_mel(self.features(wave))


def fake_factory(cfg: SEDTrainingConfig, num_classes: int) -> NetworkSpec:
    return NetworkSpec(FakeSED(num_classes), "htsat", {"fake": True, "num_classes": num_classes}, SR, CLIP)


# ------------------------------------------------------------------------------------------
# metrics, schedule, augmentation (known answers)


def test_average_precision_known_answers():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert average_precision(s, torch.tensor([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(s, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.25)
    # ties are one threshold: both clips count at precision 1/2
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    assert math.isnan(average_precision(s, torch.zeros(4)))


def test_map_excludes_and_counts_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.6, 0.7, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    m, per, excluded = mean_average_precision(scores, targets)
    assert excluded == 1 and math.isnan(per[2])
    assert per[0] == pytest.approx(1.0) and per[1] == pytest.approx(1.0) and m == pytest.approx(1.0)


def test_map_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 5, generator=g).round(decimals=1)  # many ties
    targets = (torch.rand(40, 5, generator=g) > 0.6).float()
    m, per, _ = mean_average_precision(scores, targets)
    want = sk.average_precision_score(targets.numpy(), scores.numpy(), average=None)
    torch.testing.assert_close(per, torch.as_tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_official_lr_schedule():
    # the per-epoch factor of the official HTS-AT recipe (sed_model.py lr_foo, lr_rate [0.02, 0.05, 0.1])
    want = {0: 0.02, 1: 0.05, 2: 0.1, 3: 0.1, 10: 0.1, 11: 0.05, 20: 0.05, 21: 0.02, 30: 0.02, 31: 0.03, 99: 0.03}
    assert {e: official_lr_scale(e) for e in want} == pytest.approx(want)


def test_spec_augment_stripes_and_eval_identity():
    aug = SpecAugment(SpecAugmentConfig(time_drop_width=10, time_stripes=2, freq_drop_width=4, freq_stripes=1))
    x = torch.ones(64, 1, 100, 32)
    torch.manual_seed(0)
    y = aug.train()(x)
    dropped_t = (y == 0).all(dim=3)[:, 0].sum(1)  # (batch,) fully zeroed frames
    dropped_f = (y == 0).all(dim=2)[:, 0].sum(1)  # (batch,) fully zeroed mel bins
    assert int(dropped_t.max()) <= 2 * 9 and int(dropped_t.max()) > 0
    assert int(dropped_f.max()) <= 3 and int(dropped_f.max()) > 0
    # only whole stripes are touched: every entry is kept or zeroed
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert torch.equal(aug.eval()(x), x)


def test_mixup_is_the_official_formula_and_targets_unmixed():
    x = torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 2)
    lam = torch.tensor([1.0, 0.25, 0.5])
    y = SEDModule.mixup(x, lam)
    assert y[:, 0, 0, 0].tolist() == [0.0, 0.25 * 1 + 0.75 * 1, 0.5 * 2 + 0.5 * 0]


def test_module_refuses_augmentation_without_staged_network():
    class Plain(nn.Module):
        def forward(self, wave):
            return {"clipwise": torch.sigmoid(wave[:, :2])}

    cfg = SEDTrainingConfig()
    with pytest.raises(ConfigError, match="mixup_alpha: 0"):
        SEDModule(Plain(), cfg, ClassList(("a", "b")))
    ok = load_sed_config(None, {"mixup_alpha": 0, "spec_augment.enabled": False})
    SEDModule(Plain(), ok, ClassList(("a", "b")))


def test_configs_load_and_reject_unknown_fields(tmp_path):
    for name in ("sed_tiny.yaml", "sed_audioset.yaml"):
        cfg = load_sed_config(REPO / "configs" / name, {"data.batch_size": 3})
        assert cfg.data.batch_size == 3
    audioset = load_sed_config(REPO / "configs" / "sed_audioset.yaml")
    assert (audioset.model, audioset.lr_schedule, audioset.mixup_alpha, audioset.grad_clip) == ("audioset", "official", 0.5, 1.0)
    with pytest.raises(ConfigError, match="bogus"):
        load_sed_config(REPO / "configs" / "sed_tiny.yaml", {"data.bogus": 1})
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_sed_config(None, {"lr_schedule": "linear"})


# ------------------------------------------------------------------------------------------
# training runs on the synthetic corpus


def _corpus(root: Path, sr: int = SR, samples: int = CLIP) -> dict[str, Path]:
    tr = write_tone_corpus(root / "train_wav", sr, samples, per_class=6, seed=10, prefix="t", pairs=4)
    va = write_tone_corpus(root / "val_wav", sr, samples, per_class=3, seed=11, prefix="v")
    write_manifest(root / "train.csv", tr, "train_wav")
    write_manifest(root / "val.csv", va, "val_wav")
    write_segments(root / "train_segments.csv", tr + [("missingclip", [0])])
    write_segments(root / "val_segments.csv", va)
    write_class_csv(root / "class_labels_indices.csv")
    return {"root": root}


def _base_overrides(out: Path) -> dict:
    return {
        "out_dir": str(out),
        "lr": 3e-3,
        "warmup_steps": 5,
        "data.batch_size": 8,
        "data.num_workers": 0,
        "data.crop": "start",
        "accelerator": "cpu",
        "devices": 1,
        "log_every_n_steps": 1,
        "log_per_class_ap": True,
        "spec_augment.time_drop_width": 4,
        "spec_augment.freq_drop_width": 3,
    }


def _losses(out: Path) -> list[float]:
    with (out / "logs" / "metrics.csv").open() as f:
        return [float(r["train_loss_step"]) for r in csv.DictReader(f) if r.get("train_loss_step")]


def _held_out(net: nn.Module, root: Path, classes: ClassList, sr: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = ManifestDataset(root / "val.csv", classes, sr, samples)
    wave = torch.stack([ds[i][0] for i in range(len(ds))])
    target = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        return net.eval()(wave)["clipwise"], target


def _held_out_top1(net: nn.Module, root: Path, classes: ClassList, sr: int = SR, samples: int = CLIP) -> float:
    clip, target = _held_out(net, root, classes, sr, samples)
    return float((clip.argmax(1) == target.argmax(1)).float().mean())


def _held_out_bce(net: nn.Module, root: Path, classes: ClassList, sr: int = SR, samples: int = CLIP) -> float:
    clip, target = _held_out(net, root, classes, sr, samples)
    return float(torch.nn.functional.binary_cross_entropy(clip, target))


def test_train_on_manifest_lowers_loss_ranks_right_class_and_exports(tmp_path):
    _corpus(tmp_path)
    out = tmp_path / "run"
    cfg = load_sed_config(REPO / "configs" / "sed_tiny.yaml", {
        **_base_overrides(out),
        "data.train": str(tmp_path / "train.csv"),
        "data.val": str(tmp_path / "val.csv"),
        "max_steps": 60,
        "val_every_n_steps": 30,
        "checkpoint_every_n_steps": 30,
    })
    model_dir = train_sed(cfg, network_factory=fake_factory)
    losses = _losses(out)
    assert len(losses) == 60
    # the training loss (mixup with unmixed targets keeps it well above 0) goes down ...
    assert sum(losses[-10:]) / 10 < 0.9 * sum(losses[:10]) / 10

    mf = ModelFolder(model_dir)
    assert mf.kind("detector") == "htsat"
    meta = mf.metadata
    classes = ClassList(tuple(meta["class_names"]))
    assert classes.names == tuple(sorted(n for n, _, _ in TONE_CLASSES))
    assert meta["global_step"] == 60 and meta["val_mAP"] > 0.9
    assert meta["val_classes_without_positives"] == 0 and set(meta["val_per_class_ap"]) == set(classes.names)
    assert meta["training_config"]["max_steps"] == 60 and meta["best_checkpoint"].startswith("checkpoints/best-")
    net = FakeSED(len(classes))
    load_strict(net, mf.state_dict("detector"))
    assert _held_out_top1(net, tmp_path, classes, SR, CLIP) == 1.0
    # ... and the clean BCE on held-out clips falls far below that of the same network untrained
    torch.manual_seed(cfg.seed)
    untrained = FakeSED(len(classes))
    assert _held_out_bce(net, tmp_path, classes) < 0.5 * _held_out_bce(untrained, tmp_path, classes)


def test_train_on_audioset_layout(tmp_path):
    _corpus(tmp_path)
    out = tmp_path / "run"
    cfg = load_sed_config(None, {
        **_base_overrides(out),
        "data.format": "audioset",
        "data.train": str(tmp_path / "train_segments.csv"),
        "data.train_audio_dir": str(tmp_path / "train_wav"),
        "data.val": str(tmp_path / "val_segments.csv"),
        "data.val_audio_dir": str(tmp_path / "val_wav"),
        "data.class_labels": str(tmp_path / "class_labels_indices.csv"),
        "max_steps": 60,
    })
    model_dir = train_sed(cfg, network_factory=fake_factory)
    meta = ModelFolder(model_dir).metadata
    assert meta["class_names"] == [n for n, _, _ in TONE_CLASSES] and meta["class_mids"][0] == "/m/t0"
    assert meta["train_missing_clips"] == 1 and meta["val_missing_clips"] == 0
    assert meta["val_mAP"] > 0.8


class _Kill(L.Callback):
    """Raise at a given global step: a stand-in for a killed job."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated kill")


class _FirstStep(L.Callback):
    def __init__(self):
        self.first: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            self.first = trainer.global_step


class _Batches(L.Callback):
    """Record the clip ids of every trained batch by global step."""

    def __init__(self):
        self.ids: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids[trainer.global_step] = list(batch[2])


def test_resume_after_kill_continues_from_checkpoint_step(tmp_path):
    _corpus(tmp_path)
    # 28 training clips, batch 8: 4 batches per epoch; the kill lands mid-epoch
    over = {**_base_overrides(tmp_path / "run"), "data.train": str(tmp_path / "train.csv"), "max_steps": 12, "checkpoint_every_n_steps": 5}
    straight = _Batches()
    train_sed(load_sed_config(None, {**over, "out_dir": str(tmp_path / "straight")}), network_factory=fake_factory,
              trainer_kwargs={"callbacks": [straight]})

    cfg = load_sed_config(None, over)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_sed(cfg, network_factory=fake_factory, trainer_kwargs={"callbacks": [_Kill(at=8)]})
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step == 5
    first, resumed = _FirstStep(), _Batches()
    model_dir = train_sed(cfg, network_factory=fake_factory, trainer_kwargs={"callbacks": [first, resumed]})
    assert first.first == saved_step
    # the resumed run trains on exactly the batches the uninterrupted run saw from that step on
    assert sorted(resumed.ids) == list(range(saved_step, 12))
    assert {k: straight.ids[k] for k in resumed.ids} == resumed.ids
    assert ModelFolder(model_dir).metadata["global_step"] == 12
    # no validation set: the exported weights are the last ones, no mAP
    assert ModelFolder(model_dir).metadata["val_mAP"] is None
    # resume: false starts over
    fresh = _FirstStep()
    train_sed(load_sed_config(None, {**over, "resume": False, "max_steps": 2}), network_factory=fake_factory, trainer_kwargs={"callbacks": [fresh]})
    assert fresh.first == 0


@pytest.mark.slow
def test_real_tiny_htsat_learns_tones_and_exports_a_loadable_detector(tmp_path):
    """The `tiny` HTS-AT preset (1-s clips) through the default network factory and the qsep model folder."""
    from sed.train import build_network

    sr = 32000
    _corpus(tmp_path, sr=sr, samples=sr)
    cfg = load_sed_config(REPO / "configs" / "sed_tiny.yaml", {
        **_base_overrides(tmp_path / "run"),
        "data.train": str(tmp_path / "train.csv"),
        "data.val": str(tmp_path / "val.csv"),
        "model_overrides": {"clip_samples": sr},
        "spec_augment.freq_drop_width": 2,
        "max_steps": 40,
    })
    model_dir = train_sed(cfg)
    mf = ModelFolder(model_dir)
    net = mf.build("detector")  # sed.htsat:build_from_config + strict load
    classes = ClassList(tuple(mf.metadata["class_names"]))
    assert net.cfg.num_classes == len(classes) == 4 and net.cfg.clip_samples == sr
    assert mf.metadata["val_mAP"] > 0.9
    assert _held_out_top1(net, tmp_path, classes, sr, sr) == 1.0
    torch.manual_seed(cfg.seed)
    untrained = build_network(cfg, len(classes)).module
    assert _held_out_bce(net, tmp_path, classes, sr, sr) < 0.7 * _held_out_bce(untrained, tmp_path, classes, sr, sr)


def _write_h5_pack(path: Path, sr: int, samples: int, per_class: int, seed: int) -> None:
    import h5py
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    waves, targets, names = [], [], []
    for k, (_, _, f) in enumerate(TONE_CLASSES):
        for j in range(per_class):
            waves.append((tone_clip([f], sr, samples, g)[0] * 32767).round().short().numpy())
            targets.append([1.0 if i == k else 0.0 for i in range(len(TONE_CLASSES))])
            names.append(f"Y{k}{j:010d}.wav".encode())
    with h5py.File(path, "w") as h:
        h.create_dataset("audio_name", data=np.array(names))
        h.create_dataset("waveform", data=np.stack(waves))
        h.create_dataset("target", data=np.array(targets, dtype=np.float32))


def test_cli_train_sed_on_hdf5_packs(tmp_path):
    from typer.testing import CliRunner

    from separator.cli import app

    sr = 32000
    _write_h5_pack(tmp_path / "train.h5", sr, sr // 2, per_class=2, seed=0)
    write_class_csv(tmp_path / "class_labels_indices.csv")
    out = tmp_path / "run"
    args = [
        "train", "sed", "--config", str(REPO / "configs" / "sed_tiny.yaml"), "--out", str(out),
        "--accelerator", "cpu", "--devices", "1", "--max-steps", "3",
        "data.format=hdf5", f"data.train={tmp_path / 'train.h5'}", f"data.val={tmp_path / 'train.h5'}",
        f"data.class_labels={tmp_path / 'class_labels_indices.csv'}", "data.batch_size=4", "data.num_workers=0",
        "model_overrides={clip_samples: 16000}", "spec_augment.freq_drop_width=2", "log_every_n_steps=1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    mf = ModelFolder(out / "model")
    assert mf.metadata["class_names"] == [n for n, _, _ in TONE_CLASSES] and mf.metadata["global_step"] == 3
    assert mf.build("detector").cfg.clip_samples == sr // 2
    # errors a user can act on
    bad = CliRunner().invoke(app, ["train", "sed", "--config", str(REPO / "configs" / "sed_tiny.yaml"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "data.train" in bad.output
    bad = CliRunner().invoke(app, ["train", "sed", "--config", str(REPO / "configs" / "sed_tiny.yaml"), "data.nope=1"])
    assert bad.exit_code == 1 and "nope" in bad.output
    bad = CliRunner().invoke(app, ["train", "sed", "--config", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 1 and "missing.yaml" in bad.output


def test_init_from_model_folder_reinitialises_only_the_class_head(tmp_path):
    from separator.checkpoint import Component, save_model
    from sed.train import _init_weights

    src = FakeSED(4)
    save_model(tmp_path / "m", {"detector": Component("htsat", {"fake": True, "num_classes": 4}, src.state_dict())})
    torch.manual_seed(1)
    spec = NetworkSpec(FakeSED(2), "htsat", {"fake": True, "num_classes": 2}, SR, CLIP)
    head_before = spec.module.frame[2].weight.clone()
    reshaped = _init_weights(spec, str(tmp_path / "m"))
    assert reshaped == ["frame.2.bias", "frame.2.weight"]
    assert torch.equal(spec.module.frame[0].weight, src.frame[0].weight)
    assert torch.equal(spec.module.frame[2].weight, head_before)
    other = NetworkSpec(FakeSED(4), "htsat", {"fake": False, "num_classes": 4}, SR, CLIP)
    with pytest.raises(ConfigError, match=r"differs .* \['fake'\]"):
        _init_weights(other, str(tmp_path / "m"))


def test_clip_longer_than_the_model_clip_is_refused(tmp_path):
    from sed.train import build_datasets

    cfg = load_sed_config(None, {"data.train": "x.csv", "data.clip_seconds": 2.0})
    with pytest.raises(ConfigError, match="clip_seconds=2.0"):
        build_datasets(cfg, ClassList(("a",)), SR, CLIP)


def test_bad_clips_stop_the_run_by_name_unless_skipping_is_allowed(tmp_path, caplog):
    """A corrupt training clip stops SED training naming it (strict default); max_bad_clips=1 skips it, warns,
    and trains to the end; a class whose clips are all missing on disk is named in a warning."""
    from qsep_core.training import BadClipError

    _corpus(tmp_path)
    with (tmp_path / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    gone_class = rows[-1]["labels"].split(";")[0]
    kept = [r for r in rows if gone_class not in r["labels"].split(";")] + [{"path": "train_wav/nowhere.wav", "labels": gone_class}]
    bad = tmp_path / kept[0]["path"]
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with (tmp_path / "train2.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "labels"], extrasaction="ignore")
        w.writeheader()
        w.writerows(kept)

    def cfg(out, **extra):
        return load_sed_config(REPO / "configs" / "sed_tiny.yaml", {
            **_base_overrides(out), "data.train": str(tmp_path / "train2.csv"), "data.val": str(tmp_path / "val.csv"),
            "max_steps": 6, "val_every_n_steps": 6, "checkpoint_every_n_steps": 6, "data.balanced": False,
            **extra})  # unbalanced: every clip is read in the first epoch (4 steps)

    with pytest.raises(BadClipError, match=bad.name):
        train_sed(cfg(tmp_path / "strict"), network_factory=fake_factory)
    with caplog.at_level("WARNING"):
        model_dir = train_sed(cfg(tmp_path / "lenient", max_bad_clips=1), network_factory=fake_factory)
    assert ModelFolder(model_dir).metadata["global_step"] == 6
    text = caplog.text
    assert f"skipping bad training clip" in text and bad.name in text
    assert "no training clip" in text and gone_class in text
