"""ONNX export (`qsep export --onnx`): onnxruntime agrees with PyTorch within 1e-4 on the waveform, for a tiny random
model and the shipped one; the condition is a graph input; atomic writes and one-line errors."""
from __future__ import annotations


import pytest
import torch
from typer.testing import CliRunner

from qsep_core.checkpoint import Component, save_model
from qsep_core.config import to_dict
from separator.models import QueryUNet, QueryUNetConfig

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the 'onnx' extra)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (the 'onnx' extra)")

from separator.cli import app  # noqa: E402
from separator.export import INPUT_NAMES, OUTPUT_NAMES, TOLERANCE, ExportError, OnnxSeparator, export_onnx  # noqa: E402

COND_DIM = 6


def tiny_model(mask: str = "complex", **changes) -> QueryUNet:
    torch.manual_seed(0)
    cfg = QueryUNetConfig(n_fft=256, hop_length=64, channels=[4, 8], bottleneck=8, cond_dim=COND_DIM, mask=mask, **changes)
    model = QueryUNet(cfg)
    with torch.no_grad():  # non-trivial weights and statistics, so a wrong graph cannot pass by being near-identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.head.weight.normal_(0, 0.5)
        if cfg.cond_norm:
            model.cond_center.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    model = tiny_model(level_norm=True, cond_norm=True)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(model, path)
    return model, path, report


@pytest.mark.slow  # each ONNX export takes ~7-15 s on 2 cores
@pytest.mark.parametrize("batch, seconds", [(1, 0.5), (3, 1.37), (2, 0.004)])
def test_tiny_model_matches_pytorch_on_any_batch_and_length(tiny_export, batch, seconds):
    model, path, report = tiny_export
    assert report.max_abs_diff <= TOLERANCE and report.path == path
    g = torch.Generator().manual_seed(batch)
    mixture = 0.3 * torch.randn(batch, 1, int(seconds * 32000), generator=g)
    condition = torch.randn(batch, COND_DIM, generator=g)
    with torch.no_grad():
        ref = model(mixture, condition)
    got = OnnxSeparator(path)(mixture, condition)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= TOLERANCE
    assert ref.abs().max() > 10 * TOLERANCE  # the comparison is on a signal, not on silence


@pytest.mark.slow  # each ONNX export takes ~7-15 s on 2 cores
def test_condition_is_a_graph_input_that_changes_the_output(tiny_export):
    model, path, _ = tiny_export
    sep = OnnxSeparator(path)
    assert [i.name for i in sep.session.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sep.session.get_outputs()] == list(OUTPUT_NAMES)
    assert sep.session.get_inputs()[2].shape[1] == COND_DIM
    mixture = 0.3 * torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(5))
    a = sep(mixture, torch.ones(1, COND_DIM))
    b = sep(mixture, -torch.ones(1, COND_DIM))
    assert (a - b).abs().max() > 1e-3
    assert sep.config == model.config  # the config travels in the file's metadata


@pytest.mark.slow  # each ONNX export takes ~7-15 s on 2 cores
def test_magnitude_mask_model_matches(tmp_path):
    model = tiny_model(mask="magnitude")
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.max_abs_diff <= TOLERANCE


@pytest.mark.slow
def test_shipped_model_matches_pytorch(tmp_path):
    from qsep_core.hub import resolve_model
    from separator.checkpoint import ModelFolder

    model = ModelFolder(resolve_model(None)).build("separator").eval()
    path = tmp_path / "starter.onnx"
    report = export_onnx(None, path)
    g = torch.Generator().manual_seed(3)
    mixture = 0.1 * torch.randn(2, 1, 5 * 32000 + 17, generator=g)
    condition = torch.randn(2, model.config.cond_dim, generator=g)
    with torch.no_grad():
        ref = model(mixture, condition)
    got = OnnxSeparator(path)(mixture, condition)
    assert report.max_abs_diff <= TOLERANCE
    assert (got - ref).abs().max() <= TOLERANCE and ref.abs().max() > 1e-2


@pytest.mark.slow  # each ONNX export takes ~7-15 s on 2 cores
def test_cli_export_refuses_overwrite_and_bad_opset(tmp_path):
    model = tiny_model()
    folder = save_model(tmp_path / "tiny", {"separator": Component("query_unet", to_dict(model.config), model.state_dict())})
    out = tmp_path / "out.onnx"
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--onnx", str(out), "--model", str(folder)])
    assert res.exit_code == 0, res.output
    assert "max abs difference" in res.output and out.is_file()
    before = out.read_bytes()
    res = runner.invoke(app, ["export", "--onnx", str(out), "--model", str(folder)])
    assert res.exit_code == 1 and "--overwrite" in res.output and "Traceback" not in res.output
    assert out.read_bytes() == before
    res = runner.invoke(app, ["export", "--onnx", str(tmp_path / "x.onnx"), "--model", str(folder), "--opset", "12"])
    assert res.exit_code == 1 and "--opset 12" in res.output and not (tmp_path / "x.onnx").exists()
    res = runner.invoke(app, ["export", "--onnx", str(tmp_path / "x.onnx"), "--model", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "nope" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["export", "--onnx", str(tmp_path / "no_dir" / "x.onnx"), "--model", str(folder)])
    assert res.exit_code == 1 and "does not exist" in res.output
    res = runner.invoke(app, ["export", "--onnx", str(out), "--model", str(folder), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.slow  # each ONNX export takes ~7-15 s on 2 cores
def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    import separator.export as ex

    monkeypatch.setattr(ex, "compare", lambda *a, **k: 1.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(tiny_model(), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_extra_is_named(monkeypatch):
    import builtins

    from qsep_core.extras import MissingExtraError

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    with pytest.raises(MissingExtraError, match=r"'onnx' extra"):
        OnnxSeparator("whatever.onnx")


def test_not_a_qsep_export_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ExportError, match="not a qsep ONNX export"):
        OnnxSeparator(path)
