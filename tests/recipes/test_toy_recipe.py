"""The toy recipe's README commands, run as written (training shortened), from a folder outside the checkout."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.test_docs import fenced_lines

REPO = Path(__file__).resolve().parents[2]
README = REPO / "recipes" / "toy" / "README.md"
#: fewer steps than the recipe, so the test takes about a minute; everything else is the README's command
SHORTEN = {("train", "sed"): ["--max-steps", "30"], ("train", "separator"): ["--max-steps", "30"],
           ("train", "text-projection"): ["--steps", "40"]}


def readme_commands() -> list[list[str]]:
    cmds = []
    for line in fenced_lines(README):
        tokens = shlex.split(line, comments=True)
        if tokens and tokens[0] in ("python", "qsep"):
            cmds.append(tokens)
    return cmds


def test_the_readme_lists_the_whole_chain():
    subcommands = [tuple(c[1:3]) if c[0] == "qsep" else ("build",) for c in readme_commands()]
    assert subcommands == [("build",), ("train", "sed"), ("mine", "--config"), ("train", "separator"),
                           ("train", "text-projection"), ("separate", "toy/audio/test/clip_0000.wav"),
                           ("evaluate", "mixtures")]


@pytest.mark.slow
def test_toy_recipe_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for tokens in readme_commands():
        if tokens[0] == "python":
            argv = [sys.executable] + tokens[1:]
        else:
            argv = [sys.executable, "-m", "separator.cli"] + tokens[1:] + SHORTEN.get(tuple(tokens[1:3]), [])
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{' '.join(tokens)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    mix, rate = sf.read(tmp_path / "toy" / "audio" / "test" / "clip_0000.wav")
    target, r1 = sf.read(tmp_path / "separated_toy" / "clip_0000" / "hum.wav")
    residual, r2 = sf.read(tmp_path / "separated_toy" / "clip_0000" / "no_hum.wav")
    assert rate == r1 == r2 and target.shape == mix.shape
    assert abs(target + residual - mix).max() < 2e-4  # 16-bit outputs: the mixture to rounding
    results = json.loads((tmp_path / "runs" / "toy_eval" / "results_toy_sep_label.json").read_text())
    assert results["per_class"]["chirp"]["held_out"] is True
    assert set(results["per_class"]) == {"beep", "hum", "hiss", "knock", "trill", "chirp"}
    model = json.loads((tmp_path / "runs" / "toy_sep" / "model" / "config.json").read_text())
    assert {"separator", "audio_encoder", "text_projection", "label_bank"} <= set(model["components"])
