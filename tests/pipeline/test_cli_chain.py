"""`qsep mine` and `qsep train separator` end to end with the real (tiny, untrained) HTS-AT and QueryUNet."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from qsep_core import audio
from separator.checkpoint import Component, ModelFolder, save_model
from separator.cli import app

from .fakes import synthetic_source

LABELS = ["low tone", "high noise", "mid tone"]


def _detector_folder(tmp_path):
    from sed.config import htsat_config
    from sed.htsat import HTSAT

    from qsep_core.config import to_dict

    cfg = htsat_config("tiny", num_classes=len(LABELS))
    torch.manual_seed(0)
    net = HTSAT(cfg).eval()
    return save_model(tmp_path / "detector", {"detector": Component("htsat", to_dict(cfg), net.state_dict())},
                      metadata={"class_names": LABELS}), cfg.sample_rate


def _corpus(tmp_path, rate: int):
    g = torch.Generator().manual_seed(0)
    rows = ["path,labels"]
    (tmp_path / "clips").mkdir()
    specs = [[0], [1], [2], [0, 1], [1], [2, 0]]
    for i, labels in enumerate(specs):
        wav = sum(torch.nn.functional.pad(synthetic_source(k, 1.5, g), (j * 2000, 0)) [: 12000] for j, k in enumerate(labels))
        wav = audio.resample(wav[None], 8000, rate)  # 1.5 s at the detector rate
        audio.save(tmp_path / "clips" / f"c{i}.wav", wav, rate)
        rows.append(f"clips/c{i}.wav,{';'.join(LABELS[k] for k in labels)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "train.csv"


def test_mine_then_train_separator_from_the_command_line(tmp_path):
    detector, rate = _detector_folder(tmp_path)
    data = _corpus(tmp_path, rate)
    runner = CliRunner()
    res = runner.invoke(app, ["mine", "--detector", str(detector), "--data", str(data), "--out", str(tmp_path / "mined"),
                              "--shard-size", "4", "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu",
                              "--segment-seconds", "1.0"])
    assert res.exit_code == 0, res.output
    from sed.mining import load_manifest

    m = load_manifest(tmp_path / "mined")
    assert len(m) == 8 and m.latents.shape == (8, 96)  # one anchor per (clip, label); tiny HTS-AT latent is 96-d
    assert set(m.segments.label_name) == set(LABELS)
    assert all(0.0 <= s and e <= 1.5 + 1e-6 and e - s == pytest.approx(1.0) for s, e in zip(m.segments.start, m.segments.end))

    res = runner.invoke(app, [
        "train", "separator", "--config", "configs/separator_tiny.yaml", "--manifest", str(tmp_path / "mined"),
        "--out", str(tmp_path / "sep"), "--detector", str(detector), "--accelerator", "cpu", "--devices", "1",
        "--max-steps", "2", "batch_size=2", "epoch_size=4", "num_workers=0", "progress=false",
        "mixing.segment_seconds=0.25", "mixing.val_size=2",
        "--set", "model={sample_rate: 32000, n_fft: 128, hop_length: 64, channels: [4, 8], bottleneck: 8}",
    ])
    assert res.exit_code == 0, res.output
    folder = ModelFolder(tmp_path / "sep" / "model")
    assert folder.kind("audio_encoder") == "htsat" and folder.metadata["class_names"] == LABELS
    sep = folder.build("separator")
    enc = folder.build("audio_encoder")
    import sed

    assert sed.load_detector(tmp_path / "sep" / "model").class_names == LABELS
    x = torch.randn(1, 1, 8000)
    cond = enc(x[:, 0])["latent"]
    assert sep(x, cond).shape == (1, 1, 8000)


def test_cli_errors_are_actionable(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "separator", "--config", "configs/separator_tiny.yaml", "mixing.nope=1"])
    assert res.exit_code == 1 and "mixing.nope" in res.output
    res = runner.invoke(app, ["mine", "--detector", str(tmp_path / "none"), "--data", "x.csv", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "none" in res.output


@pytest.mark.slow
def test_whole_chain_train_sed_mine_train_separator_separate(tmp_path):
    """train SED (tiny) -> mine -> train separator -> export -> separate a file with an audio query."""
    from qsep_core.dsp import chunked_apply

    from sed.config import htsat_config

    rate = htsat_config("tiny").sample_rate
    data = _corpus(tmp_path, rate)
    runner = CliRunner()
    res = runner.invoke(app, [
        "train", "sed", "--config", "configs/sed_tiny.yaml", "--out", str(tmp_path / "sed"), "--accelerator", "cpu",
        "--devices", "1", "--max-steps", "2", f"data.train={data}", "data.batch_size=2", "data.num_workers=0",
        "data.clip_seconds=2.0", "val_every_n_steps=null", "checkpoint_every_n_steps=1", "warmup_steps=1",
    ])
    assert res.exit_code == 0, res.output
    detector = tmp_path / "sed" / "model"
    res = runner.invoke(app, ["mine", "--detector", str(detector), "--data", str(data), "--out", str(tmp_path / "mined"),
                              "--num-workers", "0", "--accelerator", "cpu", "--segment-seconds", "1.0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [
        "train", "separator", "--config", "configs/separator_tiny.yaml", "--manifest", str(tmp_path / "mined"),
        "--out", str(tmp_path / "sep"), "--detector", str(detector), "--accelerator", "cpu", "--devices", "1",
        "--max-steps", "2", "batch_size=2", "epoch_size=4", "num_workers=0", "progress=false",
        "mixing.segment_seconds=0.25", "mixing.val_size=2",
        "--set", "model={sample_rate: 32000, n_fft: 128, hop_length: 64, channels: [4, 8], bottleneck: 8}",
    ])
    assert res.exit_code == 0, res.output
    folder = ModelFolder(tmp_path / "sep" / "model")
    sep, enc = folder.build("separator"), folder.build("audio_encoder")
    mix, sr = audio.load(tmp_path / "clips" / "c3.wav", sample_rate=rate, channels=1)
    query, _ = audio.load(tmp_path / "clips" / "c0.wav", sample_rate=rate, channels=1)
    with torch.no_grad():
        cond = enc(query)["latent"]  # (1, D)
        seg = int(0.25 * rate)
        # chunks arrive as (n, 1, seg): the mixture's channel axis is the model's channel axis
        est = chunked_apply(lambda x: sep(x, cond.expand(x.shape[0], -1)), mix, seg)
    assert est.shape == mix.shape and torch.isfinite(est).all()
    audio.save(tmp_path / "estimate.wav", est, rate)
    assert audio.info(tmp_path / "estimate.wav").frames == mix.shape[-1]
