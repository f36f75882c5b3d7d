"""On-the-fly two-source mixing: disjoint labels, ontology, loudness matching, seeding."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sed.mining import load_manifest
from separator.train import (
    LabelOverlap,
    MixingConfig,
    MixtureDataset,
    MixtureSampler,
    SegmentStore,
    SeparatorDataModule,
    load_training_config,
    loudness_match,
)

from .fakes import SYN_RATE, write_synthetic_manifest


def _dataset(folder, seed=0, ontology=None, **mix):
    m = load_manifest(write_synthetic_manifest(folder))
    store = SegmentStore(m, SYN_RATE, SYN_RATE)
    overlap = LabelOverlap(3, None, m.class_names, ontology)
    cfg = MixingConfig(**mix)
    return MixtureDataset(store, range(len(store)), overlap, cfg, seed, 100, m.latents, range(len(store))), m


def test_loudness_match_known_answers():
    ref = torch.ones(1000)
    rms = lambda x: x.pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(loudness_match(ref, 0.5 * torch.ones(1000))) == pytest.approx(1.0)
    assert rms(loudness_match(ref, 1e-4 * torch.ones(1000))) == pytest.approx(50 * 1e-4)  # gain clipped at 50
    assert rms(loudness_match(ref, 1e3 * torch.ones(1000))) == pytest.approx(0.02 * 1e3)  # gain clipped at 0.02
    assert loudness_match(ref, torch.zeros(1000)).abs().max() == 0  # silence stays silence
    batch = loudness_match(torch.ones(2, 10), torch.tensor([[2.0] * 10, [0.5] * 10]))
    assert torch.allclose(batch, torch.ones(2, 10))


def test_mixtures_never_share_a_label_and_are_loudness_matched(tmp_path):
    ds, m = _dataset(tmp_path)
    seen_pairs = set()
    for key in range(60):
        item = ds[key]
        t, i = item["target_index"], item["interferer_index"]
        assert ds.store.labels[t].isdisjoint(ds.store.labels[i])
        seen_pairs.add((m.segments.label[t], m.segments.label[i]))
        s1, s2 = item["target"], item["interferer"]
        assert s2.pow(2).mean().sqrt() == pytest.approx(s1.pow(2).mean().sqrt().item(), rel=1e-4)
        assert torch.equal(item["mixture"], s1 + s2)
        assert torch.equal(item["condition"], m.latents[t])  # the target's own latent
        assert item["mixture"].shape == (1, SYN_RATE)
    assert (0, 2) in seen_pairs or (2, 0) in seen_pairs  # allowed without an ontology


def test_ontology_parents_and_children_count_as_overlapping(tmp_path):
    ontology = [
        {"id": "/m/low", "name": "low tone", "child_ids": ["/m/mid"]},
        {"id": "/m/mid", "name": "mid tone", "child_ids": []},
        {"id": "/m/high", "name": "high noise", "child_ids": []},
    ]
    path = tmp_path / "ontology.json"
    path.write_text(json.dumps(ontology))
    ds, m = _dataset(tmp_path, ontology=str(path))
    for key in range(60):
        item = ds[key]
        pair = {m.segments.label[item["target_index"]], m.segments.label[item["interferer_index"]]}
        assert pair != {0, 2}
        assert 1 in pair  # only "high noise" is unrelated to the others


def test_same_seed_same_mixtures_other_seed_others(tmp_path):
    a, _ = _dataset(tmp_path / "a", seed=3, random_gain_db=6.0)
    b, _ = _dataset(tmp_path / "b", seed=3, random_gain_db=6.0)
    c, _ = _dataset(tmp_path / "c", seed=4, random_gain_db=6.0)
    for key in (0, 5, 17):
        x, y = a[key], b[key]
        assert torch.equal(x["mixture"], y["mixture"]) and x["gain"] == y["gain"]
    assert any(not torch.equal(a[k]["mixture"], c[k]["mixture"]) for k in range(5))
    gains = {round(a[k]["gain"], 6) for k in range(20)}
    assert len(gains) > 1 and all(10 ** (-6 / 20) - 1e-6 <= g <= 10 ** (6 / 20) + 1e-6 for g in gains)


def test_sampler_epochs_and_workers_do_not_change_the_mixtures(tmp_path):
    folder = write_synthetic_manifest(tmp_path)
    cfg = load_training_config(overrides=[f"manifest={folder}", "batch_size=4", "epoch_size=8", "mixing.val_size=6"])
    dm = SeparatorDataModule(cfg, SYN_RATE)
    s = MixtureSampler(8)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) == [8 + i for i in range(8)] and e0 == list(range(8))
    one = [b["mixture"] for b in dm.train_dataloader()]
    cfg2 = load_training_config(overrides=[f"manifest={folder}", "batch_size=4", "epoch_size=8", "num_workers=2"])
    two = [b["mixture"] for b in SeparatorDataModule(cfg2, SYN_RATE).train_dataloader()]
    assert len(one) == 2 and all(torch.equal(x, y) for x, y in zip(one, two))
    val1 = [b["mixture"] for b in dm.val_dataloader()]
    dm.train_dataloader().sampler.set_epoch(3)
    val2 = [b["mixture"] for b in dm.val_dataloader()]
    assert sum(v.shape[0] for v in val1) == 6 and all(torch.equal(x, y) for x, y in zip(val1, val2))


def test_segments_are_read_from_audio_files(tmp_path):
    folder = write_synthetic_manifest(tmp_path, with_files=True)
    m = load_manifest(folder)
    assert m.audio is None and m.segments.audio_path[0].endswith(".wav")
    stored = load_manifest(write_synthetic_manifest(tmp_path / "stored"))
    a = SegmentStore(m, SYN_RATE, SYN_RATE).audio(3)
    b = SegmentStore(stored, SYN_RATE, SYN_RATE).audio(3)
    assert torch.allclose(a, b, atol=1e-6)
    # another model rate: resampled on read, padded to the example length
    c = SegmentStore(m, SYN_RATE // 2, SYN_RATE).audio(3)
    assert c.shape == (SYN_RATE,) and c[SYN_RATE // 2 + 10:].abs().max() == 0


def test_embedding_condition(tmp_path):
    folder = write_synthetic_manifest(tmp_path)
    emb = torch.arange(15, dtype=torch.float32).reshape(3, 5)
    save_file({"embeddings": emb}, str(tmp_path / "emb.safetensors"))
    cfg = load_training_config(overrides=[f"manifest={folder}", "mixing.condition=embedding",
                                          f"mixing.embeddings={tmp_path / 'emb.safetensors'}"])
    dm = SeparatorDataModule(cfg, SYN_RATE)
    assert dm.cond_dim == 5
    item = dm.train_set[0]
    assert torch.equal(item["condition"], emb[dm.store.mined_label[item["target_index"]]])


def test_config_errors_name_the_field(tmp_path):
    from qsep_core.config import ConfigError

    with pytest.raises(ConfigError, match="mixing.bogus"):
        load_training_config(overrides=["mixing.bogus=1"])
    with pytest.raises(ConfigError, match="loss"):
        load_training_config(overrides=["loss=l3"])
    cfg = load_training_config(overrides=["model.channels=[4, 8]", "lr=0.01"])
    assert cfg.model == {"channels": [4, 8]} and cfg.lr == 0.01
