"""configs/*.yaml: each loads into its dataclass and sets only fields that differ from the defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from qsep_core.config import load_config, load_yaml, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _dataclass(name: str):
    if name.startswith("mine_"):
        from sed.mining import MiningConfig

        return MiningConfig
    if name.startswith("sed_"):
        from sed.train import SEDTrainingConfig

        return SEDTrainingConfig
    if name.startswith("separator_"):
        from separator.train import SeparatorTrainingConfig

        return SeparatorTrainingConfig
    if name.startswith("text_projection"):
        from separator.query.train import TextProjectionTrainConfig

        return TextProjectionTrainConfig
    raise AssertionError(f"configs/{name}: no config dataclass is known for this file name")


def _restated(given: dict, defaults: dict, where: str = "") -> list[str]:
    out = []
    for key, value in given.items():
        dflt = defaults.get(key)
        if isinstance(value, dict) and isinstance(dflt, dict) and value:
            out += _restated(value, dflt, f"{where}{key}.")
        elif value == dflt or (isinstance(value, list) and list(value) == list(dflt or [])):
            out.append(f"{where}{key}")
    return out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_sets_only_what_differs_from_the_defaults(path):
    cls = _dataclass(path.name)
    load_config(cls, path)  # every field exists and is valid
    assert path.read_text().startswith("#"), f"{path.name}: start with a comment saying what the file is for"
    restated = _restated(load_yaml(path), to_dict(cls()))
    assert not restated, f"{path.name} restates the defaults of {cls.__name__}: {restated}"
