"""`qsep evaluate musdb|mixtures` end to end with oracles; stem queries; the mixture benchmark."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from separator.cli import app
from separator.eval import mixtures as mx
from separator.eval.estimators import ConditionEstimator, IdealRatioMask, MixtureOracle
from separator.eval.queries import StemQueryConfig, build_stem_queries

runner = CliRunner()


@pytest.mark.slow
def test_cli_musdb_oracle_end_to_end(tiny_musdb, tmp_path):
    root, _ = tiny_musdb
    out = tmp_path / "out"
    args = ["evaluate", "musdb", str(root), "--protocol", "zsass", "--oracle", "mixture", "--oracle", "irm",
            "--tracks", "1", "--out", str(out), "--save-estimates", "-j", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert set(rows) == {"oracle-mixture", "oracle-irm"}
    assert all(rows["oracle-irm"]["sdr"][s] > rows["oracle-mixture"]["sdr"][s] + 10 for s in rows["oracle-irm"]["sdr"])
    assert "NON-STANDARD" in res.output
    # the chart beside the summary: one panel, the oracle baselines as bars
    assert (out / "summary.png").stat().st_size > 5000 and "chart in" in " ".join(res.output.split())
    est, rate = sf.read(out / "oracle-irm" / "zsass" / "estimates" / "A Steady" / "vocals.wav")
    assert rate == 32000 and est.shape == (64000,)  # 3 s -> one whole 2-s segment at 32 kHz
    # a later run with other settings in the same folder: its summary holds only its own results, and says so
    res = runner.invoke(app, ["evaluate", "musdb", str(root), "--protocol", "zsass", "--oracle", "mixture",
                              "--tracks", "1", "--duration", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["oracle-mixture"]
    assert summary["settings"]["duration"] == 2 and summary["run"]["oracles"] == ["mixture"]
    assert "first 2 s of each track" in res.output


@pytest.mark.slow
def test_cli_musdb_hq_flac_layout_and_test_only_folder(tiny_musdb, tmp_path):
    """MUSDB18-HQ stems as FLAC are read like wav; a folder without train/ suggests text queries."""
    root, _ = tiny_musdb
    flac = tmp_path / "hq_flac"
    for wav in root.glob("test/*/*.wav"):
        data, rate = sf.read(wav)
        dest = flac / "test" / wav.parent.name / (wav.stem + ".flac")
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dest, data, rate, subtype="PCM_16")
    res = runner.invoke(app, ["evaluate", "musdb", str(flac), "--oracle", "irm", "--protocol", "zsass", "--tracks", "1",
                              "--duration", "2", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"][0]
    assert row["method"] == "oracle-irm" and all(v > 10 for v in row["sdr"].values())
    # audio queries need the train subset: the error says what to do instead
    res = runner.invoke(app, ["evaluate", "musdb", str(flac), "--tracks", "1", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "--text-queries" in res.output
    # ... and with them it runs, with no --model: the shipped model, named in the summary
    res = runner.invoke(app, ["evaluate", "musdb", str(flac), "--text-queries", "--tracks", "1", "--duration", "2",
                              "--out", str(tmp_path / "o3")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o3" / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["qsep-starter-text"]
    assert summary["run"]["model"].endswith("qsep-starter") and summary["run"]["stem_queries"]["vocals"] == "singing voice"


def test_cli_musdb_missing_ffmpeg(tiny_musdb, tmp_path, monkeypatch):
    from separator.eval import deps

    monkeypatch.setattr(deps.shutil, "which", lambda name: None)
    res = runner.invoke(app, ["evaluate", "musdb", str(tiny_musdb[0]), "--oracle", "mixture", "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert "apt-get install ffmpeg" in " ".join(res.output.split())


class _Track:
    def __init__(self, name, stems):
        self.name, self.stems, self.rate = name, stems, 8000


def test_stem_queries_skip_silence_and_cache(tmp_path):
    rate = 8000
    loud = torch.full((2, 2 * rate), 0.5)
    silent = torch.zeros(2, 2 * rate)
    tracks = [_Track("t1", {"vocals": torch.cat([silent, loud, silent], -1)}),
              _Track("t2", {"vocals": torch.cat([loud * 0.5, silent], -1)})]
    seen = []

    def embed(files):
        seen.append([f.name for f in files])
        # mean level of each file's 2-s segments, averaged over files: which segments were used
        return torch.tensor([float(np.mean([np.abs(sf.read(f)[0]).mean() for f in files]))])

    load = lambda t, stem: (t.stems[stem], t.rate)  # noqa: E731
    q = build_stem_queries(tracks, embed, tmp_path, stems=["vocals"], load=load, config=StemQueryConfig(), embedder_id="fake")
    assert seen == [["t1.wav", "t2.wav"]]
    assert float(q["vocals"]) == pytest.approx((0.5 + 0.25) / 2, abs=1e-4)  # silent segments never embedded
    meta = json.loads((tmp_path / "vocals.json").read_text())
    assert meta["segments"] == {"t1": [1], "t2": [0]}
    again = build_stem_queries(tracks, embed, tmp_path, stems=["vocals"], load=load, embedder_id="fake")
    assert len(seen) == 1 and torch.equal(again["vocals"], q["vocals"])  # cached
    build_stem_queries(tracks, embed, tmp_path, stems=["vocals"], load=load, embedder_id="other")
    assert len(seen) == 2  # a different embedder recomputes
    limited = build_stem_queries(tracks, embed, tmp_path / "one", stems=["vocals"], load=load,
                                 config=StemQueryConfig(segments_per_stem=1))
    assert json.loads((tmp_path / "one" / "vocals.json").read_text())["n_segments"] == 1


def _corpus(tmp_path, rate=16000):
    """Tones (class by frequency) and noise; manifest path,labels."""
    g = np.random.default_rng(0)
    rows = ["path,labels"]
    t = np.arange(3 * rate) / rate
    for cls, freq in {"low": 220.0, "mid": 1000.0, "high": 4000.0}.items():
        for k in range(3):
            x = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.01 * k) * t)
            sf.write(tmp_path / f"{cls}{k}.wav", x, rate)
            rows.append(f"{cls}{k}.wav,{cls};tone")
    for k in range(2):
        sf.write(tmp_path / f"noise{k}.wav", 0.05 * g.standard_normal(3 * rate), rate)
        rows.append(f"noise{k}.wav,noise")
    (tmp_path / "corpus.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "corpus.csv"


def test_mixture_set_is_seeded_and_disjoint(tmp_path):
    items = mx.read_manifest(_corpus(tmp_path))
    cfg = mx.MixtureSetConfig(mixtures_per_class=2, query_examples=1, sample_rate=16000)
    specs, qa = mx.build_mixture_set(items, ["low", "mid", "noise"], cfg)
    again, qa2 = mx.build_mixture_set(list(reversed(items)), ["low", "mid", "noise"], cfg)
    assert specs == again and qa == qa2
    labels = {it.path: set(it.labels) for it in items}
    for s in specs:
        assert not labels[s.target] & labels[s.interferer]  # tones never mixed with tones
        assert s.target not in qa[s.target_class]  # query examples are not targets
    assert len(qa["low"]) == 1
    mix, tgt, itf = mx.render_mixture(specs[0], cfg)
    assert mix.shape == (1, 32000)
    ratio = float(tgt.pow(2).mean().sqrt() / itf.pow(2).mean().sqrt())
    assert ratio == pytest.approx(1.0, rel=1e-4)  # RMS matched (gain within [0.02, 50])


def test_mixture_metrics_and_groups(tmp_path):
    items = mx.read_manifest(_corpus(tmp_path))
    cfg = mx.MixtureSetConfig(mixtures_per_class=2, query_examples=1, sample_rate=16000)
    specs, qa = mx.build_mixture_set(items, ["low", "mid", "high"], cfg)
    res = mx.evaluate_mixtures(specs, MixtureOracle(), held_out=["high"], config=cfg, query_audio=qa)
    for row in res["mixtures"]:
        assert row["sdri"] == pytest.approx(0.0, abs=1e-9) and row["si_sdri"] == pytest.approx(0.0, abs=1e-9)
        assert row["sdr"] == pytest.approx(0.0, abs=0.05)  # RMS-matched target and interferer: about 0 dB
    assert res["held_out"]["classes"] == 1 and res["seen"]["classes"] == 2
    irm = mx.evaluate_mixtures(specs, IdealRatioMask(), held_out=["high"], config=cfg, query_kind="label")
    assert irm["held_out"]["sdri"] > 15 and irm["seen"]["si_sdri"] > 15
    queries = []
    probe = ConditionEstimator(separate=lambda w, sr, q: (queries.append(q), w)[1], name="probe")
    mx.evaluate_mixtures(specs[:1], probe, held_out=[], query_kind="audio", query_audio=qa, config=cfg)
    assert queries[0].kind == "audio" and queries[0].audio == tuple(qa[specs[0].target_class])


def test_cli_mixtures_oracle(tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", "mixtures", str(corpus), "--oracle", "irm", "--held-out", "high", "--classes", "low,high",
            "--per-class", "2", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results_oracle-irm.json").read_text())
    assert set(results["per_class"]) == {"low", "high"} and results["per_class"]["high"]["held_out"] is True
    assert results["settings"]["held_out"] == ["high"] and results["settings"]["mixtures_per_class"] == 2
    assert (out / "mixture_set.json").is_file()
    # a typo in --held-out would score the class as seen: it is an error with a suggestion
    res = runner.invoke(app, args[:6] + ["Hihg"] + args[7:])
    assert res.exit_code == 1 and "did you mean ['high']" in res.output
    # the folder's mixture set is another one than asked for: refused, naming the difference
    res = runner.invoke(app, args[:-3] + ["3", "--out", str(out)])
    assert res.exit_code == 1 and "different mixture set" in res.output and "mixtures_per_class" in res.output
    # --held-out is optional (a corpus may have no held-out class): every class is then "seen"
    res = runner.invoke(app, ["evaluate", "mixtures", str(corpus), "--oracle", "mixture", "--classes", "low,high",
                              "--per-class", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results_oracle-mixture.json").read_text())
    assert not any(c["held_out"] for c in results["per_class"].values())
    # the chart beside the results draws every method of the folder (here both oracles)
    from separator.plots import collect_mixture_results

    assert {r["method"] for r in collect_mixture_results(out)} == {"oracle-irm", "oracle-mixture"}
    assert (out / "results.png").stat().st_size > 5000


def _fake_model(monkeypatch, calls):
    """Replace the model loading of `qsep evaluate` by callables that record what they are asked."""
    import separator.eval.run as run

    def encode(**query):
        (kind, value), = query.items()
        calls.setdefault(kind, []).append(value)
        if kind == "audio":
            return torch.tensor([float(np.mean([np.abs(sf.read(f)[0]).mean() for f in value])), 1.0])
        return torch.tensor([float(len(str(value))), 0.0])

    def separate(wav, sample_rate, condition):
        calls.setdefault("condition", []).append(condition)
        return 0.5 * wav

    monkeypatch.setattr(run, "load_model",
                        lambda model, device="auto", full_band=False: (calls.setdefault("model", str(model)),
                                                                      calls.setdefault("full_band", full_band),
                                                                      (encode, separate))[2])
    monkeypatch.setattr(run, "_model_facts", lambda model: (Path(model), "model"))


@pytest.mark.slow
def test_cli_musdb_model_glue(tiny_musdb, tmp_path, monkeypatch):
    calls: dict = {}
    _fake_model(monkeypatch, calls)
    root, _ = tiny_musdb
    out = tmp_path / "out"
    base = ["evaluate", "musdb", str(root), "--model", str(tmp_path / "m"), "--protocol", "zsass", "--tracks", "1",
            "--duration", "2", "--out", str(out)]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    assert len(calls["audio"]) == 4  # one query per stem, from the two train tracks
    for files in calls["audio"]:  # per-track files of train-set segments, never test tracks
        assert {Path(f).name for f in files} == {"Train Song.wav", "Train Quiet Vocals.wav"}
        assert all(Path(f).parent.parent == out / "queries" / "audio" for f in files)
    assert (out / "queries" / "vocals.npy").is_file()
    assert calls["condition"] and all(c.shape == (2,) for c in calls["condition"])
    assert calls["full_band"] is False  # the default: the model's band
    calls.pop("full_band")
    res = runner.invoke(app, base + ["--full-band", "--out", str(tmp_path / "out_band")])
    assert res.exit_code == 0, res.output
    assert calls["full_band"] is True  # --full-band reaches the separator
    res = runner.invoke(app, base + ["--text-queries", "--out", str(tmp_path / "out_text")])
    assert res.exit_code == 0, res.output
    from separator.eval.queries import DEFAULT_STEM_TEXTS

    assert calls["text"] == list(DEFAULT_STEM_TEXTS.values())
    summary = json.loads((tmp_path / "out_text" / "summary.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["model-text"]
    assert summary["run"]["stem_queries"] == DEFAULT_STEM_TEXTS  # the texts are recorded
    assert summary["settings"]["duration"] == 2 and summary["tracks"] == [summary["tracks"][0]]
    # the texts can be set; the summary says which were used
    calls.clear()
    res = runner.invoke(app, base + ["--text-queries", "--stem-text", "vocals=female singer", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    assert calls["text"][0] == "female singer"
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["run"]["stem_queries"]["vocals"] == "female singer"
    res = runner.invoke(app, base + ["--text-queries", "--stem-text", "voice=x"])
    assert res.exit_code == 1 and "unknown stem" in res.output


def test_cli_mixtures_model_glue(tmp_path, monkeypatch):
    calls: dict = {}
    _fake_model(monkeypatch, calls)
    corpus = _corpus(tmp_path)
    for kind in ("label", "audio"):
        args = ["evaluate", "mixtures", str(corpus), "--model", str(tmp_path / "m"), "--held-out", "high",
                "--classes", "low;high", "--per-class", "2", "--query", kind, "--out", str(tmp_path / "out")]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    assert calls["label"] == ["low", "high"]  # encoded once per class
    assert len(calls["audio"]) == 2 and all(len(files) == 1 for files in calls["audio"])
    assert len(calls["condition"]) == 8
    results = json.loads((tmp_path / "out" / "results_model_audio.json").read_text())
    # half the mixture of RMS-matched (nearly orthogonal) sources: SI-SDRi 0, SDRi 10 log10(2)
    assert all(abs(r["si_sdri"]) < 1e-6 and abs(r["sdri"] - 3.01) < 0.05 for r in results["mixtures"])


def test_cli_mixtures_unrelated_text_control(tmp_path, monkeypatch):
    calls: dict = {}
    _fake_model(monkeypatch, calls)
    corpus = _corpus(tmp_path)
    args = ["evaluate", "mixtures", str(corpus), "--model", str(tmp_path / "m"), "--held-out", "high", "--classes",
            "low;high", "--per-class", "2", "--unrelated-text", "typing", "--out", str(tmp_path / "out")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls["text"] == ["typing", "typing"]  # every class asked with the one unrelated text
    results = json.loads((tmp_path / "out" / "results_model_text_unrelated.json").read_text())
    assert results["query_text"] == "typing"
    res = runner.invoke(app, args + ["--query", "label"])
    assert res.exit_code == 1 and "--unrelated-text" in res.output


def test_read_audioset_layout(tmp_path):
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/0jbk,Animal\n')
    (tmp_path / "eval_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/09x0r,/m/05zppz"\n'
        '--BfvyPmVMo, 20.000, 30.000, "/m/0jbk"\n'
        '--missing00, 0.000, 10.000, "/m/0jbk"\n')
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "Y--4gqARaEJE_0.000_10.000.wav", np.zeros(160), 16000)
    sf.write(tmp_path / "audio" / "--BfvyPmVMo.wav", np.zeros(160), 16000)
    items = mx.read_corpus(tmp_path)
    assert [(Path(i.path).name, i.labels) for i in items] == [
        ("Y--4gqARaEJE_0.000_10.000.wav", ("Male speech, man speaking", "Speech")),
        ("--BfvyPmVMo.wav", ("Animal",)),
    ]


@pytest.mark.slow
def test_cli_musdb_with_a_real_tiny_model(tiny_musdb, tmp_path):
    """The CLI glue against the real Separator / QueryEncoder: a random tiny model folder runs end to end."""
    from sed.config import htsat_config
    from sed.htsat import build_from_config as build_htsat
    from separator.checkpoint import Component, save_model
    from qsep_core.config import to_dict
    from separator.models import build_preset

    hc = htsat_config("tiny")
    det = build_htsat(to_dict(hc))
    sep = build_preset("resunet_film_small", cond_dim=hc.latent_dim, channels=[4, 8], bottleneck=8)
    folder = save_model(tmp_path / "m", {"separator": Component("query_unet", to_dict(sep.config), sep.state_dict()),
                                          "audio_encoder": Component("htsat", to_dict(hc), det.state_dict())})
    root, _ = tiny_musdb
    out = tmp_path / "out"
    res = runner.invoke(app, ["evaluate", "musdb", str(root), "--model", str(folder), "--protocol", "zsass",
                              "--tracks", "1", "--duration", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    assert row["method"] == "m" and row["tracks"] == 1  # named after the model folder
    assert all(np.isfinite(v) for v in row["sdr"].values())
    assert np.load(out / "queries" / "drums.npy").shape == (hc.latent_dim,)


def test_small_classes_keep_examples_apart_and_single_clip_classes_skip_audio_queries(tmp_path):
    """Query examples are never targets, even for a class with fewer clips than mixtures; a class with one clip has
    no example, so audio-query evaluation skips (and counts) its mixtures instead of failing the whole run."""
    items = mx.read_manifest(_corpus(tmp_path))
    single = mx.CorpusItem(path=items[0].path, labels=("solo",))
    items = [it for it in items if it.path != single.path] + [single]
    cfg = mx.MixtureSetConfig(mixtures_per_class=5, query_examples=3, sample_rate=16000)
    specs, qa = mx.build_mixture_set(items, ["low", "solo"], cfg)
    n_low = sum("low" in it.labels for it in items)
    assert len(qa["low"]) == 1 and n_low == 2  # fewer clips than mixtures: one example, the other clip is the target
    assert all(s.target not in qa[s.target_class] for s in specs)
    assert qa["solo"] == []
    probe = ConditionEstimator(separate=lambda w, sr, q: w, name="probe")
    res = mx.evaluate_mixtures(specs, probe, held_out=[], query_kind="audio", query_audio=qa, config=cfg)
    assert res["skipped"] == {"solo": 5} and set(res["per_class"]) == {"low"}
