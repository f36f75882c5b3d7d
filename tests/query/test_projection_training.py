"""Text-projection training on a toy set, its validation, the segment-table formats and the CLI recipe."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from typer.testing import CliRunner

from separator import checkpoint
from separator.checkpoint import Component, ModelFolder, save_model
from qsep_core.config import ConfigError
from separator.query.errors import QueryError
from separator.query.train import (
    DEFAULT_TEMPLATES,
    TextProjectionTrainConfig,
    class_texts,
    load_segment_table,
    train_text_projection,
)

from .query_toy import TOY_CLASSES, TOY_RATE, FakeDetector, toy_clip

#: held-out paraphrases: none of these templates is used in training
PARAPHRASES = ("I can hear {} nearby", "listen to this {}", "there is a {} in the background")
HELD_OUT = "thunder"
PER_CLASS = 16


def _toy_table(tmp_path, det: FakeDetector):
    """Segments of the toy classes (tones / noise bands) with latents from the fixed random encoder."""
    g = torch.Generator().manual_seed(1)
    latents, rows = [], []
    for name in TOY_CLASSES:
        clips = torch.stack([toy_clip(name, g) for _ in range(PER_CLASS)])  # (PER_CLASS, samples)
        with torch.no_grad():
            latents.append(det(clips)["latent"])
        rows += [{"clip_id": f"{name}-{i}", "labels": name, "start": 0.0, "end": 0.5} for i in range(PER_CLASS)]
    latents = torch.cat(latents)
    with open(tmp_path / "segments.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    save_file({"latents": latents}, str(tmp_path / "latents.safetensors"))
    return latents, [r["labels"] for r in rows]


def test_projection_retrieves_the_class_of_held_out_paraphrases(tmp_path, monkeypatch, minilm):
    det = FakeDetector().eval()
    latents, labels = _toy_table(tmp_path, det)
    # an existing model folder with another component, which must survive
    monkeypatch.setitem(checkpoint.BUILDERS, "htsat", "tests.query.query_toy:build_fake_detector")
    save_model(tmp_path / "model", {"audio_encoder": Component("htsat", {"sample_rate": TOY_RATE}, det.state_dict())},
               metadata={"note": "kept"})
    cfg = TextProjectionTrainConfig(
        manifest=str(tmp_path / "segments.csv"), latents=str(tmp_path / "latents.safetensors"),
        model=str(tmp_path / "model"), hidden_dim=128, steps=300, batch_size=32, lr=3e-3, warmup_steps=20,
        held_out_classes=(HELD_OUT,), val_fraction=0.25, log_every=0,
    )
    metrics = train_text_projection(cfg, text_encoder=minilm)
    seen_classes = [c for c in TOY_CLASSES if c != HELD_OUT]
    assert metrics["n_train_segments"] == len(seen_classes) * (PER_CLASS - PER_CLASS // 4)
    assert metrics["seen"]["zero_shot_accuracy"] >= 0.75 and metrics["seen"]["recall@1"] >= 0.75
    assert set(metrics["held_out"]) >= {"recall@1", "recall@5", "zero_shot_accuracy"}

    folder = ModelFolder(tmp_path / "model")
    assert set(folder.components) == {"audio_encoder", "text_projection", "label_bank"}
    assert folder.metadata["note"] == "kept" and "metrics" in folder.metadata["text_projection"]
    torch.testing.assert_close(folder.state_dict("audio_encoder")["proj.weight"], det.proj.weight)
    proj = folder.build("text_projection")
    bank = folder.build("label_bank")
    assert set(bank.names) == set(TOY_CLASSES)  # the bank holds every class, held-out ones included

    # held-out paraphrases of the training classes: the top-ranked segment must carry the class
    is_seen = torch.tensor([lab != HELD_OUT for lab in labels])
    seg_lat, seg_lab = latents[is_seen], [lab for lab in labels if lab != HELD_OUT]
    a_dir = proj.audio_direction(seg_lat)
    hits = []
    for template in PARAPHRASES:
        cond = proj.encode_texts(minilm, [template.format(c) for c in seen_classes])
        top = (F.normalize(cond - proj.latent_mean, dim=-1) @ a_dir.T).argmax(dim=1)
        hits += [seg_lab[int(j)] == c for j, c in zip(top, seen_classes)]
    accuracy, chance = float(np.mean(hits)), 1.0 / len(seen_classes)
    # margin: at least 0.75 top-1 (chance is 1/7 = 0.14)
    print(f"paraphrase top-1 accuracy {accuracy:.3f} (chance {chance:.3f})")
    assert accuracy >= 0.75, (accuracy, chance)


def test_class_texts_use_templates_and_name_parts():
    texts = class_texts("Male speech, man speaking", ("{}", "the sound of {}"))
    assert texts == [
        "Male speech, man speaking", "the sound of Male speech, man speaking", "Male speech", "the sound of Male speech",
        "man speaking", "the sound of man speaking",
    ]
    assert not set(PARAPHRASES) & set(DEFAULT_TEMPLATES)


def test_segment_table_csv_format(tmp_path):
    lat = torch.arange(12.0).reshape(4, 3)
    np.savez(tmp_path / "lat.npz", latents=lat.numpy())
    (tmp_path / "m.csv").write_text(
        "clip_id,labels,caption,latent_index\n"
        "a,Dog;Bark,a dog barks twice,3\n"
        "b,\"Male speech, man speaking\",,0\n"
    )
    t = load_segment_table(tmp_path / "m.csv", tmp_path / "lat.npz")
    assert t.labels == [["Dog", "Bark"], ["Male speech, man speaking"]]
    assert t.captions == ["a dog barks twice", None]
    torch.testing.assert_close(t.latents, lat[[3, 0]])
    (tmp_path / "bad.csv").write_text("clip_id,labels\na,Dog\n")
    with pytest.raises(QueryError, match="1 rows but .* has 4 latents"):
        load_segment_table(tmp_path / "bad.csv", tmp_path / "lat.npz")
    (tmp_path / "nolab.csv").write_text("clip_id,tags\na,Dog\n")
    with pytest.raises(QueryError, match="no 'labels' column"):
        load_segment_table(tmp_path / "nolab.csv", tmp_path / "lat.npz")


def test_segment_table_from_a_mining_folder(tmp_path):
    mining = pytest.importorskip("sed.mining")
    segs = [
        {"clip_id": "c0", "clip_index": 0, "audio_path": "x.wav", "label": 1, "label_name": "Bark", "clip_labels": (1,),
         "start": 0.0, "end": 2.0, "confidence": 0.9},
        {"clip_id": "c1", "clip_index": 1, "audio_path": "y.wav", "label": 0, "label_name": "Speech", "clip_labels": (0, 1),
         "start": 1.0, "end": 3.0, "confidence": 0.8},
    ]
    lat = torch.randn(2, 5)
    mining.write_manifest(tmp_path / "mined", segs, lat, 32000, class_names=["Speech", "Bark"])
    t = load_segment_table(tmp_path / "mined")
    assert t.labels == [["Bark"], ["Speech"]]
    torch.testing.assert_close(t.latents, lat)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="manifest"):
        train_text_projection({"model": str(tmp_path)})
    with pytest.raises(ConfigError, match="where to save"):
        train_text_projection({"manifest": "m.csv", "latents": "l.npz"})
    with pytest.raises(ConfigError, match="unknown field"):
        train_text_projection({"manifest": "m.csv", "steps_per_epoch": 3})


def test_cli_train_text_projection(tmp_path, minilm, monkeypatch):
    """The recipe end to end through the CLI (tiny run, standalone output folder)."""
    from separator.cli import app
    from separator.query import train as train_mod

    _toy_table(tmp_path, FakeDetector().eval())
    monkeypatch.setattr(train_mod, "load_text_encoder", lambda spec, device=None: minilm)  # reuse the loaded one
    (tmp_path / "cfg.yaml").write_text("hidden_dim: 32\nsteps: 400\nbatch_size: 16\nlog_every: 10\nrefit_on_all: true\n")
    r = CliRunner().invoke(app, [
        "train", "text-projection", "--config", str(tmp_path / "cfg.yaml"), "--manifest", str(tmp_path / "segments.csv"),
        "--latents", str(tmp_path / "latents.safetensors"), "--out", str(tmp_path / "proj"), "steps=20",  # KEY=VALUE wins
    ])
    assert r.exit_code == 0, r.output
    assert '"zero_shot_accuracy"' in r.output and "step 20/20" in r.output
    assert '"saved_projection": "all segments"' in r.output and "refitting" in " ".join(r.output.split())
    assert set(ModelFolder(tmp_path / "proj").components) == {"text_projection", "label_bank"}
    r = CliRunner().invoke(app, ["train", "text-projection", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "p2")])
    assert r.exit_code == 1 and "manifest" in r.output
    r = CliRunner().invoke(app, ["train", "text-projection", "--config", str(tmp_path / "cfg.yaml"), "bogus_field=1"])
    assert r.exit_code == 1 and "bogus_field" in r.output and "cfg.yaml" in r.output


def test_training_with_captions_and_multi_label_segments(minilm):
    """Captions and multi-label rows go through the multi-positive loss; the result still ranks classes."""
    from separator.query.train import SegmentTable, evaluate_projection, train_projection

    g = torch.Generator().manual_seed(0)
    centres = {c: 2.0 * torch.randn(16, generator=g) for c in ("Dog", "Bark", "Rain", "Siren")}
    lat, labels, caps = [], [], []
    for i in range(64):
        names = [["Dog", "Bark"], ["Rain"], ["Siren"], ["Dog"]][i % 4]
        lat.append(sum(centres[n] for n in names) / len(names) + 0.3 * torch.randn(16, generator=g))
        labels.append(names)
        caps.append(f"{names[0].lower()} recorded outdoors, take {i % 3}" if i % 2 == 0 else None)
    table = SegmentTable(torch.stack(lat), labels, caps)
    cfg = TextProjectionTrainConfig(hidden_dim=32, steps=150, batch_size=16, lr=3e-3, warmup_steps=10,
                                    caption_probability=0.5, log_every=0)
    proj, stats = train_projection(table, cfg, minilm)
    assert np.isfinite(stats["train_loss"])
    m = evaluate_projection(proj, minilm, table.subset([i for i, row in enumerate(labels) if len(row) == 1]))
    assert m["zero_shot_accuracy"] >= 0.9 and m["recall@1"] == 1.0


class _HashEncoder:
    """A stand-in text encoder: a fixed random vector per text (seeded by its CRC)."""

    dim, spec = 12, "hash"

    def encode(self, texts):
        import zlib

        return torch.stack([torch.randn(12, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts])


def test_projection_training_is_seeded_through_the_runner():
    """The same seed gives the same weights (initialisation, dropout and sampling); another seed does not."""
    from separator.query.train import SegmentTable, train_projection

    g = torch.Generator().manual_seed(0)
    centres = {c: 2.0 * torch.randn(8, generator=g) for c in ("Dog", "Rain", "Siren")}
    labels = [[("Dog", "Rain", "Siren")[i % 3]] for i in range(24)]
    table = SegmentTable(torch.stack([centres[r[0]] + 0.3 * torch.randn(8, generator=g) for r in labels]), labels,
                         [f"take {i % 2}" if i % 2 else None for i in range(24)])
    cfg = TextProjectionTrainConfig(hidden_dim=16, steps=12, batch_size=8, warmup_steps=3, log_every=0, seed=4)
    torch.manual_seed(123)  # the global state before the call must not matter
    a, _ = train_projection(table, cfg, _HashEncoder())
    torch.manual_seed(456)
    b, _ = train_projection(table, cfg, _HashEncoder())
    c, _ = train_projection(table, TextProjectionTrainConfig(**{**cfg.__dict__, "seed": 5}), _HashEncoder())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_projection_device_maps_to_a_one_device_run():
    assert TextProjectionTrainConfig(device="cpu").run_config().trainer_placement()["accelerator"] == "cpu"
    assert TextProjectionTrainConfig(device="cuda:1").run_config().devices == [1]
    with pytest.raises(ConfigError, match="device"):
        TextProjectionTrainConfig(device="tpu").run_config()
