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
