"""qsep_core.checkpoint on its own: the builder table is the caller's, the core knows no model family."""
from __future__ import annotations

import pytest
import torch

from qsep_core.checkpoint import CheckpointError, Component, ModelFolder, save_model


def _linear(config: dict) -> torch.nn.Module:
    return torch.nn.Linear(config["n"], 1)


def test_builders_come_from_the_caller(tmp_path):
    net = _linear({"n": 3})
    path = save_model(tmp_path / "m", {"net": Component("linear", {"n": 3}, net.state_dict())})
    with pytest.raises(CheckpointError, match="unknown component kind 'linear'"):
        ModelFolder(path).build("net")  # no table given: nothing can be built
    built = ModelFolder(path, builders={"linear": _linear}).build("net")
    assert torch.equal(built.weight, net.weight)
    with pytest.raises(CheckpointError, match="unknown kind 'linear'"):
        save_model(tmp_path / "m2", {"net": Component("linear", {"n": 3}, net.state_dict())}, kinds={"htsat"})


def test_the_full_table_lives_in_the_domain_packages():
    import sed
    from separator.checkpoint import BUILDERS

    assert set(sed.COMPONENT_BUILDERS) <= set(BUILDERS)
    assert {"query_unet", "htsat", "text_projection", "label_bank"} <= set(BUILDERS)
