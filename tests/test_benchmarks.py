"""The benchmark harness (not its numbers): reports, plots, peak memory, a tiny SED measurement."""
from __future__ import annotations

import json

import pytest

from benchmarks import common


def test_peak_rss_is_the_child_process_own_and_grows():
    """A worker reports its own peak, not the parent's (ru_maxrss would inherit it through fork + exec)."""
    import subprocess
    import sys

    import numpy as np

    parent_block = np.ones(256 * 2**20 // 8)  # the parent now peaks >= 256 MB above a bare interpreter
    code = ("import numpy as np; from benchmarks.common import peak_rss_mb as p; a = p(); "
            "b = np.ones(64 * 2**20 // 8); print(a, p())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert 0 < before < common.peak_rss_mb() - 200  # not the parent's high-water mark
    assert after - before > 40  # 64 MB touched
    del parent_block


def test_report_writes_json_and_markdown(tmp_path):
    rows = [{"preset": "a", "rtf": 12.345, "peak_rss_mb": 1234.5}, {"preset": "b", "error": "boom"}]
    md = common.write_report(tmp_path, "x", rows, [("preset", "model"), ("rtf", "x rt"), ("error", "error")])
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["rows"] == rows and data["machine"]["threads"] >= 1
    text = md.read_text()
    assert "| a | 12.3 |" in text and "| b |  | boom |" in text


def test_separation_combine_plots_earlier_results(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import separation

    rows = [{"preset": p, "seconds": s, "rtf": r, "peak_rss_mb": m}
            for p, s, r, m in (("small", 10, 50.0, 700.0), ("small", 180, 55.0, 705.0), ("htdemucs", 60, 2.0, 1600.0))]
    (tmp_path / "a.json").write_text(json.dumps({"machine": {}, "rows": rows}))
    separation.main(["--combine", str(tmp_path / "a.json"), "--out", str(tmp_path), "--name", "plot"])
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_sed_measure_tiny_preset():
    from benchmarks.sed_throughput import measure

    row = measure("tiny", 2, "cpu", "float32", repeats=1)
    assert row["clips_per_s"] > 0 and row["batch"] == 2 and row["peak_rss_mb"] > 0
