import subprocess
import sys

from typer.testing import CliRunner

from separator.cli import app

runner = CliRunner()


def test_help_lists_command_groups():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("separate", "detect", "embed", "train", "mine", "evaluate", "import-official", "models"):
        assert cmd in res.output


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("qsep ")


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "separator.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "separate" in out.stdout


def test_one_import_command_per_importer_and_every_importer_resolves():
    from separator.importers import IMPORTERS, importer

    res = runner.invoke(app, ["import-official", "--help"])
    assert res.exit_code == 0
    for imp in IMPORTERS:
        assert imp.name in res.output
        assert callable(imp.load())
        assert importer(imp.name) is imp
    import pytest

    with pytest.raises(KeyError, match="choose one of"):
        importer("nope")


def test_help_states_the_shared_defaults():
    from qsep_core.constants import ANCHOR_SECONDS
    from separator.defaults import DEFAULT_OVERLAP, DEFAULT_SEGMENT

    wide = {"COLUMNS": "400"}  # one help line per option
    sep = " ".join(runner.invoke(app, ["separate", "--help"], env=wide).output.split())
    assert f"default {DEFAULT_SEGMENT:g}" in sep and f"default {DEFAULT_OVERLAP:g}" in sep
    mine = " ".join(runner.invoke(app, ["mine", "--help"], env=wide).output.split())
    assert f"else {ANCHOR_SECONDS:g}" in mine  # the --config value, else the built-in default
