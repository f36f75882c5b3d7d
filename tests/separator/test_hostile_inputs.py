"""Hostile-but-fair inputs (issue 17): bad files, broken model folders, file-system trouble, signals.

Every case of the fuzz corpus (``tests/fuzz_corpus.py``, made on the fly) has the outcome a user is owed:
valid inputs separate; bad ones fail with one line naming the file and the cause, exit 1, no traceback,
nothing under a final name, no temporary files, no empty output folders, and the batch goes on.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from qsep_core import audio
from qsep_core.config import to_dict
from separator.checkpoint import Component, save_model
from separator.cli import app
from separator.api import track_name
from separator.models import build_from_config, preset
from separator.query.embedding import save_embedding
from tests.fuzz_corpus import audio_corpus, model_corpus

runner = CliRunner()
COND = 16
REPO = Path(__file__).resolve().parents[2]


def flat(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder with a small random-weight separator, a saved condition for it)."""
    torch.manual_seed(0)
    cfg = preset("resunet_film_small", cond_dim=COND)
    root = tmp_path_factory.mktemp("tiny")
    path = root / "sep-model"
    save_model(path, {"separator": Component("query_unet", to_dict(cfg), build_from_config(cfg).state_dict())})
    cond = save_embedding(root / "q.safetensors", torch.randn(COND))
    return path, cond


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def _empty_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]


def _run_corpus(tmp_path: Path, tiny, long: bool) -> Counter:
    model, cond = tiny
    cases = audio_corpus(tmp_path / "in", long=long)
    out = tmp_path / "out"
    args = ["separate", *[str(c.path) for c in cases], "-m", str(model), "-e", str(cond), "-o", str(out), "-q"]
    res = runner.invoke(app, args)
    text = flat(res)
    assert "Traceback" not in res.output
    assert res.exit_code == 1, text  # some inputs are bad, the others were still separated
    counts: Counter = Counter()
    for c in cases:
        track = track_name(c.path)
        target = out / track / "q.wav"
        if c.outcome == "ok":
            assert target.is_file(), f"{c.kind}: {c.path.name} was not separated: {text}"
            mix = audio.info(c.path)
            got = audio.info(target)
            assert (got.frames, got.sample_rate, got.channels) == (mix.frames, mix.sample_rate, mix.channels), c.kind
            assert (out / track / "no_q.wav").is_file()
            counts["separated"] += 1
        else:
            assert str(c.path) in text, f"{c.kind}: no error names {c.path}: {text}"
            assert c.expect in text, f"{c.kind}: expected {c.expect!r} in the errors: {text}"
            assert not target.exists() and not (out / track).exists(), f"{c.kind}: output or folder left"
            counts["refused with its cause"] += 1
    assert _leftovers(tmp_path) == []
    assert _empty_dirs(out) == []
    return counts


@pytest.mark.timeout(300)
def test_fuzz_corpus_fast(tmp_path, tiny, capsys):
    counts = _run_corpus(tmp_path, tiny, long=False)
    with capsys.disabled():
        print(f"\nfuzz corpus (fast): {dict(counts)}")
    assert counts["separated"] >= 11 and counts["refused with its cause"] >= 11


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fuzz_corpus_long(tmp_path, tiny, capsys):
    counts = _run_corpus(tmp_path, tiny, long=True)
    with capsys.disabled():
        print(f"\nfuzz corpus (long): {dict(counts)}")
    assert counts["separated"] >= 35


def _model_cases(tmp_path, tiny, long):
    model, cond = tiny
    src = tmp_path / "in.wav"
    sf.write(src, np.zeros((1600, 1), np.float32), 16000)
    cases = model_corpus(model, tmp_path / "models", long=long)
    for c in cases:
        res = runner.invoke(app, ["separate", str(src), "-m", str(c.path), "-e", str(cond), "-o", str(tmp_path / "o"),
                                  "-q"])
        assert res.exit_code == 1 and "Traceback" not in res.output, f"{c.kind}: {res.output}"
        assert flat(res).startswith("error:") and str(c.path) in flat(res) and c.expect in flat(res), \
            f"{c.kind}: {flat(res)}"
    # one broken model does not stop `qsep models` from listing the others
    res = runner.invoke(app, ["models", str(tmp_path / "models"), str(model), "--json"])
    assert res.exit_code == 0, res.output
    import json

    listed = {e["name"]: e for e in json.loads(res.output)}
    assert listed[model.name]["error"] is None
    assert sum(1 for e in listed.values() if e["error"]) >= len([c for c in cases if c.kind.startswith(("top", "non", "not", "comp"))])
    return len(cases)


