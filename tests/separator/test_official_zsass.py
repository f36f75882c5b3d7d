"""Official ZS-ASS separator: import of the checkpoint layout and numeric equivalence with the official forward.

Weights come from the fixture folder's ``synth_state_dict.py`` (the official
state_dict layout with deterministic synthetic values), the expected outputs
from ``zsass_separator.npz`` (computed by the official code with those weights).
Seed and inputs are read from the fixture files.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from separator.checkpoint import CheckpointError, load_strict
from separator.models import build_from_config
from separator.official import FROZEN_KERNELS, check_frozen_kernels, convert_separator_state_dict, map_separator_key
from tests.conftest import official_fixture_dir

FIXDIR = official_fixture_dir()
NPZ = FIXDIR / "zsass_separator.npz"
# tolerances of the fixture README (absolute, CPU float32)
WAV_ATOL, SP_ATOL, SP_IN_ATOL, LOGITS_ATOL = 5e-6, 2e-3, 2e-3, 5e-5

pytestmark = pytest.mark.skipif(not NPZ.is_file(), reason=f"official fixtures not found in {FIXDIR} (set QSEP_OFFICIAL_FIXTURES)")


@pytest.fixture(scope="module")
def synth():
    spec = importlib.util.spec_from_file_location("synth_state_dict", FIXDIR / "synth_state_dict.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("synth_state_dict", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fixture():
    with np.load(NPZ) as f:
        data = {k: f[k] for k in f.files}
    data["meta"] = json.loads(str(data["meta"]))
    return data


def _separator_keys(synth) -> list[str]:
    return [e["key"] for e in synth.manifest_entries(synth.ZSASS_MANIFEST) if not e["key"].startswith("at_model.")]


def _inputs(synth, fixture):
    seed = int(fixture["meta"]["seed"])
    mix = synth.make_input("mixture_2s", seed)
    cond = synth.make_input("condition", seed)
    assert np.array_equal(mix.numpy(), fixture["input_mixture_2s"])
    assert np.array_equal(cond.numpy(), fixture["input_condition"])
    return mix, cond


def _check_fingerprint(synth, fixture, sd, keys):
    order = [e["key"] for e in synth.manifest_entries(synth.ZSASS_MANIFEST)]
    rows = [order.index(k) for k in keys]
    got = np.array([v for v in synth.fingerprint({k: sd[k] for k in keys}).values()])
    # a mismatch means the torch RNG drifted (not a model bug)
    np.testing.assert_allclose(got, fixture["weights_fingerprint"][rows], rtol=1e-9, atol=0)


def _compare(model, synth, fixture):
    mix, cond = _inputs(synth, fixture)
    with torch.inference_mode():
        out = model.forward_debug(mix[:, None, :], cond)  # official input (B, T, 1) == ours (B, 1, T)
    np.testing.assert_allclose(out["wav"][:, 0].numpy(), fixture["wav"][..., 0], rtol=0, atol=WAV_ATOL)
    np.testing.assert_allclose(out["sp"].numpy(), fixture["sp"], rtol=0, atol=SP_ATOL)
    np.testing.assert_allclose(out["magnitude"].numpy(), fixture["sp_in"], rtol=0, atol=SP_IN_ATOL)
    np.testing.assert_allclose(out["mask_logits"].numpy(), fixture["mask_logits"], rtol=0, atol=LOGITS_ATOL)


@pytest.mark.slow
def test_separator_equivalence_fast(synth, fixture):
    """Separator tensors only (no ST-SED): convert, run the two 2-s mixtures, compare with the official outputs."""
    seed = int(fixture["meta"]["seed"])
    sd = synth.make_state_dict(synth.ZSASS_MANIFEST, seed, include=lambda k: not k.startswith("at_model."))
    _check_fingerprint(synth, fixture, sd, list(sd))
    comp = convert_separator_state_dict(sd)
    del sd
    model = build_from_config(comp.config)
    load_strict(model, comp.state_dict, "zsass separator")
    del comp
    _compare(model.eval(), synth, fixture)


@pytest.mark.slow
def test_import_official_checkpoint_end_to_end(synth, fixture, tmp_path):
    """Full official layout (separator + ST-SED) -> qsep import-official zsass -> Separator -> fixture outputs."""
    pytest.importorskip("sed.official")
    from separator.api import Separator
    from separator.checkpoint import ModelFolder
    from separator.official import import_zsass

    seed = int(fixture["meta"]["seed"])
    sd = synth.make_state_dict(synth.ZSASS_MANIFEST, seed)
    _check_fingerprint(synth, fixture, sd, list(sd))
    ckpt = tmp_path / "zeroshot_asp_full.ckpt"
    torch.save(synth.lightning_checkpoint(sd, "zsass_separator", lightning_extras=True), ckpt)
    del sd
    gc.collect()
    out = import_zsass(ckpt, tmp_path / "zsass")
    ckpt.unlink()
    folder = ModelFolder(out)
    assert folder.kind("separator") == "query_unet" and folder.kind("audio_encoder") == "htsat"
    sep = Separator.from_pretrained(out)
    _compare(sep.model, synth, fixture)
    # through the API: a 2-s input (shorter than a segment: one chunk of its own length) at the
    # model rate is exactly the official forward
    mix, cond = _inputs(synth, fixture)
    res = sep.separate_condition(mix[0], 32000, cond[0])
    np.testing.assert_allclose(res.target.numpy(), fixture["wav"][0, :, 0], rtol=0, atol=WAV_ATOL)
    del sep
    gc.collect()
    encoder = folder.build("audio_encoder")  # the query encoder loads strictly
    assert sum(p.numel() for p in encoder.parameters()) > 0
    with pytest.raises(CheckpointError, match="exists"):
        import_zsass(ckpt, tmp_path / "zsass")


def test_key_mapping_covers_the_manifest(synth):
    keys = _separator_keys(synth)
    unmapped = [k for k in keys if k not in FROZEN_KERNELS and map_separator_key(k) is None]
    assert unmapped == []
    assert map_separator_key("decoder_block3.conv_block2.emb2.weight") == "decoders.2.blocks.0.cond2.proj.weight"
    assert map_separator_key("conv_block7.bn1.running_var") == "bottleneck.0.bn1.running_var"
    assert map_separator_key("something.else") is None


def _small_official_sd(synth, drop=(), extra=None):
    """Official separator keys with cheap zero tensors (shapes from the manifest); enough for key checks."""
    sd = {}
    for e in synth.manifest_entries(synth.ZSASS_MANIFEST):
        k = e["key"]
        if k.startswith("at_model.") or k in drop or k in FROZEN_KERNELS:
            continue
        sd[k] = torch.zeros(e["shape"], dtype=getattr(torch, e["dtype"]))
    sd.update(extra or {})
    return sd


def test_unknown_and_missing_keys_are_named(synth):
    sd = _small_official_sd(synth, drop=("decoder_block2.emb1.bias",), extra={"encoder_block9.conv_block.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError) as err:
        convert_separator_state_dict(sd)
    msg = str(err.value)
    assert "encoder_block9.conv_block.conv1.weight" in msg
    assert "decoders.1.up_cond.proj.bias" in msg


def test_frozen_kernels_checked(synth):
    n_fft = 2048
    good = synth.make_state_dict(synth.ZSASS_MANIFEST, 0, include=lambda k: k in FROZEN_KERNELS)
    assert sorted(check_frozen_kernels(good, n_fft)) == sorted(good)
    bad = dict(good)
    bad["stft.conv_imag.weight"] = -bad["stft.conv_imag.weight"]  # sign convention of the other DFT
    with pytest.raises(CheckpointError, match="stft.conv_imag.weight"):
        check_frozen_kernels(bad, n_fft)


def test_cli_refuses_a_checkpoint_without_query_encoder(tmp_path):
    pytest.importorskip("sed.official")
    from typer.testing import CliRunner

    from separator.cli import app

    ckpt = tmp_path / "not_zsass.ckpt"
    torch.save({"state_dict": {"bn0.weight": torch.ones(3)}}, ckpt)
    res = CliRunner().invoke(app, ["import-official", "zsass", str(ckpt), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "at_model.sed_model." in res.output
    assert not (tmp_path / "out").exists()
