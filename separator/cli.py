"""The ``qsep`` command line: a thin typer layer over the API, the training entry points and recipes.

Every command parses its options, calls core code, and reports. No logic lives
here that the Python API lacks.
"""
from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(
    name="qsep",
    help="Query-based universal audio source separation: name a sound (text, example audio or label), get it out of a mixture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train a model (SED, separator, text projection) from a YAML config.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate separation: MUSDB18 (SiSEC18 or ZS-ASS protocol) and query mixtures.", no_args_is_help=True)
import_app = typer.Typer(help="Convert official HTS-AT / ZS-ASS Lightning checkpoints to qsep model folders.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(import_app, name="import-official")

console = Console(stderr=True)
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error a user can act on and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def not_built(command: str) -> NoReturn:
    """Say plainly that a command exists in the design but is not implemented in this version."""
    fail(f"`qsep {command}` is not built yet in this version of qsep (see README, 'What works').", code=3)


def _version_callback(value: bool) -> None:
    if value:
        from separator.checkpoint import qsep_version

        typer.echo(f"qsep {qsep_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Query-based universal audio source separation."""


@app.command(context_settings=_PASSTHROUGH)
def separate(ctx: typer.Context) -> None:
    """Separate the queried sound from audio files (text, audio-example or label queries)."""
    not_built("separate")


@app.command(context_settings=_PASSTHROUGH)
def detect(ctx: typer.Context) -> None:
    """Detect sound events in files with an HTS-AT model (label, start, end, confidence)."""
    not_built("detect")


@app.command(context_settings=_PASSTHROUGH)
def embed(ctx: typer.Context) -> None:
    """Encode a query (text, audio files or label) into a condition vector file."""
    not_built("embed")


@app.command(context_settings=_PASSTHROUGH)
def mine(ctx: typer.Context) -> None:
    """Mine anchor segments from weakly labeled clips with a sound event detector."""
    not_built("mine")


@app.command(context_settings=_PASSTHROUGH)
def models(ctx: typer.Context) -> None:
    """List the models qsep can find (shipped default and user folders)."""
    not_built("models")


@train_app.command("sed", context_settings=_PASSTHROUGH)
def train_sed(ctx: typer.Context) -> None:
    """Train an HTS-AT sound event detector on weakly labeled clips."""
    not_built("train sed")


@train_app.command("separator", context_settings=_PASSTHROUGH)
def train_separator(ctx: typer.Context) -> None:
    """Train a query-conditioned separator on mined segments."""
    not_built("train separator")


@train_app.command("text-projection", context_settings=_PASSTHROUGH)
def train_text_projection(ctx: typer.Context) -> None:
    """Train the projection from text embeddings into the audio latent space."""
    not_built("train text-projection")


@evaluate_app.command("musdb", context_settings=_PASSTHROUGH)
def evaluate_musdb(ctx: typer.Context) -> None:
    """Evaluate on MUSDB18 / MUSDB18-HQ (SiSEC18 or ZS-ASS protocol)."""
    not_built("evaluate musdb")


@evaluate_app.command("mixtures", context_settings=_PASSTHROUGH)
def evaluate_mixtures(ctx: typer.Context) -> None:
    """Evaluate on seeded two-source mixtures of a weak-label corpus (seen and held-out classes)."""
    not_built("evaluate mixtures")


@import_app.command("htsat", context_settings=_PASSTHROUGH)
def import_htsat(ctx: typer.Context) -> None:
    """Import an official HTS-AT AudioSet checkpoint (prefix `sed_model.`)."""
    not_built("import-official htsat")


@import_app.command("zsass-sed", context_settings=_PASSTHROUGH)
def import_zsass_sed(ctx: typer.Context) -> None:
    """Import the ST-SED query encoder inside a ZS-ASS checkpoint (prefix `at_model.sed_model.`)."""
    not_built("import-official zsass-sed")


@import_app.command("zsass", context_settings=_PASSTHROUGH)
def import_zsass(ctx: typer.Context) -> None:
    """Import an official ZS-ASS checkpoint (separator + 2048-d query encoder)."""
    not_built("import-official zsass")


def main() -> None:
    """Console entry point (``qsep``)."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