def test_broken_model_folders_are_refused_with_their_cause(tmp_path, tiny):
    assert _model_cases(tmp_path, tiny, long=False) >= 15


@pytest.mark.slow
def test_broken_model_folders_long(tmp_path, tiny):
    assert _model_cases(tmp_path, tiny, long=True) >= 25


def test_checkpoint_config_is_checked_before_anything_is_allocated(tmp_path, tiny):
    """A config whose tensors would take > 4 GB fails on the header shapes, without the allocation."""
    import resource

    from separator.checkpoint import CheckpointError, ModelFolder

    model, _ = tiny
    (case,) = [c for c in model_corpus(model, tmp_path / "m") if c.kind == "huge_channels"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="does not fit"):
        ModelFolder(case.path).build("separator")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


# ------------------------------------------------------------------------------------------- data loss

def test_an_output_never_replaces_its_input(tmp_path, tiny):
    model, cond = tiny
    d = tmp_path / "music"
    d.mkdir()
    src = d / "q.wav"  # the query's slug is "q": "{query}.{ext}" in the input's folder is the input itself
    sf.write(src, (0.1 * np.random.default_rng(0).standard_normal((8000, 1))).astype(np.float32), 16000)
    before = src.read_bytes()
    res = runner.invoke(app, ["separate", str(src), "-m", str(model), "-e", str(cond), "-o", str(d),
                              "--filename", "{query}.{ext}", "--overwrite", "-q"])
    assert res.exit_code == 1 and "is the input file itself" in flat(res)
    assert src.read_bytes() == before and _leftovers(tmp_path) == []


