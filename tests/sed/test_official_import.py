"""Official-checkpoint importer: front-end checks, key reporting, pickle safety, CLI."""
from __future__ import annotations

import json

import pytest
import torch
import torchaudio
from typer.testing import CliRunner

import sed
from separator.checkpoint import ModelFolder
from separator.cli import app
from sed.config import htsat_config
from sed.features import stft_kernels
from sed.htsat import HTSAT
from sed.official import (
    OfficialCheckpointError,
    convert_htsat_state_dict,
    import_htsat,
    read_official_checkpoint,
)

P = "sed_model."


class _Opaque:
    """Stands for the arbitrary Python objects some Lightning checkpoints pickle (hyper-parameters...)."""

    def __init__(self):
        self.lr = 1e-3


def official_layout(model: HTSAT, prefix: str = P) -> dict[str, torch.Tensor]:
    """The state_dict the official code would save for ``model``'s weights (torchlibrosa kernels + head)."""
    cfg = model.cfg
    real, imag = stft_kernels(cfg)
    sd = {prefix + "spectrogram_extractor.stft.conv_real.weight": real,
          prefix + "spectrogram_extractor.stft.conv_imag.weight": imag}
    for k, v in model.state_dict().items():
        sd[prefix + ("logmel_extractor.melW" if k == "mel.melW" else k)] = v.clone()
    sd[prefix + "head.weight"] = torch.zeros(cfg.num_classes, cfg.num_classes)
    sd[prefix + "head.bias"] = torch.zeros(cfg.num_classes)
    return sd


@pytest.fixture(scope="module")
def tiny_official():
    torch.manual_seed(3)
    model = HTSAT(htsat_config("tiny")).eval()
    return model, official_layout(model)


def test_round_trip_keeps_weights_and_outputs(tiny_official):
    model, sd = tiny_official
    comp = convert_htsat_state_dict(sd, "tiny", P)
    assert comp.kind == "htsat" and "head.weight" not in comp.state_dict
    assert not any("spectrogram_extractor" in k for k in comp.state_dict)
    rebuilt = HTSAT(htsat_config("tiny")).eval()
    rebuilt.load_state_dict(comp.state_dict, strict=True)
    x = torch.randn(1, 48000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)["latent"], model(x)["latent"], atol=0, rtol=0)


def test_wrong_mel_kernel_is_refused(tiny_official):
    _, sd = tiny_official
    cfg = htsat_config("tiny")
    htk = torchaudio.functional.melscale_fbanks(cfg.n_freqs, cfg.fmin, cfg.fmax, cfg.n_mels, cfg.sample_rate,
                                                norm=None, mel_scale="htk")
    bad = dict(sd, **{P + "logmel_extractor.melW": htk})
    with pytest.raises(OfficialCheckpointError, match=r"sed_model\.logmel_extractor\.melW.*front end"):
        convert_htsat_state_dict(bad, "tiny", P)


def test_wrong_stft_kernel_is_refused(tiny_official):
    _, sd = tiny_official
    sym = stft_kernels(htsat_config("tiny", periodic=False))[0]  # symmetric Hann
    bad = dict(sd, **{P + "spectrogram_extractor.stft.conv_real.weight": sym})
    with pytest.raises(OfficialCheckpointError, match=r"conv_real\.weight differs"):
        convert_htsat_state_dict(bad, "tiny", P)
    short = dict(sd, **{P + "spectrogram_extractor.stft.conv_imag.weight": torch.zeros(257, 1, 512)})
    with pytest.raises(OfficialCheckpointError, match=r"conv_imag\.weight has shape \(257, 1, 512\)"):
        convert_htsat_state_dict(short, "tiny", P)


def test_unknown_missing_and_misshaped_keys_are_named(tiny_official):
    _, sd = tiny_official
    bad = dict(sd)
    bad[P + "extra_head.weight"] = torch.zeros(3)
    del bad[P + "norm.bias"]
    bad[P + "tscam_conv.bias"] = torch.zeros(99)
    with pytest.raises(OfficialCheckpointError) as err:
        convert_htsat_state_dict(bad, "tiny", P)
    msg = str(err.value)
    assert "unknown keys sed_model.extra_head.weight" in msg
    assert "missing keys sed_model.norm.bias" in msg
    assert "sed_model.tscam_conv.bias: checkpoint (99,)" in msg


