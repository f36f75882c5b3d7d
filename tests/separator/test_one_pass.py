"""All queries of a file in one pass: outputs equal one-query runs (<= 1e-5), the file is read once,
a query whose output cannot be written fails alone; threads and full-band options of the Separator."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qsep_core import audio
from qsep_core.config import to_dict
from separator.api import Separator
from separator.batch import SeparationJob, run_jobs
from separator.checkpoint import Component, save_model
from separator.models import QueryUNet, QueryUNetConfig

COND_DIM = 6


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = QueryUNet(QueryUNetConfig(n_fft=256, hop_length=64, channels=[4, 8], bottleneck=8, cond_dim=COND_DIM,
                                      mask="complex", level_norm=True))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("models") / "tiny"
    return save_model(path, {"separator": Component("query_unet", to_dict(model.config), model.state_dict())})


@pytest.fixture
def sep(folder):
    return Separator.from_pretrained(folder, segment=0.25, overlap=0.25, batch_size=2, threads=1)


def conds(n: int = 3) -> torch.Tensor:
    return torch.randn(n, COND_DIM, generator=torch.Generator().manual_seed(3))


def test_forward_queries_equals_forward_per_query(sep):
    x = 0.3 * torch.randn(3, 1, 8000, generator=torch.Generator().manual_seed(1))
    c = conds()
    with torch.inference_mode():
        many = sep.model.forward_queries(x, c)  # (3, Q, 1, T)
        for q in range(c.shape[0]):
            one = sep.model(x, c[q].expand(3, -1))
            assert (many[:, q] - one).abs().max() <= 1e-5


@pytest.mark.parametrize("rate,shape", [(44100, (2, 30000)), (32000, (7919,)), (48000, (1, 500))])
def test_separate_conditions_equals_one_query_runs(sep, rate, shape):
    x = 0.3 * torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    c = conds()
    results = sep.separate_conditions(x, rate, c)
    assert len(results) == 3
    for q, res in enumerate(results):
        one = sep.separate_condition(x, rate, c[q])
        assert res.target.shape == x.shape
        assert (res.target - one.target).abs().max() <= 1e-5
        assert (res.residual - one.residual).abs().max() <= 1e-5


def test_file_read_once_for_every_query_and_equal_to_one_query_files(sep, tmp_path, monkeypatch):
    src = tmp_path / "song.wav"
    audio.save(src, 0.3 * torch.randn(2, 44100, generator=torch.Generator().manual_seed(4)), 44100, bit_depth="32f")
    c = conds()
    singles = {}
    for q in range(3):
        out = sep.separate_file(src, tmp_path / "single", condition=c[q], name=f"q{q}", bit_depth="32f")
        singles[q] = out
    opened = []
    real_reader = audio.AudioReader

    class CountingReader(real_reader):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(audio, "AudioReader", CountingReader)
    many = sep.separate_file_queries(src, {f"q{q}": c[q] for q in range(3)}, out_dir=tmp_path / "many", bit_depth="32f")
    assert len(opened) == 1  # one pass over the input for three queries
    for q in range(3):
        for kind in ("target", "residual"):
            a, _ = audio.load(many[f"q{q}"][kind])
            b, _ = audio.load(singles[q][kind])
            assert (a - b).abs().max() <= 1e-5


def test_batch_existing_output_fails_alone(sep, tmp_path):
    src = tmp_path / "song.wav"
    audio.save(src, 0.3 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(5)), 16000)
    from separator.query.compose import ConditionResult

    c = conds(2)
    conditions = {name: ConditionResult(condition=c[i], query=None, positives=[]) for i, name in enumerate(["a", "b"])}
    out = tmp_path / "out"
    (out / "song").mkdir(parents=True)
    (out / "song" / "a.wav").write_bytes(b"keep me")
    results = run_jobs(sep, [src], conditions, SeparationJob(out_dir=out))
    by_query = {r.query: r for r in results}
    assert "exists" in by_query["a"].error and by_query["b"].error is None
    assert (out / "song" / "a.wav").read_bytes() == b"keep me"
    assert (out / "song" / "b.wav").exists() and (out / "song" / "no_b.wav").exists()


def test_threads_apply_during_the_call_only(folder):
    seen = []
    sep = Separator.from_pretrained(folder, segment=0.25, threads=2)
    hook = sep.model.register_forward_pre_hook(lambda m, args: seen.append(torch.get_num_threads()))
    sep.separate_condition(torch.zeros(1, 8000), 16000, conds(1)[0])
    hook.remove()
    assert seen and set(seen) == {2} and torch.get_num_threads() == 1  # the fixture's count is back
    with pytest.raises(ValueError, match="threads"):
        Separator.from_pretrained(folder, threads=0)


def test_full_band_option(folder):
    """With full_band the target carries content above 16 kHz at 44.1 kHz; without it none (the old behaviour)."""
    g = torch.Generator().manual_seed(6)
    x = 0.3 * torch.randn(1, 44100, generator=g)
    c = conds(1)[0]
    hi = lambda y: torch.fft.rfft(y).abs().pow(2)[..., torch.fft.rfftfreq(y.shape[-1], 1 / 44100) > 17000].sum()  # noqa: E731
    old = Separator.from_pretrained(folder, threads=1).separate_condition(x, 44100, c)  # the default: model band
    new = Separator.from_pretrained(folder, full_band=True, threads=1).separate_condition(x, 44100, c)
    # without: only chunk-taper and resampler leakage above 17 kHz (-23 dB here); with: the target's share
    assert hi(old.target) < 1e-2 * hi(x)
    assert hi(new.target) > 10 * hi(old.target)
    assert torch.allclose(new.target + new.residual, x, atol=1e-6)


def test_cli_import_pulls_in_no_torch():
    """`qsep --help` stays fast: importing the CLI imports neither torch nor transformers."""
    code = ("import sys, separator.cli; bad = [m for m in ('torch', 'transformers', 'numpy', 'soundfile') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_bad_threads_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from separator.cli import app

    src = tmp_path / "a.wav"
    audio.save(src, torch.zeros(1, 1600), 16000)
    res = CliRunner().invoke(app, ["separate", str(src), "--label", "Dog", "--threads", "zero", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "--threads" in res.output and "Traceback" not in res.output