def test_same_stems_get_distinct_outputs_and_earlier_outputs_are_not_inputs(tmp_path, tiny):
    model, cond = tiny
    for i, sub in enumerate(("a", "b")):
        (tmp_path / "in" / sub).mkdir(parents=True)
        sf.write(tmp_path / "in" / sub / "song.wav", (0.1 * (i + 1) * np.ones((4000, 1))).astype(np.float32), 16000)
    out = tmp_path / "in" / "separated"  # outputs inside the input folder
    args = ["separate", str(tmp_path / "in"), "-m", str(model), "-e", str(cond), "-o", str(out), "-q"]
    res = runner.invoke(app, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    a, _ = audio.load(out / "song" / "no_q.wav")
    b, _ = audio.load(out / "song_2" / "no_q.wav")
    assert not torch.allclose(a, b)  # two inputs, two sets of outputs: nothing replaced
    res = runner.invoke(app, [*args, "--overwrite"])  # again: the 4 outputs under in/ are not taken as inputs
    assert res.exit_code == 0, res.output
    assert "skipped 4 file(s)" in flat(res)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == [
        "song/no_q.wav", "song/q.wav", "song_2/no_q.wav", "song_2/q.wav"]


def test_outputs_follow_the_umask_and_overwrite_keeps_the_mode(tmp_path, tiny):
    model, cond = tiny
    src = tmp_path / "x.wav"
    sf.write(src, np.zeros((4000, 1), np.float32) + 0.1, 16000)
    old = os.umask(0o002)
    try:
        res = runner.invoke(app, ["separate", str(src), "-m", str(model), "-e", str(cond), "-o", str(tmp_path / "o"), "-q"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    target = tmp_path / "o" / "x" / "q.wav"
    assert (target.stat().st_mode & 0o777) == 0o664
    target.chmod(0o640)
    res = runner.invoke(app, ["separate", str(src), "-m", str(model), "-e", str(cond), "-o", str(tmp_path / "o"), "-q",
                              "--overwrite"])
    assert res.exit_code == 0 and (target.stat().st_mode & 0o777) == 0o640


def test_overlap_limits(tmp_path, tiny):
    model, cond = tiny
    src = tmp_path / "x.wav"
    sf.write(src, np.zeros((4000, 1), np.float32), 16000)
    base = ["separate", str(src), "-m", str(model), "-e", str(cond), "-o", str(tmp_path / "o"), "-q"]
    res = runner.invoke(app, [*base, "--overlap", "0.99"])
    assert res.exit_code == 1 and "100 times" in flat(res) and not (tmp_path / "o").exists()
    res = runner.invoke(app, [*base, "--overlap", "0"])
    assert res.exit_code == 0 and "seams can click" in flat(res)


# ------------------------------------------------------------------------------------------- file system

def test_write_failures_are_named(tmp_path, monkeypatch):
    """libsndfile says "System error." on a full disk; qsep says what it is."""
    import shutil
    from collections import namedtuple

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10, 10, 0))
    with pytest.raises(audio.AudioWriteError, match="no space left"):
        with audio.AudioWriter(tmp_path / "o.wav", 16000, 1) as w:
            w._file.close()  # the next write fails inside libsndfile, as on a full disk
            w.write(torch.zeros(1, 10))
    assert list(tmp_path.iterdir()) == []


def test_embed_out_failures_are_one_line(tmp_path, monkeypatch):
    from separator.query import embedding

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    src = tmp_path / "a.safetensors"
    save_embedding(src, torch.randn(COND))
    monkeypatch.setattr(embedding, "save_file", full)
    res = runner.invoke(app, ["embed", "-e", str(src), "-o", str(tmp_path / "b.safetensors")])
    assert res.exit_code == 1 and "no space left" in flat(res) and "Traceback" not in res.output
    assert _leftovers(tmp_path) == []


def test_unreadable_model_cache_is_skipped(tmp_path, monkeypatch):
    from qsep_core import hub

    real = Path.is_dir

    def deny(self):
        if "denied" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setenv("QSEP_CACHE", str(tmp_path / "denied"))
    monkeypatch.setattr(Path, "is_dir", deny)
    assert hub.resolve_model(None).name == hub.DEFAULT_MODEL  # the shipped model is still found
    assert any(e.name == hub.DEFAULT_MODEL for e in hub.list_models())


# ------------------------------------------------------------------------------------------- numbers

def test_resampler_memory_is_bounded_at_awkward_rates():
    import resource

    x = torch.randn(1, 11127 * 10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    y = audio.resample(x, 11127, 32000)
    assert time.perf_counter() - t0 < 5.0
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 300  # MB (was 7 GB)
    assert y.shape[-1] == math.ceil(x.shape[-1] * 32000 / 11127)
    # a 1 kHz sine stays a 1 kHz sine (compared away from the edges)
    t = torch.arange(7919 * 2) / 7919
    y = audio.resample(torch.sin(2 * math.pi * 1000 * t)[None], 7919, 32000)[0]
    ref = torch.sin(2 * math.pi * 1000 * torch.arange(y.shape[-1]) / 32000)
    mid = slice(2000, -2000)
    err = (y[mid] - ref[mid]).pow(2).mean() / ref[mid].pow(2).mean()
    assert 10 * math.log10(float(err)) < -60


def test_common_rates_keep_the_exact_kernel():
    import torchaudio.functional as AF

    x = torch.randn(2, 4410)
    for orig, new in ((44100, 32000), (48000, 32000), (16000, 32000), (32000, 44100)):
        g = math.gcd(orig, new)
        assert torch.equal(audio.resample(x, orig, new), AF.resample(x, orig // g, new // g))


def test_import_official_random_bytes_does_not_suggest_trust_pickle(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(np.random.default_rng(0).bytes(5000))
    for extra in ([], ["--trust-pickle"]):
        res = runner.invoke(app, ["import-official", "zsass", str(ckpt), "-o", str(tmp_path / "m"), *extra])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert "corrupt, truncated or not a checkpoint" in flat(res) and "re-run with --trust-pickle" not in flat(res)


# ------------------------------------------------------------------------------------------- signals

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "separator.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _wait_for_part(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"finished before it could be killed: {proc.stderr.read().decode()}")
        if folder.exists() and _leftovers(folder):
            return
        time.sleep(0.05)
    raise AssertionError("no temporary output appeared")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_and_terminate_leave_nothing_the_next_run_does_not_clean(tmp_path, tiny):
    model, cond = tiny
    src = tmp_path / "long.wav"
    sf.write(src, (0.1 * np.random.default_rng(0).standard_normal((16000 * 120, 1))).astype(np.float32), 16000)
    out = tmp_path / "out"
    args = _cli("separate", str(src), "-m", str(model), "-e", str(cond), "-o", str(out), "-q")

    # SIGTERM: the run says so, exits 128 + 15, and removes its temporary files itself
    proc = subprocess.Popen(args, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    _wait_for_part(out, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted by SIGTERM" in err, err
    assert "Traceback" not in err
    assert _leftovers(tmp_path) == [] and not list(out.rglob("*.wav"))

    # SIGKILL: nothing can run, so temporaries stay; no final output appears, and the next run removes them
    proc = subprocess.Popen(args, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    _wait_for_part(out, proc)
    proc.kill()
    proc.wait()
    left = _leftovers(tmp_path)
    assert left and not list(out.rglob("*.wav"))
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros((1600, 1), np.float32), 16000)
    # the next run writing the same outputs cleans the dead run's temporaries
    res = subprocess.run(_cli("separate", str(short), "-m", str(model), "-e", str(cond), "-o", str(out), "-q",
                              "--filename", "long/{query}.{ext}"), env=_env(), capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    assert _leftovers(tmp_path) == []
