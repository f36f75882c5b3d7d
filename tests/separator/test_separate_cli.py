"""End-to-end tests of `qsep separate`, `qsep models`, `qsep embed` -> `--embedding`, and the query API."""
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qsep_core import audio
from separator.api import Separator, output_path, slugify
from separator.checkpoint import Component, save_model
from separator.cli import app
from qsep_core.config import to_dict
from separator.models import build_from_config, preset

runner = CliRunner()


def flat(res) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(res.output.split())
LATENT = 16


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random-weight model folder: small separator + tiny HTS-AT audio encoder + a text projection."""
    from sed.config import htsat_config
    from sed.htsat import HTSAT
    from separator.query.text import TextProjection, TextProjectionConfig

    torch.manual_seed(0)
    det_cfg = htsat_config("tiny")
    det = HTSAT(det_cfg)
    cfg = preset("resunet_film_small", cond_dim=det.latent_dim if hasattr(det, "latent_dim") else det_cfg.latent_dim)
    sep = build_from_config(cfg)
    pcfg = TextProjectionConfig(text_dim=384, latent_dim=cfg.cond_dim, hidden_dim=0)
    proj = TextProjection(pcfg)
    path = tmp_path_factory.mktemp("models") / "tiny-model"
    save_model(path, {
        "separator": Component("query_unet", to_dict(cfg), sep.state_dict()),
        "audio_encoder": Component("htsat", to_dict(det_cfg), det.state_dict()),
        "text_projection": Component("text_projection", to_dict(pcfg), proj.state_dict()),
    })
    return path


def _tone_file(path: Path, rate=44100, channels=2, seconds=1.3, freq=440.0):
    t = torch.arange(int(rate * seconds)) / rate
    x = 0.3 * torch.sin(2 * math.pi * freq * t) + 0.05 * torch.randn(len(t), generator=torch.Generator().manual_seed(1))
    audio.save(path, x.repeat(channels, 1), rate, bit_depth="32f" if path.suffix == ".wav" else "24")
    return path


def test_one_file_stereo_44k_two_queries_with_residual(tmp_path, model_dir):
    src = _tone_file(tmp_path / "song.wav")
    q = _tone_file(tmp_path / "example.wav", rate=32000, channels=1, seconds=2.5, freq=440.0)
    out = tmp_path / "out"
    res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), "--query-audio", str(q),
                              "--text", "a sine tone", "-o", str(out), "--bit-depth", "32f", "--quiet"])
    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert written == ["song/a_sine_tone.wav", "song/example.wav", "song/no_a_sine_tone.wav", "song/no_example.wav"]
    mix, sr = audio.load(src)
    for name in ("a_sine_tone", "example"):
        tgt, sr_t = audio.load(out / "song" / f"{name}.wav")
        resid, _ = audio.load(out / "song" / f"no_{name}.wav")
        assert sr_t == 44100 and tgt.shape == mix.shape == resid.shape
        assert torch.allclose(tgt + resid, mix, atol=1e-5)
    a, _ = audio.load(out / "song" / "a_sine_tone.wav")
    b, _ = audio.load(out / "song" / "example.wav")
    assert not torch.allclose(a, b)  # different queries, different outputs


@pytest.mark.slow
def test_plot_writes_a_spectrogram_png_per_output_and_never_replaces_one(tmp_path, model_dir):
    src = _tone_file(tmp_path / "song.wav", seconds=1.0)
    out = tmp_path / "out"
    args = ["separate", str(src), "--model", str(model_dir), "--text", "tone", "--text", "hum", "-o", str(out), "--plot",
            "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["song/hum.png", "song/tone.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # a picture the user has is not replaced without --overwrite (the outputs are refused first anyway)
    (out / "song" / "tone.wav").unlink()
    (out / "song" / "no_tone.wav").unlink()
    (out / "song" / "hum.wav").unlink()
    (out / "song" / "no_hum.wav").unlink()
    (out / "song" / "tone.png").write_bytes(b"mine")
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "tone.png exists" in flat(res)
    assert (out / "song" / "tone.png").read_bytes() == b"mine"
    assert (out / "song" / "hum.png").read_bytes()[:4] == b"\x89PNG"


def test_folder_glob_template_and_refusal_to_overwrite(tmp_path, model_dir):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    _tone_file(d / "a.wav", channels=1)
    _tone_file(d / "sub" / "b.flac", rate=22050)
    (d / "notes.txt").write_text("not audio")
    out = tmp_path / "out"
    args = ["separate", str(d), "--model", str(model_dir), "--text", "tone", "-o", str(out),
            "--filename", "{query}/{track}.{ext}", "--format", "flac", "--no-residual", "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["tone", "tone/a.flac", "tone/b.flac"]
    b, sr = audio.load(out / "tone" / "b.flac")
    assert sr == 22050 and b.shape[0] == 2
    before = (out / "tone" / "a.flac").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "refusing to overwrite" in flat(res)
    assert (out / "tone" / "a.flac").read_bytes() == before
    res = runner.invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["separate", str(tmp_path / "in" / "*.wav"), "--model", str(model_dir), "-t", "tone",
                              "-o", str(tmp_path / "g"), "-q"])
    assert res.exit_code == 0 and (tmp_path / "g" / "a" / "tone.wav").exists()


def test_corrupt_input_among_good_ones(tmp_path, model_dir):
    good = _tone_file(tmp_path / "good.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    out = tmp_path / "out"
    res = runner.invoke(app, ["separate", str(bad), str(good), str(tmp_path / "missing.wav"), "--model", str(model_dir),
                              "-t", "tone", "-o", str(out)])
    assert res.exit_code == 1
    assert "cannot decode" in flat(res) and "missing.wav: file not found" in flat(res)
    assert (out / "good" / "tone.wav").exists() and not (out / "bad").exists()


def test_embed_then_separate_with_embedding(tmp_path, model_dir):
    q = tmp_path / "q.safetensors"
    res = runner.invoke(app, ["embed", "--model", str(model_dir), "--text", "a bell", "--out", str(q)])
    assert res.exit_code == 0, res.output
    src = _tone_file(tmp_path / "x.wav", channels=1)
    res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), "--embedding", str(q), "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    via_emb, _ = audio.load(tmp_path / "o" / "x" / "q.wav")
    res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), "-t", "a bell", "-o", str(tmp_path / "o2"), "-q"])
    via_text, _ = audio.load(tmp_path / "o2" / "x" / "a_bell.wav")
    assert torch.allclose(via_emb, via_text, atol=1e-4)


def test_actionable_errors(tmp_path, model_dir):
    src = _tone_file(tmp_path / "x.wav")
    res = runner.invoke(app, ["separate", str(src), "--model", str(tmp_path / "nope"), "-t", "x"])
    assert res.exit_code == 1 and "unknown model" in flat(res)
    res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir)])
    assert res.exit_code == 1 and "empty query" in flat(res)
    silent = tmp_path / "silent.wav"
    audio.save(silent, torch.zeros(1, 64000), 32000)
    res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), "--query-audio", str(silent)])
    assert res.exit_code == 1 and "silent" in flat(res).lower()
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), "-t", "x", "--device", "cuda"])
        assert res.exit_code == 1 and "CUDA is not available" in flat(res)
    res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), "-t", "x", "--filename", "{track}.{ext}"])
    assert res.exit_code == 1 and "{query}" in flat(res)
    for empty in (["-t", ""], ["-t", "   "], ["-l", ""], ["-t", "x", "--not", ""]):  # an error line, not a traceback
        res = runner.invoke(app, ["separate", str(src), "--model", str(model_dir), *empty])
        assert res.exit_code == 1 and "empty" in flat(res), (empty, flat(res))
        assert res.exception is None or isinstance(res.exception, SystemExit), (empty, res.exception)


def test_missing_relative_model_folder_that_looks_like_a_hub_id_is_named(tmp_path, monkeypatch):
    """`--model models/zsass` with no such folder: the error names the folder, not only the hub lookup."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from qsep_core.checkpoint import CheckpointError
    from qsep_core.hub import resolve_model

    with pytest.raises(CheckpointError, match=r"no model folder .*models/zsass exists"):
        resolve_model("models/zsass")


