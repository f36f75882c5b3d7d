"""One consistent qsep: every command knows the default model and its names, speaks one option vocabulary,
and says in one line what is wrong (issue 18)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from qsep_core.hub import DEFAULT_MODEL, model_display_name, resolve_model
from qsep_core.text import plural
from separator.cli import app

DATA = Path(__file__).resolve().parents[1] / "data" / "starter_events"
runner = CliRunner()
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")


def _flat(res) -> str:
    return " ".join(res.output.split())


def test_embed_needs_no_model_and_records_the_default(tmp_path):
    out = tmp_path / "q.safetensors"
    res = runner.invoke(app, ["embed", "--text", "dog barking", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor(f.keys()[0]).shape == (96,)
    assert DEFAULT_MODEL in json.dumps(meta)
    # the old spelling --audio still works (hidden alias of --query-audio)
    res = runner.invoke(app, ["embed", "--audio", str(DATA / "dog.flac"), "--out", str(tmp_path / "a.safetensors")])
    assert res.exit_code == 0, res.output


def test_model_names_from_qsep_models_work_everywhere(tmp_path):
    import sed
    from separator.api import Separator

    listed = json.loads(runner.invoke(app, ["models", "--json"]).output)
    names = {e["name"] for e in listed}
    assert DEFAULT_MODEL in names
    entry = next(e for e in listed if e["name"] == DEFAULT_MODEL)
    assert entry["preset"] == "resunet_film_small"  # not an empty column
    assert resolve_model(DEFAULT_MODEL) == resolve_model(None)
    assert sed.load_detector(DEFAULT_MODEL).class_names == sed.load_detector().class_names
    assert Separator.open_model(DEFAULT_MODEL).path == Separator.open_model().path
    for args in (["detect", str(DATA / "rain.flac")], ["detect", str(DATA / "rain.flac"), "--model", DEFAULT_MODEL]):
        res = runner.invoke(app, args + ["--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)[0]["duration"] > 0


def test_run_exports_are_named_after_their_run():
    assert model_display_name(Path("runs/toy_sep/model")) == "toy_sep"
    assert model_display_name(Path("models/zsass")) == "zsass"
    assert model_display_name(Path("x/my.safetensors")) == "my"


def test_model_name_in_output_template(tmp_path):
    res = runner.invoke(app, ["separate", str(DATA / "dog.flac"), "--label", "dog", "-o", str(tmp_path), "-q",
                              "--filename", "{model}/{track}/{query}.{ext}"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / DEFAULT_MODEL / "dog" / "dog.wav").is_file()
    assert (tmp_path / DEFAULT_MODEL / "dog" / "no_dog.wav").is_file()


@NO_CUDA
@pytest.mark.parametrize("args", [
    ["embed", "--text", "dog", "--out", "q.safetensors", "--device", "cuda"],
    ["detect", str(DATA / "dog.flac"), "--device", "cuda"],
    ["separate", str(DATA / "dog.flac"), "--text", "dog", "--device", "cuda:1"],
    ["train", "text-projection", "--config", "configs/text_projection_tiny.yaml", "--device", "cuda"],
])
def test_cuda_without_cuda_is_one_line(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "CUDA is not available" in _flat(res) and "Traceback" not in res.output


@pytest.mark.parametrize("devices", ["two", "0;1", "-1", "0,x"])
def test_one_devices_syntax(devices):
    res = runner.invoke(app, ["train", "sed", "--config", "configs/sed_toy.yaml", "--devices", devices])
    assert res.exit_code == 1 and "--devices" in res.output and "count (2)" in _flat(res)


def test_devices_forms_parse():
    from separator.cli import _devices

    assert _devices("2") == 2 and _devices("0,1") == [0, 1] and _devices("[0, 1]") == [0, 1] and _devices("auto") == "auto"


@NO_CUDA
def test_accelerator_gpu_without_gpu_is_one_line(tmp_path):
    from recipes.toy.build import SAMPLE_RATE, make_clip
    import numpy as np
    import soundfile as sf

    rows = ["path,labels"]
    for i, lab in enumerate(["beep", "hum", "beep", "hum"]):
        sf.write(tmp_path / f"c{i}.wav", make_clip([lab], np.random.default_rng(i)), SAMPLE_RATE)
        rows.append(f"c{i}.wav,{lab}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    res = runner.invoke(app, ["train", "sed", "--config", "configs/sed_toy.yaml", "--accelerator", "gpu",
                              "--out", str(tmp_path / "run"), f"data.train={tmp_path / 'train.csv'}"])
    assert res.exit_code == 1 and "--accelerator cpu" in _flat(res) and "Traceback" not in res.output
    # GPU indices on the CPU: one line too (Lightning's own error is a TypeError traceback)
    res = runner.invoke(app, ["train", "sed", "--config", "configs/sed_toy.yaml", "--accelerator", "cpu", "--devices",
                              "0,1", "--out", str(tmp_path / "run2"), f"data.train={tmp_path / 'train.csv'}"])
    assert res.exit_code == 1 and "names GPU indices" in _flat(res) and "Traceback" not in res.output


def test_models_lists_labels(tmp_path):
    res = runner.invoke(app, ["models", "--labels", DEFAULT_MODEL, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    by_name = {r["label"]: r for r in rows}
    assert len(rows) == 45 and "Rain" in by_name and by_name["Rain"]["count"] > 0
    assert "birdsong" in by_name["Bird"]["synonyms"]
    res = runner.invoke(app, ["models", "--labels", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "unknown model" in _flat(res)


def test_a_mistyped_label_suggests_the_bank_class(tmp_path):
    res = runner.invoke(app, ["separate", str(DATA / "rain.flac"), "--label", "rian", "-o", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    assert "did you mean 'Rain'" in _flat(res)  # the closest spelling first


@pytest.mark.parametrize("text,foreign", [
    ("Gesang", True), ("人声", True), ("Schlagzeug und Gesang", True), ("chien qui aboie", True),
    ("vocals", False), ("dog barking", False), ("didgeridoo", False), ("hi-hat", False), ("revving engine", False),
    ("typing on a computer keyboard", False), ("piano, guitar and synthesizer", False),
])
def test_text_that_is_not_english_is_flagged(text, foreign):
    from separator.query.routing import english_only_warning

    assert (english_only_warning(text) is not None) == foreign


def test_non_english_text_warns_on_the_command_line(tmp_path):
    res = runner.invoke(app, ["embed", "--text", "Gesang", "--out", str(tmp_path / "q.safetensors")])
    assert res.exit_code == 0 and "does not look like English" in _flat(res)


def test_plural():
    assert plural(1, "class") == "1 class" and plural(2, "class") == "2 classes" and plural(0, "event") == "0 events"


def test_models_lists_a_folder_that_would_not_load_with_its_error(tmp_path):
    """`qsep models` checks each component against its weights (no allocation): a broken copy is listed with its
    error next to the good models, not as if it worked."""
    import shutil

    good = tmp_path / "zoo" / "good"
    shutil.copytree(resolve_model(None), good)
    for name, edit in (("badtype", lambda c: c["components"]["separator"]["config"].update(n_fft="1024")),
                       ("badshape", lambda c: c["components"]["separator"]["config"].update(channels=[8, 16])),
                       ("unknownkind", lambda c: c["components"].update(extra={"kind": "foo", "config": {}}))):
        shutil.copytree(good, tmp_path / "zoo" / name)
        cfg = json.loads((good / "config.json").read_text())
        edit(cfg)
        (tmp_path / "zoo" / name / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["models", str(tmp_path / "zoo"), "--json"])
    assert res.exit_code == 0, res.output
    entries = {e["name"]: e for e in json.loads(res.output)}
    assert entries["good"]["error"] is None and "text" in entries["good"]["query_types"]
    assert "n_fft" in entries["badtype"]["error"]
    assert entries["badshape"]["error"] and entries["unknownkind"]["error"] and "foo" in entries["unknownkind"]["error"]


def test_a_time_channels_array_is_refused_not_separated():
    """(time, channels), soundfile's layout, passed as (channels, time) would be 96,000 two-sample channels (the
    process ran out of memory): it is a ValueError that says to transpose."""
    from separator.api import Separator

    sep = Separator.from_pretrained(threads=1)
    wav = torch.zeros(96000, 2)
    with pytest.raises(ValueError, match=r"waveform\.T"):
        sep.separate(wav, 32000, label="Rain")
    out = sep.separate(wav.T.contiguous(), 32000, label="Rain")
    assert out.target.shape == (2, 96000)
