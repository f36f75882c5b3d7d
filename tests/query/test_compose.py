"""Query composition: weights, label fallback, negatives, model folders, and `qsep embed`."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from qsep_core import audio as audio_io
from separator import checkpoint
from separator.checkpoint import Component, ModelFolder, save_model
from qsep_core.config import to_dict
from separator.query.audio import AudioQueryEncoder
from separator.query.compose import Query, QueryEncoder, QueryItem, apply_negative, combine
from separator.query.embedding import load_embedding, save_embedding
from separator.query.errors import QueryError
from separator.query.labels import LabelBank, LabelBankConfig, label_bank_config_dict
from separator.query.text import TextProjection, TextProjectionConfig

from .query_toy import TOY_LATENT_DIM, TOY_RATE, FakeDetector, tone

FAKE_KIND_TARGET = "tests.query.query_toy:build_fake_detector"


def _projection(seed: int = 0) -> TextProjection:
    torch.manual_seed(seed)
    proj = TextProjection(TextProjectionConfig(text_dim=384, latent_dim=TOY_LATENT_DIM, hidden_dim=16)).eval()
    proj.set_latent_stats(torch.randn(40, TOY_LATENT_DIM) + 0.5)
    return proj


def _bank() -> LabelBank:
    bank = LabelBank(LabelBankConfig(names=("Dog", "Rain"), latent_dim=TOY_LATENT_DIM))
    with torch.no_grad():
        bank.centroids.copy_(torch.randn(2, TOY_LATENT_DIM))
        bank.global_mean.copy_(torch.randn(TOY_LATENT_DIM))
    return bank


def test_query_build_and_validation():
    q = Query.build(text=["dog", "cat"], audio=["a.wav", "b.wav"], label="Rain", weights=[1, 2, 3, 4], negative="speech")
    assert [i.kind for i in q.positives] == ["text", "text", "audio", "label"]
    assert q.positives[2].value == ["a.wav", "b.wav"] and q.positives[3].weight == 4
    assert q.negatives[0].value == "speech"
    with pytest.raises(QueryError, match="empty query"):
        Query.build()
    with pytest.raises(QueryError, match="3 weights given for 2"):
        Query.build(text=["a", "b"], weights=[1, 2, 3])
    with pytest.raises(QueryError, match="> 0"):
        QueryItem("text", "dog", weight=0)
    with pytest.raises(QueryError, match="empty text"):
        QueryItem("text", " ")


def test_weighted_positives_and_label_fallback(minilm):
    proj, bank = _projection(), _bank()
    enc = QueryEncoder(text_encoder=minilm, projection=proj, label_bank=bank, routing_cache=False)
    c_dog, c_bell = enc.encode_text(["dog barking", "church bell"])
    res = enc.encode(Query.build(text=["dog barking", "church bell"], weights=[1.0, 3.0]))
    torch.testing.assert_close(res.condition, (c_dog + 3 * c_bell) / 4, rtol=0, atol=1e-5)
    # "dog barking" is routed to the bank's Dog class; "church bell" matches neither Dog nor Rain -> projection
    assert [p.source for p in res.positives] == ["text -> classes", "text -> projection"]
    assert res.positives[0].routing.weights == {"Dog": 1.0}
    torch.testing.assert_close(c_dog, bank.mix({"Dog": 1.0}))
    torch.testing.assert_close(c_bell, proj.encode_texts(minilm, ["church bell"])[0], rtol=0, atol=1e-6)
    assert len(res.notes) == 1 and "text 'church bell' matches no class of the label bank well" in res.notes[0]
    assert "learned text projection" in res.notes[0]

    lab = enc.encode(Query.build(label="dogs"))
    torch.testing.assert_close(lab.condition, bank.mix({"Dog": 1.0}))
    assert lab.positives[0].source == "label" and lab.positives[0].match.how == "plural"

    unk = enc.encode(Query.build(label="church bell"))
    assert unk.positives[0].source == "label -> projection"
    assert "label 'church bell' is not in the label bank and matches no class" in unk.notes[0]
    torch.testing.assert_close(unk.condition, c_bell, rtol=0, atol=1e-5)
    assert "notes" in unk.describe() and unk.describe()["routing"][0]["matched"] is False


def test_unknown_label_without_text_path_is_an_error(minilm):
    enc = QueryEncoder(text_encoder=minilm, label_bank=_bank(), routing_cache=False)
    with pytest.raises(QueryError, match="not in the label bank.*no text projection"):
        enc.encode(Query.build(label="hair dryer"))
    with pytest.raises(QueryError, match="no text projection"):
        QueryEncoder().encode(Query.build(text="dog"))


def test_negative_arithmetic():
    g = torch.Generator().manual_seed(0)
    mu, p, n = (torch.randn(16, generator=g) for _ in range(3))
    for method in ("subtract", "reject"):
        c = apply_negative(p, n, mu, 0.5, method)
        # keeps the positive's norm around the origin, moves away from the negative
        torch.testing.assert_close((c - mu).norm(), (p - mu).norm())
        assert F.cosine_similarity(c - mu, n - mu, dim=0) < F.cosine_similarity(p - mu, n - mu, dim=0)
    full = apply_negative(p, n, mu, 1.0, "reject")
    assert abs(float(F.cosine_similarity(full - mu, n - mu, dim=0))) < 1e-5
    torch.testing.assert_close(apply_negative(p, n, mu, 0.0), p)
    with pytest.raises(QueryError, match="cancels"):
        apply_negative(p, p, mu, 1.0)
    torch.testing.assert_close(combine([p, n], [1, 1]), (p + n) / 2)


def test_negative_query_uses_the_projection_origin(minilm):
    proj = _projection()
    enc = QueryEncoder(text_encoder=minilm, projection=proj)
    c_sp, c_la = enc.encode_text(["speech", "laughter"])
    res = enc.encode(Query.build(text="speech", negative="laughter", negative_strength=0.7))
    torch.testing.assert_close(res.condition, apply_negative(c_sp, c_la, proj.latent_mean, 0.7), rtol=0, atol=1e-5)


def _model_folder(tmp_path, monkeypatch, with_text: bool = True):
    monkeypatch.setitem(checkpoint.BUILDERS, "htsat", FAKE_KIND_TARGET)
    det = FakeDetector()
    comps = {"audio_encoder": Component("htsat", {"sample_rate": TOY_RATE, "latent_dim": TOY_LATENT_DIM}, det.state_dict())}
    bank = _bank()
    comps["label_bank"] = Component("label_bank", label_bank_config_dict(bank), bank.state_dict())
    if with_text:
        proj = _projection()
        comps["text_projection"] = Component("text_projection", to_dict(proj.config), proj.state_dict())
    return save_model(tmp_path / "model", comps), det, bank


def test_query_encoder_from_model_folder(tmp_path, monkeypatch):
    folder, det, bank = _model_folder(tmp_path, monkeypatch, with_text=False)
    x = tone(440.0, 3.0)
    audio_io.save(tmp_path / "q.wav", x[None], TOY_RATE, bit_depth="32f")
    enc = QueryEncoder.from_model(folder)
    res = enc.encode(Query.build(audio=tmp_path / "q.wav", label="Rain", weights=[1, 1]))
    expected_audio = AudioQueryEncoder(det).encode_files([tmp_path / "q.wav"]).condition
    # a label is its class centroid at the bank's target norm (LabelBank.mix)
    torch.testing.assert_close(res.condition, (expected_audio + bank.mix({"Rain": 1.0})) / 2, rtol=0, atol=1e-6)
    assert enc.model_info["path"] == str(folder) and len(enc.model_info["config_sha256"]) == 64


def test_embedding_only_query_loads_no_encoder(tmp_path, monkeypatch):
    folder, _, _ = _model_folder(tmp_path, monkeypatch)
    v = torch.randn(TOY_LATENT_DIM)
    save_embedding(tmp_path / "e.safetensors", v)

    def refuse(*a, **k):
        raise AssertionError("an encoder was built for an embedding-only query")

    monkeypatch.setattr(ModelFolder, "build", refuse)
    res = QueryEncoder.from_model(folder).encode(Query.build(embedding=tmp_path / "e.safetensors"))
    assert torch.equal(res.condition, v)


def test_mixed_dimensions_are_an_error(tmp_path):
    save_embedding(tmp_path / "a.safetensors", torch.randn(8))
    save_embedding(tmp_path / "b.safetensors", torch.randn(6))
    with pytest.raises(QueryError, match="different dimensions.*8-d.*6-d"):
        QueryEncoder().encode(Query.build(embedding=[tmp_path / "a.safetensors", tmp_path / "b.safetensors"]))


def _out(result) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_cli_embed_round_trip(tmp_path, monkeypatch):
    from separator.cli import app

    folder, det, bank = _model_folder(tmp_path, monkeypatch, with_text=False)
    x = torch.cat([tone(440.0, 2.0), torch.zeros(4 * TOY_RATE)])
    audio_io.save(tmp_path / "q.wav", x[None], TOY_RATE, bit_depth="32f")
    runner = CliRunner()
    out = tmp_path / "q.safetensors"
    r = runner.invoke(app, ["embed", "--model", str(folder), "--audio", str(tmp_path / "q.wav"), "--out", str(out), "--verbose"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "q.wav [2.00-4.00 s] -inf dBFS: below floor" in text and "wrote a 32-d condition" in text
    vec, meta = load_embedding(out)
    torch.testing.assert_close(vec, AudioQueryEncoder(det).encode_files([tmp_path / "q.wav"]).condition)
    assert meta["model"]["path"] == str(folder) and meta["query"]["positives"][0]["kind"] == "audio"

    # refuses to overwrite; a label query; an unknown label without text path fails with the reason
    r = runner.invoke(app, ["embed", "--model", str(folder), "--label", "rain", "--out", str(out)])
    assert r.exit_code == 1 and "exists" in _out(r)
    r = runner.invoke(app, ["embed", "--model", str(folder), "--label", "rain", "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    torch.testing.assert_close(load_embedding(out)[0], bank.mix({"Rain": 1.0}))
    r = runner.invoke(app, ["embed", "--model", str(folder), "--label", "hair dryer", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 1 and "not in the label bank" in _out(r)
    # silent query file
    audio_io.save(tmp_path / "silent.wav", torch.zeros(1, TOY_RATE), TOY_RATE)
    r = runner.invoke(app, ["embed", "--model", str(folder), "--audio", str(tmp_path / "silent.wav"), "--out", str(tmp_path / "s.safetensors")])
    assert r.exit_code == 1 and "silent.wav" in _out(r) and "no usable audio" in _out(r)
    # combining saved conditions loads no model; text with no --model uses the shipped default, as every command
    r = runner.invoke(app, ["embed", "--embedding", str(out), "--embedding", str(out), "--out", str(tmp_path / "c.safetensors")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["embed", "--text", "dog", "--out", str(tmp_path / "t.safetensors")])
    assert r.exit_code == 0, r.output
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert "qsep-starter" in json.dumps(f.metadata())


def test_condition_dimension_is_checked_against_the_models_separator(tmp_path):
    from separator.models import build_preset

    sep = build_preset("resunet_film_small", cond_dim=TOY_LATENT_DIM, channels=[4, 8], bottleneck=8)
    folder = save_model(tmp_path / "m", {"separator": Component("query_unet", to_dict(sep.config), sep.state_dict())})
    save_embedding(tmp_path / "ok.safetensors", torch.randn(TOY_LATENT_DIM))
    save_embedding(tmp_path / "bad.safetensors", torch.randn(768))
    enc = QueryEncoder.from_model(folder)
    assert enc.model_cond_dim == TOY_LATENT_DIM
    assert enc.encode(Query.build(embedding=tmp_path / "ok.safetensors")).condition.numel() == TOY_LATENT_DIM
    with pytest.raises(QueryError, match=f"dimension 768 but .* expects {TOY_LATENT_DIM}-d"):
        enc.encode(Query.build(embedding=tmp_path / "bad.safetensors"))


def test_query_short_name_and_report():
    q = Query.build(text="vocals", audio=["/x/a.wav", "/y/b.flac"], negative="drums")
    assert q.short_name() == "vocals+a+b-not-drums"
    assert q.describe()["negative_strength"] == 0.25
