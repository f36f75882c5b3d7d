"""Acceptance: official-layout checkpoints imported by qsep give the official HTS-AT outputs.

Weights come from the fixture folder's ``synth_state_dict.make_state_dict(manifest, seed)``
(seed read from each npz's ``meta``), are written in the published Lightning layout, go
through qsep's importer and loader, and the stored inputs are run and compared with the
stored official outputs at the README's tolerances. Nothing from the fixture files is
hard-coded here, so any fixture set made by the same rules passes unchanged.
"""
from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch

import sed
from sed.official import import_htsat, import_zsass_sed

ATOL = {"clipwise": 1e-5, "framewise": 2e-5, "latent": 2e-5}
OUTPUTS = {"clipwise": "clipwise_output", "framewise": "framewise_output", "latent": "latent_output"}


def _fixture(official_dir, name):
    fx = np.load(official_dir / name)
    meta = json.loads(str(fx["meta"]))
    return fx, int(meta["seed"])


def _check_fingerprint(synth, sd, manifest, fx, max_numel=None):
    """Guard against torch RNG drift: a failure here is not a model bug.

    ``max_numel`` limits the check to the tensors up to that size (RNG drift changes every
    tensor, and summing the 2048-d model's largest matrices in float64 costs seconds).
    """
    order = [e["key"] for e in synth.manifest_entries(manifest)]
    part = {k: v for k, v in sd.items() if max_numel is None or v.numel() <= max_numel}
    assert len(part) > len(sd) // 2
    rows = [order.index(k) for k in part]
    got = np.array(list(synth.fingerprint(part).values()))
    np.testing.assert_allclose(got, fx["weights_fingerprint"][rows], rtol=1e-9, atol=0,
                               err_msg="synthetic weights differ from the fixture's (torch RNG drift?)")


def _compare(model, wave, fx, prefix, what):
    with torch.no_grad():
        out = model(torch.from_numpy(wave))
    for key, ref in OUTPUTS.items():
        want = fx[prefix + ref]
        got = out[key].numpy()
        assert got.shape == want.shape, f"{what} {key}: shape {got.shape} vs official {want.shape}"
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL[key], err_msg=f"{what} {key}")
    assert out["frame_times"].shape == (out["framewise"].shape[1],)


def test_htsat_audioset_matches_official(official_dir, synth, tmp_path):
    fx, seed = _fixture(official_dir, "htsat_audioset.npz")
    sd = synth.make_state_dict(synth.HTSAT_MANIFEST, seed)
    _check_fingerprint(synth, sd, synth.HTSAT_MANIFEST, fx)
    ckpt = tmp_path / "HTSAT_AudioSet_Saved_1.ckpt"
    torch.save(synth.lightning_checkpoint(sd, "htsat_audioset", lightning_extras=True), ckpt)
    del sd
    folder = import_htsat(ckpt, tmp_path / "htsat")
    model = sed.load_detector(folder)
    assert not model.training and model.class_names is None
    _compare(model, fx["input_wave_10s"], fx, "", "10-s forward")
    _compare(model, fx["input_wave_2s"], fx, "infer2s_", "2-s infer-mode forward")


@pytest.mark.slow
def test_zsass_stsed_matches_official(official_dir, synth, tmp_path):
    fx, seed = _fixture(official_dir, "zsass_stsed_2048d.npz")
    sd = synth.make_state_dict(synth.ZSASS_MANIFEST, seed, include=lambda k: k.startswith("at_model."))
    _check_fingerprint(synth, sd, synth.ZSASS_MANIFEST, fx, max_numel=2**20)
    ckpt = tmp_path / "htsat_audioset_2048d.ckpt"
    torch.save(synth.lightning_checkpoint(sd, "zsass_stsed_2048d"), ckpt)
    del sd
    gc.collect()
    folder = import_zsass_sed(ckpt, tmp_path / "stsed")
    ckpt.unlink()
    model = sed.load_detector(folder)
    assert model.cfg.latent_dim == fx["infer2s_latent_output"].shape[-1]
    _compare(model, fx["input_wave_2s"], fx, "infer2s_", "2-s query (infer-mode) forward")
    _compare(model, fx["input_wave_10s"], fx, "clip10s_", "10-s forward")


def test_zsass_separator_layout_converts_like_stsed_layout(official_dir, synth):
    """``zeroshot_asp_*.ckpt`` carries the ST-SED as ``at_model.sed_model.*`` next to separator keys;
    it converts to exactly what ``htsat_audioset_2048d.ckpt`` (``sed_model.*``) converts to."""
    from sed.official import HTSAT_PREFIX, ZSASS_SED_PREFIX, convert_htsat_state_dict, select_prefix

    fx, seed = _fixture(official_dir, "zsass_stsed_2048d.npz")
    sd = synth.make_state_dict(synth.ZSASS_MANIFEST, seed, include=lambda k: k.startswith("at_model."))
    stsed = synth.lightning_checkpoint(sd, "zsass_stsed_2048d")["state_dict"]
    sd["encoder_block1.conv_block1.conv1.weight"] = torch.zeros(32, 1, 3, 3)  # a separator key
    assert select_prefix(sd, (ZSASS_SED_PREFIX, HTSAT_PREFIX)) == ZSASS_SED_PREFIX
    assert select_prefix(stsed, (ZSASS_SED_PREFIX, HTSAT_PREFIX)) == HTSAT_PREFIX
    a = convert_htsat_state_dict(sd, "zsass_2048d", ZSASS_SED_PREFIX)
    b = convert_htsat_state_dict(stsed, "zsass_2048d", HTSAT_PREFIX)
    assert a.config == b.config and set(a.state_dict) == set(b.state_dict)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
