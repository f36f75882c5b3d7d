"""The audio-query path against the official numbers: the official AudioSet HTS-AT (synthetic weights in the
published layout, imported by qsep) must embed a query file as the mean of the official infer-mode latents
of its 2-s segments (fixture ``htsat_audioset.npz``, ``infer2s_latent_output``)."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from qsep_core import audio as audio_io
from separator.query.compose import Query, QueryEncoder

from ..conftest import official_fixture_dir

LATENT_ATOL = 2e-5  # official_compat README tolerance for latent_output


def test_query_file_embedding_equals_mean_of_official_segment_latents(tmp_path):
    fixdir = official_fixture_dir()
    if not (fixdir / "synth_state_dict.py").is_file():
        pytest.skip(f"official-compat fixtures not found in {fixdir} (set QSEP_OFFICIAL_FIXTURES)")
    official = pytest.importorskip("sed.official")
    spec = importlib.util.spec_from_file_location("qsep_query_synth_state_dict", fixdir / "synth_state_dict.py")
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)

    fx = np.load(fixdir / "htsat_audioset.npz")
    seed = int(json.loads(str(fx["meta"]))["seed"])
    sd = synth.make_state_dict(synth.HTSAT_MANIFEST, seed)
    ckpt = tmp_path / "HTSAT_AudioSet_Saved_1.ckpt"
    torch.save(synth.lightning_checkpoint(sd, "htsat_audioset", lightning_extras=True), ckpt)
    del sd
    folder = official.import_htsat(ckpt, tmp_path / "htsat")
    ckpt.unlink()

    enc = QueryEncoder.from_model(folder)
    rate = enc.audio.sample_rate
    clips = torch.from_numpy(fx["input_wave_2s"])  # (2, 2 s): each is one official query segment
    want = fx["infer2s_latent_output"]  # (2, latent_dim)
    assert clips.shape[-1] == int(enc.audio.segment_seconds * rate)
    # one file holding both clips back to back -> two segments -> mean of the two official latents
    audio_io.save(tmp_path / "query.wav", clips.reshape(1, -1), rate, bit_depth="32f")
    res = enc.encode(Query.build(audio=tmp_path / "query.wav"))
    segs = res.positives[0].audio.segments
    assert [(s.start_s, s.end_s, s.used) for s in segs] == [(0.0, 2.0, True), (2.0, 4.0, True)]
    np.testing.assert_allclose(res.condition.numpy(), want.mean(axis=0), rtol=0, atol=LATENT_ATOL)
    # and each clip alone gives its own official latent
    for i in range(2):
        one = enc.audio.encode_waveform(clips[i], f"clip{i}")
        np.testing.assert_allclose(one.latent.numpy(), want[i], rtol=0, atol=LATENT_ATOL)