def test_models_lists_folder(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("QSEP_MODELS", str(model_dir.parent))
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0
    assert '"name": "tiny-model"' in res.output and '"text"' in res.output and '"audio"' in res.output
    sep = Separator.from_pretrained("tiny-model", device="cpu")  # by name through the search path
    assert sep.model_folder.path == model_dir


def test_python_api(tmp_path, model_dir):
    sep = Separator.from_pretrained(model_dir, device="cpu")
    x = torch.randn(2, 30001, generator=torch.Generator().manual_seed(0)) * 0.1
    r = sep.separate(x, 48000, text="dog barking")
    assert r.target.shape == x.shape and torch.allclose(r.target + r.residual, x, atol=1e-6)
    assert r.query is not None
    q = sep.encode_query(text="dog barking")
    r2 = sep.separate(x, 48000, condition=q)
    assert torch.allclose(r.target, r2.target)
    r3 = sep.separate(x, 48000, text="dog barking", negative="wind")
    assert not torch.allclose(r.target, r3.target)
    with pytest.raises(ValueError, match="not both"):
        sep.separate(x, 48000, text="a", condition=q)
    src = _tone_file(tmp_path / "in.wav")
    out = sep.separate_file(src, out_dir=tmp_path / "o", text="vocals")
    assert out["target"] == tmp_path / "o" / "in" / "vocals.wav" and out["residual"].exists()


def test_hub_id_resolves_from_local_cache_only(tmp_path, model_dir, monkeypatch):
    """An owner/repo id is served from the local Hugging Face cache, with the network off."""
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snap / f).write_bytes((model_dir / f).read_bytes())
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text(snap.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    sep = Separator.from_pretrained("acme/tiny", device="cpu")
    assert sep.model_folder.path == snap


def test_output_naming_helpers(tmp_path):
    assert slugify("Dog barking!") == "dog_barking" and slugify("   ") == "query"
    assert output_path(tmp_path, "{track}/{query}.{ext}", "s", "q", "wav") == tmp_path / "s" / "q.wav"
    with pytest.raises(ValueError, match="inside the output folder"):
        output_path(tmp_path, "../{query}.{ext}", "s", "q", "wav")
    with pytest.raises(ValueError, match="unknown field"):
        output_path(tmp_path, "{song}/{query}.{ext}", "s", "q", "wav")