def test_computed_buffers_must_match(tiny_official):
    _, sd = tiny_official
    key = next(k for k in sd if k.endswith("attn_mask"))
    bad = dict(sd, **{key: sd[key].masked_fill(sd[key] != 0, float("-inf"))})
    with pytest.raises(OfficialCheckpointError, match="attn_mask differs"):
        convert_htsat_state_dict(bad, "tiny", P)


def test_no_key_under_prefix(tiny_official):
    _, sd = tiny_official
    with pytest.raises(OfficialCheckpointError, match="no key starts with 'at_model.sed_model.'"):
        convert_htsat_state_dict(sd, "tiny", "at_model.sed_model.")


def test_pickle_needing_checkpoint_is_refused_with_explanation(tmp_path, tiny_official):
    _, sd = tiny_official
    ckpt = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": _Opaque()}, ckpt)
    with pytest.raises(OfficialCheckpointError, match="execute arbitrary code.*--trust-pickle"):
        read_official_checkpoint(ckpt)
    got = read_official_checkpoint(ckpt, trust_pickle=True)
    assert set(got) == set(sd)
    res = CliRunner().invoke(app, ["import-official", "htsat", str(ckpt), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "--trust-pickle" in res.output and not (tmp_path / "m").exists()


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(OfficialCheckpointError, match="not found"):
        read_official_checkpoint(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(OfficialCheckpointError, match="cannot read"):
        read_official_checkpoint(junk)
    lst = tmp_path / "list.ckpt"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(OfficialCheckpointError, match="expected a state_dict"):
        read_official_checkpoint(lst)


def test_cli_import_htsat_writes_a_loadable_folder(tmp_path, synth):
    """``qsep import-official htsat`` on an official-layout AudioSet checkpoint (synthetic weights)."""
    sd = synth.make_state_dict(synth.HTSAT_MANIFEST, 0)
    ckpt = tmp_path / "HTSAT_AudioSet_Saved_1.ckpt"
    torch.save(synth.lightning_checkpoint(sd, "htsat_audioset", lightning_extras=True), ckpt)
    out = tmp_path / "htsat"
    runner = CliRunner()
    res = runner.invoke(app, ["import-official", "htsat", str(ckpt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    folder = ModelFolder(out)
    assert folder.components == {"detector": {"kind": "htsat", "config": folder.component_config("detector")}}
    meta = folder.metadata
    assert meta["preset"] == "audioset" and meta["class_names"] is None and meta["source_checkpoint"] == ckpt.name
    model = sed.load_detector(out)
    torch.testing.assert_close(model.mel.melW, sd[P + "logmel_extractor.melW"], atol=0, rtol=0)
    # an existing folder is not replaced without --overwrite
    res = runner.invoke(app, ["import-official", "htsat", str(ckpt), "--out", str(out)])
    assert res.exit_code == 1 and "overwrite" in res.output
    # the 768-d checkpoint is not a ZS-ASS ST-SED: shapes are named
    res = runner.invoke(app, ["import-official", "zsass-sed", str(ckpt), "--out", str(tmp_path / "z")])
    assert res.exit_code == 1 and "shape mismatches" in res.output and "patch_embed.proj.weight" in res.output


def test_load_detector_errors(tmp_path):
    from separator.checkpoint import CheckpointError, Component, save_model

    with pytest.raises(CheckpointError, match="not found"):
        sed.load_detector(tmp_path / "missing")
    cfg = htsat_config("tiny", num_classes=2)
    model = HTSAT(cfg)
    from qsep_core.config import to_dict

    save_model(tmp_path / "enc", {"audio_encoder": Component("htsat", to_dict(cfg), model.state_dict())},
               metadata={"class_names": ["a", "b"]})
    loaded = sed.load_detector(tmp_path / "enc")  # falls back to the separator folder's audio encoder
    assert loaded.class_names == ["a", "b"] and not loaded.training
    save_model(tmp_path / "bad", {"detector": Component("htsat", to_dict(cfg), model.state_dict())},
               metadata={"class_names": ["a"]})
    with pytest.raises(CheckpointError, match="1 class names but the model has 2"):
        sed.load_detector(tmp_path / "bad")
    json.loads((tmp_path / "bad" / "config.json").read_text())
