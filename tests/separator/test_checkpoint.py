import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from separator import checkpoint
from separator.checkpoint import CheckpointError, Component, ModelFolder, load_strict, save_model
from qsep_core.config import ConfigError, from_dict, from_yaml, override, to_dict


class Tiny(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.lin = nn.Linear(3, width)
        self.bn = nn.BatchNorm1d(width)


@pytest.fixture
def tiny_builder(monkeypatch):
    monkeypatch.setitem(checkpoint.BUILDERS, "tiny_test", f"{__name__}:build_tiny")


def build_tiny(cfg):
    return Tiny(**cfg)


def test_round_trip(tmp_path, tiny_builder):
    m = Tiny(5)
    path = save_model(tmp_path / "model", {"net": Component("tiny_test", {"width": 5}, m.state_dict())}, metadata={"sample_rate": 32000})
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format"] == "qsep-model" and cfg["format_version"] == checkpoint.FORMAT_VERSION
    assert "qsep_version" in cfg
    folder = ModelFolder(path)
    assert folder.metadata == {"sample_rate": 32000}
    loaded = folder.build("net")
    assert not loaded.training
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_builder):
    sd = Tiny(4).state_dict()
    sd.pop("lin.bias")
    sd["extra.weight"] = torch.zeros(1)
    save_model(tmp_path / "m", {"net": Component("tiny_test", {"width": 4}, sd)})
    with pytest.raises(CheckpointError, match=r"missing keys \[lin.bias\].*unexpected keys \[extra.weight\]"):
        ModelFolder(tmp_path / "m").build("net")


def test_shape_mismatch_is_named(tmp_path, tiny_builder):
    save_model(tmp_path / "m", {"net": Component("tiny_test", {"width": 4}, Tiny(6).state_dict())})
    with pytest.raises(CheckpointError, match=r"lin.weight: file \(6, 3\) vs model \(4, 3\)"):
        ModelFolder(tmp_path / "m").build("net")


def test_load_strict_direct():
    with pytest.raises(CheckpointError, match="missing keys"):
        load_strict(Tiny(), {})


def test_refuses_overwrite_and_replaces_atomically(tmp_path, tiny_builder):
    comps = {"net": Component("tiny_test", {"width": 4}, Tiny(4).state_dict())}
    save_model(tmp_path / "m", comps)
    with pytest.raises(CheckpointError, match="exists"):
        save_model(tmp_path / "m", comps)
    save_model(tmp_path / "m", {"net": Component("tiny_test", {"width": 2}, Tiny(2).state_dict())}, overwrite=True)
    assert ModelFolder(tmp_path / "m").component_config("net") == {"width": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_bad_folders(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ModelFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        ModelFolder(tmp_path / "empty")
    ck = tmp_path / "x.ckpt"
    ck.write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="import-official"):
        ModelFolder(ck)


def test_newer_format_version_is_refused(tmp_path, tiny_builder):
    p = save_model(tmp_path / "m", {"net": Component("tiny_test", {"width": 4}, Tiny(4).state_dict())})
    cfg = json.loads((p / "config.json").read_text())
    cfg["format_version"] = checkpoint.FORMAT_VERSION + 1
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="newer than this qsep"):
        ModelFolder(p)


def test_unknown_kind():
    with pytest.raises(CheckpointError, match="unknown kind"):
        save_model("/tmp/never", {"x": Component("nope", {}, {})})


@dataclass
class Inner:
    a: int = 1
    b: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)


def test_config_round_trip_and_yaml_override(tmp_path):
    cfg = Outer()
    assert from_dict(Outer, to_dict(cfg)) == cfg
    y = tmp_path / "c.yaml"
    y.write_text("lr: 1\ninner:\n  b: [3, 4, 5]\n")
    new = from_yaml(cfg, y)
    assert new.lr == 1.0 and isinstance(new.lr, float)
    assert new.inner == Inner(1, (3, 4, 5)) and new.name == "x"
    with pytest.raises(ConfigError, match=r"unknown field 'lrr'"):
        override(cfg, {"lrr": 2})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['c'\]"):
        from_dict(Inner, {"c": 1})


@dataclass
class Numbers:
    lr: float = 1e-3
    wd: float | None = None


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    y = tmp_path / "n.yaml"
    y.write_text("lr: 3e-4\nwd: 1e-2\n")  # YAML 1.1 reads these as strings
    cfg = from_yaml(Numbers(), y)
    assert cfg.lr == 3e-4 and cfg.wd == 1e-2
    with pytest.raises(ConfigError, match="expected a number"):
        from_dict(Numbers, {"lr": "fast"})


def test_safetensors_reader_matches_safetensors(tmp_path):
    """The mmap-free reader returns what safetensors wrote, for every dtype and for empty / 0-d tensors."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g), "bf16": torch.randn(4, generator=g).bfloat16(),
        "f16": torch.randn(2, 2, generator=g).half(), "i64": torch.tensor(7), "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3), "u8": torch.arange(10, dtype=torch.uint8),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"a": "b"})
    with checkpoint.SafetensorsReader(path) as r:
        assert sorted(r.keys()) == sorted(tensors)
        for k, v in tensors.items():
            got = r.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k


def test_safetensors_reader_names_a_truncated_file(tmp_path, tiny_builder):
    folder = save_model(tmp_path / "m", {"net": Component("tiny_test", {"width": 4}, Tiny(4).state_dict())})
    weights = folder / checkpoint.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ModelFolder(folder).build("net")
    weights.write_bytes(b"\x05")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        checkpoint.SafetensorsReader(weights)


def test_load_config_layers_defaults_yaml_and_overrides(tmp_path):
    """One loader for every training config: defaults <- YAML <- KEY=VALUE or dotted/nested overrides."""
    from qsep_core.config import load_config, nested_overrides

    @dataclass
    class Inner:
        a: int = 1
        b: float = 2.0

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        free: dict = field(default_factory=dict)
        lr: float = 1e-3

    (tmp_path / "c.yaml").write_text("inner:\n  a: 5\nfree:\n  x: 1\n")
    cfg = load_config(Outer, tmp_path / "c.yaml", ["inner.b=3e-1", "free.y=[1, 2]", "lr=1e-4"])
    assert cfg == Outer(Inner(5, 0.3), {"x": 1, "y": [1, 2]}, 1e-4)
    assert load_config(Outer, None, {"inner": {"b": 4}, "inner.a": 7}).inner == Inner(7, 4.0)
    assert nested_overrides({"a.b.c": 1, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}
    with pytest.raises(ConfigError, match=r"c\.yaml.*bogus"):
        load_config(Outer, tmp_path / "c.yaml", ["inner.bogus=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        nested_overrides(["lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Outer, None, {"lr": 1, "lr.x": 2})
