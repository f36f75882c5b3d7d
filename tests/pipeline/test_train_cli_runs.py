"""`qsep train separator` as a scheduler sees it: SIGTERM, reruns, other data, log files (issue 16)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .fakes import tiny_unet_overrides, write_synthetic_manifest

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    cfg = {"model": tiny_unet_overrides(), "batch_size": 4, "epoch_size": 8, "max_epochs": 200, "lr": 1e-2,
           "accelerator": "cpu", "devices": 1, "log_every_n_steps": 2, "checkpoint_every_n_steps": 1000,
           "mixing": {"val_size": 4, "val_fraction": 0.0}}
    path = tmp_path / "sep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _qsep(args, cwd, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "separator.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_a_rerun_resumes_then_finishes(tmp_path):
    manifest = write_synthetic_manifest(tmp_path, per_class=4, seconds=0.25, extra_multi_label=False)
    cfg = _config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["train", "separator", "--config", str(cfg), "--manifest", str(manifest), "--out", str(tmp_path / "run")]
    proc = _qsep(args, cwd=elsewhere)
    log_path = tmp_path / "stderr.log"
    lines: list[str] = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # a log file, not a terminal: plain progress lines
        lines.append(line)
        if line.startswith("step ") and " | " in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline
    out, err = proc.communicate(timeout=240)
    log_path.write_text("".join(lines) + err)
    text = log_path.read_text() + out
    assert proc.returncode == 143, text
    assert "training into" in text and "data:" in text and "placement: accelerator cpu" in text
    assert "Epoch" not in text and "Tip" not in text  # no progress-bar frames, no Lightning tips
    assert "stopped by SIGTERM at step" in text and "rerun the same command to resume from step" in text
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["state"] == "interrupted" and state["global_step"] > 0
    step = state["global_step"]

    short = ["--max-steps", str(step + 2)]
    proc = _qsep(args + short, cwd=elsewhere)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert f"resuming from step {step}" in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["state"] == "finished"
    proc = _qsep(args + short, cwd=elsewhere)  # the same command again: complete, exit 0
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "already complete" in err, err

    other = write_synthetic_manifest(tmp_path / "other", per_class=5, seconds=0.25, extra_multi_label=False)
    proc = _qsep(["train", "separator", "--config", str(cfg), "--manifest", str(other), "--out", str(tmp_path / "run")] + short,
                 cwd=elsewhere)
    out, err = proc.communicate(timeout=240)
    said = " ".join((out + err).split())
    assert proc.returncode == 1 and "holds another run" in said and "data.segments: 12 -> 15" in said, said
    assert "Traceback" not in out + err
