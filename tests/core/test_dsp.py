import pytest
import torch

from qsep_core.audio import AudioReader, AudioWriter, load, save
from qsep_core.dsp import StftConfig, chunked_apply, chunked_apply_stream, istft, magphase, plan_chunks, stft, taper_window


@pytest.mark.parametrize("shape", [(1000,), (3, 4097), (2, 2, 32000), (1, 1, 321)])
@pytest.mark.parametrize("cfg", [StftConfig(2048, 320), StftConfig(1024, 256), StftConfig(512, 128, window="hamming")])
def test_stft_round_trip(shape, cfg):
    if shape[-1] <= cfg.n_fft // 2:
        pytest.skip("reflect padding needs more samples than n_fft // 2")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    spec = stft(x, cfg)
    assert spec.shape == (*shape[:-1], cfg.n_bins, cfg.frames(shape[-1]))
    y = istft(spec, cfg, length=shape[-1])
    assert y.shape == x.shape
    assert float((y - x).abs().max()) < 1e-6 * max(1.0, float(x.abs().max()))


def test_magphase_silence_is_finite():
    spec = stft(torch.zeros(2, 4000), StftConfig(1024, 256))
    mag, cos, sin = magphase(spec)
    assert torch.isfinite(cos).all() and torch.isfinite(sin).all() and mag.abs().max() == 0


SEG = 1000


@pytest.mark.parametrize("length", [1, SEG - 1, SEG, SEG + 1, int(10.5 * SEG)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("batch_size", [1, 7])
@pytest.mark.parametrize("taper", ["hann", "triangle"])
def test_identity_through_chunks(length, overlap, batch_size, taper):
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    y = chunked_apply(lambda c: c.clone(), x, SEG, overlap, batch_size, taper)
    assert y.shape == x.shape
    assert float((y - x).abs().max()) < 1e-6


def test_chunks_cover_everything_and_fn_sees_fixed_length():
    seen = []

    def fn(c):
        seen.append(tuple(c.shape))
        return c * 2

    x = torch.randn(1, 3, 2501)
    y = chunked_apply(fn, x, 1000, 0.25, batch_size=2)
    assert torch.allclose(y, 2 * x, atol=1e-6)
    assert all(s[1:] == (1, 3, 1000) for s in seen)
    plan = plan_chunks(2501, 1000, 0.25)
    assert plan.starts == (0, 750, 1500, 2250) and plan.starts[-1] + plan.segment >= 2501


def test_output_leading_dims_may_change():
    x = torch.randn(2, 5000)
    y = chunked_apply(lambda c: torch.stack([c, -c], dim=1), x, 1024, 0.5, batch_size=3)
    assert y.shape == (2, 2, 5000)
    assert torch.allclose(y[0], x, atol=1e-6) and torch.allclose(y[1], -x, atol=1e-6)


def test_overlap_add_actually_blends_chunks():
    # fn adds the chunk's start-dependent constant; in overlaps the result must be a weighted blend, not a copy
    calls = {"n": 0}

    def fn(c):
        out = torch.zeros_like(c)
        for i in range(c.shape[0]):
            out[i] = calls["n"]
            calls["n"] += 1
        return out

    y = chunked_apply(fn, torch.zeros(1, 1500), 1000, 0.5, batch_size=1, taper="linear")
    assert float(y[0, 0]) == pytest.approx(0.0)
    assert float(y[0, -1]) == pytest.approx(1.0, abs=1e-6)
    mid = y[0, 500:1000]
    assert float(mid.min()) > 0.0 and float(mid.max()) < 1.0  # cross-fade between chunk 0 and 1
    assert torch.all(mid[1:] >= mid[:-1] - 1e-7)


def test_taper_windows():
    for kind in ("hann", "linear", "triangle", "rect"):
        w = taper_window(100, 25, kind)
        assert w.shape == (100,) and float(w.min()) > 0
    w = taper_window(100, 25, "hann")
    assert torch.allclose(w[:25] + w[75:], torch.ones(25))  # complementary ramps
    with pytest.raises(ValueError, match="unknown taper"):
        taper_window(10, 2, "kaiser")


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        chunked_apply(lambda c: c, torch.zeros(1, 0), 10)
    with pytest.raises(ValueError, match="overlap"):
        chunked_apply(lambda c: c, torch.zeros(1, 10), 10, overlap=1.0)
    with pytest.raises(ValueError, match="keep the chunk count and length"):
        chunked_apply(lambda c: c[..., :-1], torch.zeros(1, 100), 10)


@pytest.mark.parametrize("length", [1, 999, 1000, 10500])
def test_streaming_equals_in_memory(tmp_path, length):
    x = torch.rand(2, length, generator=torch.Generator().manual_seed(5)) - 0.5

    def fn(c):  # a non-trivial, position-independent chunk function
        return torch.tanh(3 * c) * 0.5

    ref = chunked_apply(fn, x, 1000, 0.25, batch_size=3)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    save(src, x, 16000, bit_depth="32f")
    with AudioReader(src) as r, AudioWriter(dst, 16000, 2, bit_depth="32f") as w:
        assert torch.equal(r.read(), x)
        blocks = []

        def write(b):
            blocks.append(b.shape[-1])
            w.write(b)

        chunked_apply_stream(fn, r.read, write, r.frames, 1000, 0.25, batch_size=3)
    y, _ = load(dst)
    assert torch.equal(y, ref)
    assert sum(blocks) == length and max(blocks) <= 3 * 750 + 1000  # bounded working set
