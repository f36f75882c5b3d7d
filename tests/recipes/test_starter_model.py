"""The shipped default model ``qsep-starter``: it loads by default, knows text / audio / label queries, and separates.

The separation test uses ``tests/data/starter_excerpt/{vocals,drums}.flac``: 3 s (2.0-5.0 s) of the vocals and
drums stems of the starter corpus's music TEST track ``starter_test_000`` (seed 0), mono 32 kHz 16-bit. It was
rendered by qsep's own builder (``recipes/starter_corpus``) with the MuseScore_General_Lite soundfont (MIT) and the
espeak-ng voice en+f4 (GPL-3, synthesizer output), neither of which the model was trained on.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qsep_core import audio
from qsep_core.metrics import improvement, si_sdr
from separator.api import Separator
from separator.checkpoint import ModelFolder
from separator.hub import DEFAULT_MODEL, PRETRAINED_DIR, resolve_model

EXCERPT = Path(__file__).resolve().parents[1] / "data" / "starter_excerpt"
MODEL_DIR = PRETRAINED_DIR / DEFAULT_MODEL
#: SI-SDR improvement (dB) the vocals must gain at least. Measured on this excerpt with the packaged model
#: (2026-11-23, CPU): text "vocals" 5.98, label "vocals" 5.60, audio (the clean excerpt as the example) 3.16 dB;
#: the bounds are about half of that. The drums are NOT separated well by this small model (text "drums":
#: -0.4 dB, label 2.5 dB, audio 0.2 dB), so they are not asserted; see the README's "The default model".
MIN_SISDRI_DB = {"text": 3.0, "label": 3.0, "audio": 1.5}

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason=f"{MODEL_DIR} is not packaged")


@pytest.fixture(scope="module")
def sep() -> Separator:
    return Separator.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def stems() -> dict[str, torch.Tensor]:
    out = {}
    for name in ("vocals", "drums"):
        wav, rate = audio.load(EXCERPT / f"{name}.flac")
        assert rate == 32000
        out[name] = wav[0]  # (time,)
    return out


def test_shipped_model_is_the_default_and_small():
    assert resolve_model(None) == MODEL_DIR
    sizes = {p.name: p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file()}
    assert set(sizes) >= {"config.json", "model.safetensors"}
    assert max(sizes.values()) < 20e6 and sum(sizes.values()) < 60e6, sizes
    folder = ModelFolder(MODEL_DIR)
    assert {"separator", "audio_encoder", "text_projection", "label_bank"} <= set(folder.components)
    meta = folder.metadata["qsep_starter"]
    assert meta["corpus"]["seed"] == 0
    assert not set(meta["corpus"]["held_out_classes"]) & set(meta["corpus"]["event_classes"])


def test_excerpt_is_small():
    assert sum(p.stat().st_size for p in EXCERPT.iterdir()) < 300_000


@pytest.mark.parametrize("kind", ["text", "label", "audio"])
def test_separating_vocals_from_drums_improves_si_sdr(sep, stems, kind, tmp_path):
    vocals, drums = stems["vocals"], stems["drums"]
    mix = vocals + drums
    if kind == "audio":  # the query example is the clean vocals excerpt itself (an oracle-like example)
        query = {"audio": [str(EXCERPT / "vocals.flac")]}
    else:
        query = {kind: "vocals"}
    est = sep.separate(mix[None], 32000, **query).target[0]
    gain = float(improvement(si_sdr, estimate=est, reference=vocals, mixture=mix))
    assert gain > MIN_SISDRI_DB[kind], f"{kind} query: SI-SDRi {gain:.2f} dB"


def test_vocals_query_keeps_the_vocals_and_drops_the_drums(sep, stems):
    """The vocals estimate is far closer to the vocals than to the drums (measured 5.6 vs -10.6 dB SI-SDR)."""
    vocals, drums = stems["vocals"], stems["drums"]
    est = sep.separate((vocals + drums)[None], 32000, text="vocals").target[0]
    assert si_sdr(estimate=est, reference=vocals) > si_sdr(estimate=est, reference=drums) + 8.0
