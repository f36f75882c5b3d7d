"""Label bank matching / building and condition files."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from separator.checkpoint import Component, ModelFolder, save_model
from separator.query.embedding import check_embedding_dim, load_embedding, save_embedding
from separator.query.errors import EmbeddingError, QueryError
from separator.query.labels import LabelBank, LabelBankConfig, build_label_bank, label_bank_config_dict

NAMES = ["Dog", "Bark", "Male speech, man speaking", "Drum kit", "Rain"]


def _bank(**kw) -> LabelBank:
    return LabelBank(LabelBankConfig(names=tuple(NAMES), latent_dim=3, **kw))


@pytest.mark.parametrize(
    "query,name,how",
    [
        ("Dog", "Dog", "name"),
        ("dog", "Dog", "name"),
        ("  DOG  ", "Dog", "name"),
        ("man speaking", "Male speech, man speaking", "name part"),
        ("male_speech", "Male speech, man speaking", "name part"),
        ("dog bark", "Bark", "builtin synonym"),
        ("Dog Barking", "Bark", "builtin synonym"),
        ("drums", "Drum kit", "builtin synonym"),
        ("dogs", "Dog", "plural"),
        ("hair dryer", None, "unknown"),
    ],
)
def test_label_matching(query, name, how):
    m = _bank().match(query)
    assert (m.name, m.how) == (name, how)


def test_builtin_synonym_prefers_candidates_present_in_the_bank():
    bank = LabelBank(LabelBankConfig(names=("Dog", "Rain"), latent_dim=3))
    assert bank.match("dog bark").name == "Dog"  # "Bark" is absent: next candidate
    assert LabelBank(LabelBankConfig(names=("Dog",), latent_dim=3, use_builtin_synonyms=False)).match("dog bark").name is None


def test_own_synonyms_and_their_validation():
    assert _bank(synonyms={"woof": "Bark"}).match("WOOF").name == "Bark"
    with pytest.raises(QueryError, match="not a class"):
        _bank(synonyms={"woof": "Cat"})


def test_build_label_bank_averages_segments_per_class_and_round_trips(tmp_path):
    lat = torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0]])
    labels = [["Dog"], ["Dog", "Bark"], ["Rain"], ["Bark"]]
    bank = build_label_bank(lat, labels)
    assert bank.names == ["Bark", "Dog", "Rain"]
    torch.testing.assert_close(bank.vector("Dog"), torch.tensor([2.0, 0, 0]))
    torch.testing.assert_close(bank.vector("Bark"), torch.tensor([1.5, 0, 2.0]))
    torch.testing.assert_close(bank.global_mean, lat.mean(0))
    assert bank.config.counts == (2, 2, 1)
    save_model(tmp_path / "m", {"label_bank": Component("label_bank", label_bank_config_dict(bank), bank.state_dict())})
    back = ModelFolder(tmp_path / "m").build("label_bank")
    torch.testing.assert_close(back.centroids, bank.centroids)
    m, v = back.lookup("dogs")
    assert m.name == "Dog" and torch.equal(v, bank.vector("Dog"))


def test_embedding_round_trip(tmp_path):
    vec = torch.randn(12)
    p = save_embedding(tmp_path / "q.safetensors", vec, {"query": {"text": "dog"}, "model": {"path": "m"}})
    back, meta = load_embedding(p)
    assert torch.equal(back, vec)
    assert meta["dim"] == 12 and meta["query"] == {"text": "dog"} and meta["model"] == {"path": "m"}
    assert meta["format_version"] == 1
    with pytest.raises(EmbeddingError, match="exists"):
        save_embedding(p, vec)
    save_embedding(p, 2 * vec, overwrite=True)
    assert torch.equal(load_embedding(p)[0], 2 * vec)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["q.safetensors"]  # no temporary files left


def test_embedding_dimension_mismatch_names_both_dims(tmp_path):
    vec, _ = load_embedding(save_embedding(tmp_path / "q.safetensors", torch.randn(768)))
    check_embedding_dim(vec, 768)
    with pytest.raises(EmbeddingError, match=r"dimension 768 but my-model expects 2048-d"):
        check_embedding_dim(vec, 2048, model="my-model")


def test_malformed_condition_files(tmp_path):
    with pytest.raises(EmbeddingError, match="not found"):
        load_embedding(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EmbeddingError, match="not a qsep condition file"):
        load_embedding(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmbeddingError, match="cannot read"):
        load_embedding(tmp_path / "junk.safetensors")
    with pytest.raises(EmbeddingError, match="1-d"):
        save_embedding(tmp_path / "q.safetensors", torch.zeros(2, 3))
    with pytest.raises(EmbeddingError, match="NaN"):
        save_embedding(tmp_path / "q.safetensors", torch.tensor([1.0, float("nan")]))
    save_file({"condition": torch.zeros(3)}, str(tmp_path / "v.safetensors"),
              metadata={"format": "qsep-condition", "qsep_condition": json.dumps({"format_version": 99, "dim": 3})})
    with pytest.raises(EmbeddingError, match="newer"):
        load_embedding(tmp_path / "v.safetensors")
