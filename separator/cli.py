"""The ``qsep`` command line: a thin typer layer over the API, the training entry points and recipes.

Every command parses its options, calls core code, and reports. No logic lives
here that the Python API lacks.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from qsep_core.constants import ANCHOR_SECONDS
from qsep_core.text import plural
from qsep_core.threads import THREADS_HELP
from separator.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FILENAME, DEFAULT_OVERLAP, DEFAULT_SEGMENT
from separator.importers import IMPORTERS

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

# messages and tables on stderr: wrapped to the terminal, or one line each when redirected (logs, pipes)
console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=400, soft_wrap=True)
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
#: the one vocabulary of model options (every command that takes a model; see qsep_core.hub.resolve_model)
MODEL_HELP = "Model: a folder, a name that `qsep models` lists, or owner/repo on the HF Hub. Default: the shipped qsep-starter."
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N."
DEVICES_HELP = "Devices per node for Lightning: a count (2), a list of indices (0,1) or auto; more than one runs DDP."
SET_HELP = "KEY=VALUE override of a config field (repeatable; bare KEY=VALUE arguments work too), e.g. --set lr=3e-4."


def _stdout_console() -> Console:
    """A console for tables on stdout: full width when piped (no cut columns), terminal width otherwise."""
    return Console() if sys.stdout.isatty() else Console(width=400, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error a user can act on and exit with ``code``."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def not_built(command: str) -> NoReturn:
    """Say plainly that a command exists in the design but is not implemented in this version."""
    fail(f"`qsep {command}` is not built yet in this version of qsep (see README, 'What works').", code=3)


def _version_callback(value: bool) -> None:
    if value:
        from qsep_core.checkpoint import qsep_version

        typer.echo(f"qsep {qsep_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Query-based universal audio source separation."""


@app.command()
def separate(
    inputs: list[str] = typer.Argument(..., help="Audio files, folders (searched recursively) or glob patterns.", show_default=False),
    text: list[str] = typer.Option([], "--text", "-t", help="Text query, e.g. 'dog barking': routed to the label bank's classes (AudioSet ontology), else the text projection. Repeat for several queries (one output each)."),
    query_audio: list[Path] = typer.Option([], "--query-audio", "-a", help="Example recording of the target. All given files form ONE audio query (their embeddings are averaged)."),
    label: list[str] = typer.Option([], "--label", "-l", help="Class label (from the model's label bank; unknown labels are routed like text). Repeatable."),
    negative: list[str] = typer.Option([], "--not", help="Text of what NOT to separate, applied to every query. Repeatable."),
    embedding: list[Path] = typer.Option([], "--embedding", "-e", help="Saved condition from `qsep embed` (no encoder is loaded). Repeatable."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(Path("separated"), "--out", "-o", help="Output folder."),
    filename: str = typer.Option(DEFAULT_FILENAME, "--filename", help="Output path template inside --out: {track}, {query}, {ext}, {model} (e.g. '{model}/{track}/{query}.{ext}'). The residual's {query} is no_<query>; --not X adds _not_X."),
    residual: bool = typer.Option(True, "--residual/--no-residual", help="Also write the residual (mixture minus target)."),
    segment: Optional[float] = typer.Option(None, "--segment", help=f"Chunk length in seconds (default {DEFAULT_SEGMENT:g}, rounded to the nearest length the model runs without padding)."),
    overlap: Optional[float] = typer.Option(None, "--overlap", help=f"Chunk overlap as a fraction in [0, 1) (default {DEFAULT_OVERLAP:g})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Chunks per model call (default {DEFAULT_BATCH_SIZE}; raise on a GPU)."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 compute (GPUs; CPUs with AVX512-BF16/AMX): faster, ~65 dB from float32."),
    fmt: str = typer.Option("wav", "--format", help="Output format: wav or flac."),
    bit_depth: str = typer.Option("16", "--bit-depth", help="16, 24 or 32f (float wav; keeps overs instead of clipping)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Files separated in parallel."),
    threads: str = typer.Option("auto", "--threads", help=THREADS_HELP),
    full_band: bool = typer.Option(False, "--full-band/--model-band", help="--full-band: above the model's Nyquist (16 kHz), give the target the mask of the band just below (drums +0.8 dB, vocals -0.25 dB SDR on the starter music test split); --model-band (default) leaves that band in the residual."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (default: refuse)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary (errors are still printed)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Say how each query was encoded (the classes a text became with their weights, label matches, segments used)."),
    plot: bool = typer.Option(False, "--plot", help="Also write the spectrograms of mixture / target / residual of each output to <target>.png (needs the plots extra)."),
) -> None:
    """Separate the queried sound from audio files; writes the target and the residual for each (file, query)."""
    from separator.batch import SeparationJob, plan_queries, run_jobs

    if fmt.lower() not in ("wav", "flac"):
        fail(f"--format must be wav or flac, got {fmt!r}")
    if not 0 < jobs <= 64:
        fail(f"--jobs must be between 1 and 64, got {jobs}")
    if plot:
        _require_plots("--plot")
    from qsep_core.threads import resolve_threads

    try:
        resolve_threads(None if threads.strip().lower() == "auto" else threads)
    except ValueError as exc:
        fail(f"--threads: {exc}")
    from separator.api import check_chunking
    from separator.query.errors import QueryError

    try:
        for warning in check_chunking(segment, overlap, batch_size):
            console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    except ValueError as exc:
        fail(f"--segment/--overlap/--batch-size: {exc}")

    try:
        queries = plan_queries(text, query_audio, label, embedding, negative)
    except QueryError as exc:  # e.g. an empty --text ""
        fail(str(exc))
    if not queries:
        fail("empty query: give at least one --text, --query-audio, --label or --embedding")
    from qsep_core import audio as audio_io

    skipped: list = []
    files, problems = audio_io.collect_audio_files(inputs, skipped=skipped)
    if skipped:
        console.print(f"skipped {len(skipped)} file(s) in the input folders that qsep wrote (earlier outputs, e.g. "
                      f"{skipped[0]}); name such a file explicitly to separate it", highlight=False)
    for msg in problems:
        console.print(f"[bold red]error:[/] {msg}", highlight=False)
    if not files:
        fail("no input audio to separate")
    if bf16:
        _check_bf16(_device(device))
    # encode every query before the separator loads, so the query encoders (the ZS-ASS audio
    # encoder has 200 M parameters) and the separator are never in memory together
    folder = _open_separator_model(model)
    from separator.query import QueryEncoder

    encoder = QueryEncoder.from_model(folder, device=_device(device))
    conditions = {}
    for name, q in queries.items():
        try:
            res = encoder.encode(q)
        except Exception as exc:  # QueryError, AudioError, CheckpointError: all actionable messages
            fail(f"query {name!r}: {exc}")
        for line in res.report_lines(verbose=verbose):
            console.print(f"query {name!r}: {line}", highlight=False)
        conditions[name] = res
    del encoder, res
    import gc

    gc.collect()
    sep = _load_separator(str(folder.path), device, segment, overlap, batch_size, bf16=bf16, threads=threads,
                          full_band=full_band)
    job = SeparationJob(out_dir=out, filename=filename, residual=residual, fmt=fmt.lower(), bit_depth=bit_depth, overwrite=overwrite)
    try:
        job.check_template()
    except (ValueError, audio_io.AudioError) as exc:
        fail(str(exc))
    results = run_jobs(sep, files, conditions, job, jobs=jobs, console=None if quiet else console)
    failed = [r for r in results if r.error] + problems
    plot_errors = _plot_separations(results, overwrite) if plot else []
    if not quiet:
        _print_separation_summary(results)
    for r in results:
        if r.error:
            console.print(f"[bold red]error:[/] {r.input} [{r.query}]: {r.error}", highlight=False)
    for r in results:
        if r.clipped:
            console.print(f"[yellow]warning:[/] {r.clipped} samples beyond ±1 were clipped in {r.target_path} / residual "
                          f"(peak {r.peak:.2f}); use --bit-depth 32f to keep them", highlight=False)
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(results) + len(problems)} separations failed[/]", highlight=False)
        raise typer.Exit(1)
    if plot_errors:
        raise typer.Exit(1)


def _require_plots(option: str) -> None:
    """Exit with the extra to install when matplotlib is missing (checked before any work is done)."""
    from qsep_core.extras import MissingExtraError, require

    try:
        require("matplotlib", "plots", option)
    except MissingExtraError as exc:
        fail(str(exc))


def _plot_separations(results, overwrite: bool) -> list[str]:
    """``--plot``: ``<target>.png`` with the spectrograms of mixture / target / residual per output; returns errors."""
    from qsep_core.audio import AudioError
    from separator.plots import plot_separation

    errors = []
    for r in results:
        if r.error or r.target_path is None:
            continue
        png = Path(r.target_path).with_suffix(".png")
        outputs = {"target": r.target_path, **({"residual": r.residual_path} if r.residual_path else {})}
        try:
            if png.exists() and not overwrite:
                raise FileExistsError(f"{png} exists; refusing to overwrite it (pass --overwrite)")
            plot_separation(r.input, outputs, png, title=f"{Path(r.input).name}: {r.query}")
        except (AudioError, OSError) as exc:
            errors.append(f"{png}: {exc}")
            console.print(f"[bold red]error:[/] plot {png}: {exc}", highlight=False)
    return errors


def _draw_chart(draw, what: str) -> None:
    """Draw an evaluation chart; a missing matplotlib or an unwritable file is a warning (the numbers are written)."""
    from qsep_core.extras import MissingExtraError

    try:
        path = draw()
    except (MissingExtraError, OSError, ValueError) as exc:
        console.print(f"[yellow]warning:[/] no {what} chart: {exc}", highlight=False)
        return
    console.print(f"chart in {path}", highlight=False)


def _device(device: str):
    from separator.api import resolve_device

    try:
        return resolve_device(device)
    except (RuntimeError, ValueError) as exc:
        fail(str(exc))


def _check_bf16(dev) -> None:
    from separator.api import check_bf16

    try:
        check_bf16(dev)
    except ValueError as exc:
        fail(str(exc))


def _open_separator_model(model: Optional[str]):
    """The model folder ``--model`` names (checked to hold a separator), or exit with the reason."""
    from qsep_core.checkpoint import CheckpointError
    from separator.api import Separator

    try:
        return Separator.open_model(model)
    except CheckpointError as exc:
        fail(str(exc))


def _load_separator(model: Optional[str], device: str, segment: Optional[float], overlap: Optional[float],
                    batch_size: Optional[int], bf16: bool = False, **options):
    from qsep_core.checkpoint import CheckpointError
    from separator.api import Separator

    dev = _device(device)
    if bf16:
        _check_bf16(dev)
    kwargs = {k: v for k, v in (("segment", segment), ("overlap", overlap), ("batch_size", batch_size)) if v is not None}
    try:
        return Separator.from_pretrained(model, device=dev, bf16=bf16, **kwargs, **options)
    except CheckpointError as exc:
        fail(str(exc))


def _print_separation_summary(results) -> None:
    from rich.table import Table

    table = Table(title="qsep separate")
    for col in ("input", "query", "target", "duration", "x real time", "status"):
        table.add_column(col)
    for r in results:
        status = "[red]" + r.error + "[/]" if r.error else "ok"
        table.add_row(str(r.input), r.query, str(r.target_path or ""), f"{r.duration:.1f} s" if r.duration else "",
                      f"{r.rtf:.1f}" if r.rtf else "", status)
    console.print(table)


@app.command()
def detect(
    files: list[Path] = typer.Argument(..., help="Audio files (any rate / channels; mixed to mono)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " It must hold an HTS-AT detector."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Only the N classes with the highest clip score."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", min=0.0, max=1.0, help="Frame probability above which a class is active."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (list of files with events)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw frame-wise activity of the top classes to this PNG (one per file: NAME_<file>.png when several)."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
) -> None:
    """Detect sound events in files with an HTS-AT model (label, start, end, confidence)."""
    import json

    from qsep_core.audio import AudioError
    from qsep_core.checkpoint import CheckpointError
    from qsep_core.extras import MissingExtraError

    import sed
    from sed.detect import detect_file, plot_detection

    if not 0.0 < threshold < 1.0:
        fail(f"--threshold must be strictly between 0 and 1, got {threshold}")
    dev = _device(device)
    try:
        detector = sed.load_detector(model, device=dev)
    except (CheckpointError, RuntimeError) as exc:
        fail(f"cannot load the detector of {model or 'the default model'}: {exc}")
    results, failed = [], []
    for f in files:
        try:
            det = detect_file(detector, f, threshold=threshold, top_k=top_k)
        except (AudioError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {f}: {exc}", highlight=False)
            failed.append(str(f))
            continue
        results.append(det)
        if plot is not None:
            target = plot if len(files) == 1 else plot.with_name(f"{plot.stem}_{Path(f).stem}{plot.suffix or '.png'}")
            try:
                plot_detection(det, target, class_names=detector.class_names, threshold=threshold)
            except MissingExtraError as exc:
                fail(str(exc))
            except OSError as exc:
                fail(f"cannot write the plot {target}: {exc}")
        if not json_out:
            typer.echo(f"{f}  ({det.duration:.2f} s, {plural(len(det.events), 'event')}, frame threshold {threshold:g})")
            if det.events:
                typer.echo(f"  {'label':<32} {'start s':>9} {'end s':>9}  {'conf.':>5}")
            for e in det.events:
                typer.echo(f"  {e.label:<32} {e.start:9.3f} {e.end:9.3f}  {e.confidence:.3f}")
    if json_out:
        typer.echo(json.dumps([d.to_json() for d in results], indent=2, allow_nan=False))
    if failed:
        fail(f"{len(failed)} of {len(files)} file(s) could not be read: {', '.join(failed)}")


@app.command()
def embed(
    out: str = typer.Option(..., "--out", "-o", help="Condition file to write (.safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Its encoders make the condition (no model is loaded to combine --embedding files only)."),
    text: list[str] = typer.Option(None, "--text", "-t", help="Text query (repeatable)."),
    audio: list[str] = typer.Option(None, "--query-audio", "-a", help="Example recording (repeatable; the files are averaged as ONE example set)."),
    audio_alias: list[str] = typer.Option(None, "--audio", hidden=True),
    label: list[str] = typer.Option(None, "--label", "-l", help="Class label from the model's label bank (repeatable; unknown labels are routed like text)."),
    embedding: list[str] = typer.Option(None, "--embedding", "-e", help="Saved condition to combine (repeatable)."),
    weight: list[float] = typer.Option(None, "--weight", "-w", help="One weight per positive item, in the order: texts, the audio set, labels, embeddings."),
    negative: list[str] = typer.Option(None, "--not", help="Text of a sound NOT to separate (repeatable)."),
    negative_audio: list[str] = typer.Option(None, "--not-query-audio", "--not-audio", help="Recording of a sound NOT to separate (repeatable)."),
    negative_label: list[str] = typer.Option(None, "--not-label", help="Label of a sound NOT to separate (repeatable)."),
    negative_strength: float = typer.Option(None, "--negative-strength", help="How strongly negatives are removed (beta, default 0.25; 1 wrecked separation in tests, keep it small)."),
    negative_method: str = typer.Option("subtract", "--negative-method", help="subtract or reject (see docs)."),
    text_encoder: str = typer.Option(None, "--text-encoder", help="Override the text encoder (default: the one the model's projection was trained with; MiniLM for routing)."),
    relative_db: float = typer.Option(None, "--relative-db", help="Audio queries: drop segments more than this many dB below the file's loudest segment (default 40)."),
    floor_dbfs: float = typer.Option(None, "--floor-dbfs", help="Audio queries: drop segments at or below this RMS level in dBFS (default -80)."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Report how each part was encoded (the classes a text became with their weights, label matches, audio segments used)."),
) -> None:
    """Encode a query (text, audio files, label, saved conditions) into a condition vector file.

    Reuse it with `qsep separate --embedding FILE` (no encoder is loaded then).
    """
    from qsep_core.audio import AudioError
    from qsep_core.checkpoint import CheckpointError
    from qsep_core.config import ConfigError
    from separator.query.compose import Query, QueryEncoder, save_condition
    from separator.query.errors import QueryError

    audio = list(audio or []) + list(audio_alias or [])
    dev = _device(device)
    try:
        query = Query.build(
            text=text or None, audio=audio or None, label=label or None, embedding=embedding or None,
            weights=weight or None, negative=negative or None, negative_audio=negative_audio or None,
            negative_label=negative_label or None, negative_method=negative_method,
            **({"negative_strength": negative_strength} if negative_strength is not None else {}),
        )
        needs_model = model is not None or any(i.kind != "embedding" for i in query.positives + query.negatives)
        gate = {k: v for k, v in (("relative_db", relative_db), ("floor_dbfs", floor_dbfs)) if v is not None}
        encoder = (QueryEncoder.from_model(model, device=dev, text_encoder=text_encoder, **gate) if needs_model
                   else QueryEncoder())
        result = encoder.encode(query)
        path = save_condition(out, result, encoder, overwrite=overwrite)
    except (QueryError, AudioError, CheckpointError, ConfigError, OSError) as exc:
        fail(str(exc))
    for line in result.report_lines(verbose=verbose):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote a {result.condition.numel()}-d condition to {path}", highlight=False, soft_wrap=True)


@app.command(context_settings=_PASSTHROUGH)
def mine(
    ctx: typer.Context,
    detector: Optional[str] = typer.Option(None, "--detector", "--model", "-m", help=MODEL_HELP + " It must hold an HTS-AT detector (component detector or audio_encoder)."),
    data: str = typer.Option(..., "--data", help="The clips: a CSV manifest (path,labels), an HDF5 pack (.h5), or an AudioSet segments CSV (with --audio-dir)."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder of the segment manifest (re-run to resume)."),
    data_format: str = typer.Option(None, "--format", help="manifest | hdf5 | audioset (default: from --data's extension; .h5 -> hdf5)."),
    audio_dir: str = typer.Option(None, "--audio-dir", help="AudioSet format: folder holding the clips."),
    class_labels: str = typer.Option(None, "--class-labels", help="class_labels_indices.csv (AudioSet / HDF5). Default: the detector's class names."),
    config: str = typer.Option(None, "--config", "-c", help="YAML of mining options (e.g. configs/mine_audioset.yaml); the options below override it."),
    segment_seconds: float = typer.Option(None, "--segment-seconds", help=f"Anchor length in seconds (default: --config, else {ANCHOR_SECONDS:g}, official)."),
    min_prob: float = typer.Option(None, "--min-prob", help="Keep only anchors whose mean probability is at least this (default: --config, else none, official)."),
    max_anchors: int = typer.Option(None, "--max-anchors", min=1, help="Non-overlapping anchors per (clip, label) (default: --config, else 1)."),
    shard_size: int = typer.Option(None, "--shard-size", min=1, help="Clips per shard (default: --config, else 1000)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Clips per detector batch (default: --config, else 8)."),
    num_workers: int = typer.Option(None, "--num-workers", min=0, help="DataLoader workers (default: --config, else 0)."),
    store_audio: bool = typer.Option(None, "--store-audio/--no-store-audio", help="Store the anchor audio in the shards (needed for HDF5 packs)."),
    accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu or gpu."),
    devices: str = typer.Option(None, "--devices", help=DEVICES_HELP),
    num_nodes: int = typer.Option(None, "--num-nodes", min=1, help="Nodes for multi-node DDP."),
    max_bad_clips: int = typer.Option(None, "--max-bad-clips", min=0, help="Skip and report up to N unreadable / NaN clips (default: --config, else 0: the first one stops the run)."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Mine anchor segments from weakly labeled clips with a sound event detector.

    Options override the --config YAML (e.g. configs/mine_tiny.yaml), which overrides the built-in defaults.

    Writes shards of a segment manifest (clip, label, start, end, confidence, latent) for
    `qsep train separator`. A killed run restarts where it stopped.
    """
    from qsep_core.audio import AudioError
    from qsep_core.checkpoint import CheckpointError
    from qsep_core.config import ConfigError, from_dict, load_yaml
    from qsep_core.extras import MissingExtraError
    from qsep_core.manifest import ManifestError, load_manifest

    import sed
    from sed.data import DatasetError
    from qsep_core.training import BadClipError
    from sed.mining import MiningConfig, mine as run, mining_dataset

    overrides = _parse_overrides(list(ctx.args) + list(set_ or []))
    try:
        fields = load_yaml(config) if config else {}
        fields.update(overrides)
        fields.update(_given(segment_seconds=segment_seconds, min_prob=min_prob, max_anchors=max_anchors,
                             shard_size=shard_size, batch_size=batch_size, num_workers=num_workers,
                             store_audio=store_audio, accelerator=accelerator, num_nodes=num_nodes,
                             max_bad_clips=max_bad_clips,
                             devices=_devices(devices)))
        fields.setdefault("progress", True)
        cfg = from_dict(MiningConfig, fields)
        model = sed.load_detector(detector)
        dataset = mining_dataset(data, model, format=data_format, audio_dir=audio_dir, class_labels=class_labels)
        folder = run(model, dataset, out, cfg, sample_rate=model.cfg.sample_rate)
        manifest = load_manifest(folder)
    except (CheckpointError, ConfigError, DatasetError, AudioError, ManifestError, MissingExtraError,
            FileNotFoundError, BadClipError) as exc:
        fail(str(exc))
    console.print(f"mined {len(manifest)} segments from {len(dataset)} clips into {folder}", highlight=False)


@app.command()
def models(
    folders: list[Path] = typer.Argument(None, help="Extra model folders (or folders of models) to list."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    labels: Optional[str] = typer.Option(None, "--labels", help="List the labels (label bank classes, with their synonyms and training counts) of this model: a name from the list, or a folder."),
) -> None:
    """List the models qsep can find: the shipped default, $QSEP_MODELS, ~/.cache/qsep/models, and FOLDERS."""
    import json as _json

    from rich.table import Table

    from qsep_core.hub import DEFAULT_MODEL, list_models, search_path

    if labels is not None:
        _print_labels(labels, as_json)
        return
    from separator.checkpoint import BUILDERS

    entries = list_models(list(folders or []), builders=BUILDERS)
    if as_json:
        typer.echo(_json.dumps([{**e.__dict__, "path": str(e.path)} for e in entries], indent=2))
        return
    if not entries:
        console.print(f"no models found in {', '.join(str(d) for d in search_path())}; the default ({DEFAULT_MODEL}) "
                      "is not shipped with this version", highlight=False)
        return
    table = Table(title="qsep models")
    for col in ("name", "queries", "rate", "size", "preset", "path"):
        table.add_column(col)
    for e in entries:
        name = f"{e.name} (default)" if e.name == DEFAULT_MODEL else e.name
        table.add_row(name, ", ".join(e.query_types) if not e.error else f"[red]{e.error}[/]",
                      f"{e.sample_rate} Hz" if e.sample_rate else "", f"{e.size_mb:.1f} MB", e.preset or "", str(e.path))
    _stdout_console().print(table)
    console.print(f"`qsep models --labels NAME` lists a model's labels; --model NAME works in every command", highlight=False)


@app.command()
def export(
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write: the separator network with its condition input (STFT / ISTFT stay outside; see README, 'ONNX export')."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18 or newer)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file (default: refuse)."),
) -> None:
    """Export the separator to ONNX, checked against PyTorch with onnxruntime before it is written."""
    from qsep_core.checkpoint import CheckpointError
    from qsep_core.extras import MissingExtraError
    from separator.export import ExportError, export_onnx

    try:
        report = export_onnx(model, onnx, opset=opset, overwrite=overwrite)
    except (CheckpointError, MissingExtraError, ExportError) as exc:
        fail(str(exc))
    console.print(f"wrote {report.path} ({report.size_mb:.1f} MB, opset {report.opset}); onnxruntime vs PyTorch on "
                  f"{report.check_seconds:g} s of random input: max abs difference {report.max_abs_diff:.2g}", highlight=False)


def _print_labels(model: str, as_json: bool) -> None:
    """``qsep models --labels MODEL``: the label bank of a model (names, synonyms, training counts)."""
    import json as _json

    from rich.table import Table

    from qsep_core.checkpoint import CheckpointError
    from separator.query.labels import label_bank_table

    try:
        rows = label_bank_table(model)
    except CheckpointError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(_json.dumps(rows, indent=2))
        return
    table = Table(title=f"labels of {model}")
    for col in ("label", "synonyms", "training anchors"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["label"], ", ".join(r["synonyms"]), "" if r["count"] is None else str(r["count"]))
    _stdout_console().print(table)
    console.print(f"{plural(len(rows), 'label')}; any text also works (`--text`), routed to these through the AudioSet ontology",
                  highlight=False)


@app.command()
def demo(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " The page lists every model; this one is selected at start."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0 to let other machines in)."),
    port: int = typer.Option(7860, "--port", "-p", min=1, max=65535, help="Port to serve on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
) -> None:
    """Start the local web page: upload or record audio, query by text / label / example, listen, look, download."""
    from qsep_core.extras import MissingExtraError

    try:
        from separator.demo import build_demo, launch_options

        page = build_demo(default_model=model)
    except MissingExtraError as exc:
        fail(str(exc))
    console.print(f"qsep demo on http://{host}:{port}/ (Ctrl-C stops it)", highlight=False)
    try:
        page.launch(server_name=host, server_port=port, inbrowser=open_browser, quiet=True, **launch_options())
    except OSError as exc:  # e.g. the port is taken
        fail(f"cannot serve on {host}:{port}: {exc}")


def _given(**options):
    """The options the user gave (not None), as config field overrides."""
    return {k: v for k, v in options.items() if v is not None}


def _devices(text: Optional[str]):
    """``--devices``, one syntax for every command: ``"2"`` -> 2, ``"0,1"`` (or ``"[0,1]"``) -> [0, 1],
    ``"auto"`` -> ``"auto"`` (None: not given); anything else is an error line."""
    if text is None:
        return None
    d = text.strip().strip("[]").replace(" ", "")
    if d == "auto":
        return d
    if d.isdigit() and int(d) > 0:
        return int(d)
    parts = d.split(",")
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    fail(f"--devices {text!r}: give a count (2), a list of device indices (0,1) or auto")


def _training_output() -> None:
    """Show the training runner's banner, progress lines and warnings on stderr (plain lines, log-file friendly)."""
    import logging

    class CurrentStderr(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the first call)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, value):
            pass

    for name in ("qsep_core", "sed", "separator"):
        lg = logging.getLogger(name)
        if not any(getattr(h, "_qsep", False) for h in lg.handlers):
            h = CurrentStderr()
            h.setFormatter(logging.Formatter("%(message)s"))
            h._qsep = True  # type: ignore[attr-defined]
            lg.addHandler(h)
            lg.setLevel(logging.INFO)
            lg.propagate = False


def _run_training(run, what: str):
    """Call a training entry point ``run()``: a stop signal, another run in the folder, bad clips, a placement the
    machine lacks (``--accelerator gpu`` without one) and the other errors a user can act on become one line
    and an exit code."""
    from qsep_core.audio import AudioError
    from qsep_core.checkpoint import CheckpointError
    from qsep_core.config import ConfigError
    from qsep_core.extras import MissingExtraError
    from qsep_core.manifest import ManifestError
    from qsep_core.training import BadClipError, RunMismatch, TrainingInterrupted
    from sed.data import DatasetError

    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover - lightning is a dependency
        MisconfigurationException = ConfigError
    _training_output()
    try:
        return run()
    except TrainingInterrupted as exc:
        console.print(str(exc), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    except MisconfigurationException as exc:
        fail(f"{what}: {exc} (check --accelerator / --devices; `--accelerator cpu` runs anywhere)")
    except (RunMismatch, BadClipError, ConfigError, CheckpointError, ManifestError, DatasetError, AudioError,
            MissingExtraError, FileNotFoundError) as exc:
        fail(str(exc))


def _resume_value(resume: Optional[bool], resume_anyway: bool):
    if resume_anyway and resume is False:
        fail("--resume-anyway and --no-resume contradict each other")
    return "anyway" if resume_anyway else resume


def _parse_overrides(items: list[str]) -> dict:
    """``["data.batch_size=8", "lr=3e-4"]`` -> ``{"data": {"batch_size": 8}, "lr": 0.0003}`` (values parsed as YAML)."""
    from qsep_core.config import ConfigError, nested_overrides

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or key.startswith("-"):
            fail(f"cannot read {item!r}: overrides are written key=value (e.g. data.batch_size=8); options start with --")
    try:
        return nested_overrides(items)
    except ConfigError as exc:
        fail(str(exc))


@train_app.command("sed", context_settings=_PASSTHROUGH)
def train_sed(
    ctx: typer.Context,
    config: str = typer.Option(..., "--config", "-c", help="YAML training config (e.g. configs/sed_tiny.yaml)."),
    out: str = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, logs, exported model); overrides out_dir."),
    devices: str = typer.Option(None, "--devices", help=DEVICES_HELP),
    accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu or gpu."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    precision: str = typer.Option(None, "--precision", help="32-true, bf16-mixed (GPU), 16-mixed ..."),
    num_nodes: int = typer.Option(None, "--num-nodes", help="Nodes for multi-node DDP."),
    resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue the run in <out> if it is the same run (default: yes); --no-resume starts fresh (the old run is moved to <out>/previous-N)."),
    resume_anyway: bool = typer.Option(False, "--resume-anyway", help="Continue the run in <out> even though its config or data differ."),
    max_bad_clips: int = typer.Option(None, "--max-bad-clips", min=0, help="Skip and report up to N unreadable / NaN clips (default 0: the first one stops the run)."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Train an HTS-AT sound event detector on weakly labeled clips.

    Extra arguments KEY=VALUE (or --set KEY=VALUE) override config fields, e.g. `data.batch_size=8 lr=3e-4`.
    """
    overrides = _parse_overrides(list(ctx.args) + list(set_ or []))
    overrides.update(_given(out_dir=out, accelerator=accelerator, max_steps=max_steps, precision=precision,
                            num_nodes=num_nodes, resume=_resume_value(resume, resume_anyway), devices=_devices(devices),
                            max_bad_clips=max_bad_clips))

    def run():
        from sed.train import load_sed_config, train_sed

        return train_sed(load_sed_config(config, overrides))

    model_dir = _run_training(run, "qsep train sed")
    console.print(f"exported the detector to {model_dir}", highlight=False)


@train_app.command("separator", context_settings=_PASSTHROUGH)
def train_separator(
    ctx: typer.Context,
    config: str = typer.Option(..., "--config", "-c", help="YAML training config (e.g. configs/separator_tiny.yaml)."),
    manifest: str = typer.Option(None, "--manifest", help="Output folder of `qsep mine`; overrides manifest."),
    out: str = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, logs, exported model/); overrides out_dir."),
    detector: str = typer.Option(None, "--detector", help="Detector model folder copied into the export as the audio query encoder."),
    devices: str = typer.Option(None, "--devices", help=DEVICES_HELP),
    accelerator: str = typer.Option(None, "--accelerator", help="auto, cpu or gpu."),
    num_nodes: int = typer.Option(None, "--num-nodes", help="Nodes for multi-node DDP."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    precision: str = typer.Option(None, "--precision", help="auto (bf16-mixed on GPU), 32-true, ..."),
    resume: bool = typer.Option(None, "--resume/--no-resume", help="Continue the run in <out> if it is the same run (default: yes); --no-resume starts fresh (the old run is moved to <out>/previous-N)."),
    resume_anyway: bool = typer.Option(False, "--resume-anyway", help="Continue the run in <out> even though its config or data differ."),
    max_bad_clips: int = typer.Option(None, "--max-bad-clips", min=0, help="Skip and report up to N unreadable segments (default 0: the first one stops the run)."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Train a query-conditioned separator on mined segments.

    Extra arguments KEY=VALUE (or --set KEY=VALUE) override config fields, e.g. `lr=3e-4 model.channels=[16,32]`.
    """
    overrides = _parse_overrides(list(ctx.args) + list(set_ or []))
    overrides.update(_given(manifest=manifest, out_dir=out, detector=detector, accelerator=accelerator,
                            num_nodes=num_nodes, max_steps=max_steps, precision=precision,
                            resume=_resume_value(resume, resume_anyway), devices=_devices(devices),
                            max_bad_clips=max_bad_clips))

    def run():
        from separator.train import load_training_config, train_separator

        return train_separator(load_training_config(config, overrides))

    folder = _run_training(run, "qsep train separator")
    console.print(f"exported the separator to {folder}", highlight=False)


@train_app.command("text-projection", context_settings=_PASSTHROUGH)
def train_text_projection(
    ctx: typer.Context,
    config: str = typer.Option(..., "--config", "-c", help="YAML config (e.g. configs/text_projection.yaml)."),
    model: str = typer.Option(None, "--model", "-m", help="Model folder to add the text_projection (and label_bank) to."),
    out: str = typer.Option(None, "--out", "-o", help="Write a standalone folder with only the new components."),
    manifest: str = typer.Option(None, "--manifest", help="Mining output folder, or CSV segment table."),
    latents: str = typer.Option(None, "--latents", help="Latents file of a CSV manifest (.safetensors/.npz)."),
    steps: int = typer.Option(None, "--steps", help="Optimisation steps."),
    device: str = typer.Option(None, "--device", "-d", help=DEVICE_HELP + " Default: the config's (cpu)."),
    overwrite: bool = typer.Option(None, "--overwrite/--no-overwrite", help="Allow --out to replace an existing folder."),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Train the projection from text embeddings into the audio latent space, validate it, save it into a model.

    Extra arguments KEY=VALUE (or --set KEY=VALUE) override config fields, e.g. `lr=3e-4 batch_size=64 held_out_classes=[Cough]`.
    """
    import json

    from qsep_core.checkpoint import CheckpointError
    from qsep_core.config import ConfigError, load_config
    from separator.query.errors import QueryError
    from separator.query.train import TextProjectionTrainConfig, train_text_projection as run

    overrides = _parse_overrides(list(ctx.args) + list(set_ or []))
    if device is not None:
        device = str(_device(device))
    overrides.update(_given(model=model, out=out, manifest=manifest, latents=latents, steps=steps, device=device,
                            overwrite=overwrite))
    try:
        cfg = load_config(TextProjectionTrainConfig, config, overrides)
        metrics = run(cfg, log=lambda line: console.print(line, highlight=False))
    except (ConfigError, QueryError, CheckpointError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(metrics, indent=2))


def _progress_bar():
    """A rich progress bar on stderr and a ``progress(message, done, total)`` callback driving it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = bar.add_task("evaluating", total=None)

    def update(message: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, description=message[:60])

    return bar, update


@evaluate_app.command("musdb")
def evaluate_musdb(
    root: Path = typer.Argument(..., help="MUSDB18 folder holding train/ and test/ (.stem.mp4, or MUSDB18-HQ wav/flac folders)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " With only --oracle, no model is evaluated."),
    subset: str = typer.Option("test", "--subset", help="MUSDB18 subset to evaluate (train or test)."),
    tracks: Optional[str] = typer.Option(None, "--tracks", help="A count (first N tracks) or comma-separated track names."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Evaluate only the first S seconds of each track."),
    protocol: str = typer.Option("sisec18", "--protocol", help="sisec18 (standard) or zsass (the paper's NON-STANDARD protocol)."),
    text_queries: bool = typer.Option(False, "--text-queries", help="Query the stems by text instead of train-set audio (texts: --stem-text; no train subset needed)."),
    stem_text: list[str] = typer.Option([], "--stem-text", help="STEM=TEXT: the text query of a stem with --text-queries (repeatable), e.g. --stem-text vocals='female singer'. Defaults: vocals='singing voice', drums='drum kit', bass='bass guitar', other='piano, guitar and synthesizer'."),
    query_dir: Optional[Path] = typer.Option(None, "--query-dir", help="Cache of the train-set stem query embeddings (default: OUT/queries)."),
    out: Path = typer.Option(Path("musdb_eval"), "--out", "-o", help="Output folder (per-track JSON, summary, estimates). Rerunning with the same settings resumes; the summary covers only this run's settings."),
    jobs: int = typer.Option(1, "-j", "--jobs", help="Processes computing the metrics in parallel."),
    save_estimates: bool = typer.Option(False, "--save-estimates", help="Also write the estimates as wav files."),
    oracle: list[str] = typer.Option([], "--oracle", help="Oracle baseline(s) to add: mixture, irm (repeatable; alone: no model is evaluated)."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
    full_band: bool = typer.Option(False, "--full-band/--model-band", help="--full-band: above the model's Nyquist, give each stem the mask of the band just below; --model-band (default): leave that band out of every stem."),
) -> None:
    """Evaluate on MUSDB18 / MUSDB18-HQ (SiSEC18 or ZS-ASS protocol)."""
    from qsep_core.checkpoint import CheckpointError
    from separator.eval import musdb as ev
    from separator.eval.deps import FfmpegNotFoundError
    from separator.eval.run import run_musdb

    texts = {}
    for item in stem_text:
        stem, sep, text = item.partition("=")
        if not sep or not stem.strip() or not text.strip():
            fail(f"--stem-text {item!r}: write STEM=TEXT, e.g. --stem-text vocals='singing voice'")
        texts[stem.strip()] = text.strip()
    if texts and not text_queries:
        fail("--stem-text needs --text-queries (without it the stems are queried by train-set audio)")
    dev = _device(device)
    bar, update = _progress_bar()
    try:
        with bar:
            summary = run_musdb(root, out, model=model, oracles=oracle, protocol=protocol, subset=subset, tracks=tracks,
                                duration=duration, text_queries=text_queries, stem_texts=texts or None,
                                query_dir=query_dir, jobs=jobs, save_estimates=save_estimates, progress=update,
                                device=dev, full_band=full_band)
    except (FfmpegNotFoundError, CheckpointError, OSError, ValueError, KeyError, ImportError) as err:
        fail(str(err))
    typer.echo(ev.summary_markdown(summary))
    from separator.plots import plot_musdb_summary

    _draw_chart(lambda: plot_musdb_summary(summary, out / "summary.png"), "MUSDB18")
    for f in summary.get("failed", []):
        console.print(f"not scored: {f['track']} ({f['method']}): {f['error']}", highlight=False, markup=False)
    console.print(f"results in {out} (summary.json, summary.md)")


def _split_list(text: str) -> list[str]:
    """Split a class list on ';' when it has one (class names may contain commas), else on ','."""
    return [c.strip() for c in text.split(";" if ";" in text else ",") if c.strip()]


@evaluate_app.command("mixtures")
def evaluate_mixtures(
    corpus: Path = typer.Argument(..., help="CSV manifest with columns path,labels (labels separated by ';'), or an AudioSet folder (segments CSV + class_labels_indices.csv + audio)."),
    held_out: Optional[str] = typer.Option(None, "--held-out", help="Classes never seen in training (reported as zero-shot), separated by ',' (or ';' when names contain commas). Default: none. Each must be a label of the corpus."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    oracle: Optional[str] = typer.Option(None, "--oracle", help="Evaluate an oracle instead of a model: mixture or irm."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Classes to evaluate, separated like --held-out (default: every label in the corpus)."),
    query: str = typer.Option("text", "--query", help="Query kind: text, audio or label."),
    unrelated_text: Optional[str] = typer.Option(None, "--unrelated-text", help="A control: query EVERY class with this one text (with --query text), e.g. 'typing on a computer keyboard'."),
    per_class: int = typer.Option(10, "--per-class", help="Mixtures per class."),
    seed: int = typer.Option(0, "--seed", help="Seed of the mixture draw."),
    out: Path = typer.Option(Path("mixtures_eval"), "--out", "-o", help="Output folder (mixture set, results JSON + markdown per model and query kind); a later run must ask for the same mixture set."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
) -> None:
    """Evaluate on seeded two-source mixtures of a weak-label corpus (seen and held-out classes)."""
    from qsep_core.checkpoint import CheckpointError
    from separator.eval import mixtures as mx
    from separator.eval.run import run_mixtures

    dev = _device(device)
    bar, update = _progress_bar()
    try:
        with bar:
            run = run_mixtures(corpus, out, held_out=_split_list(held_out) if held_out else [], model=model, oracle=oracle,
                               classes=_split_list(classes) if classes else None, query=query,
                               unrelated_text=unrelated_text, per_class=per_class, seed=seed, progress=update,
                               device=dev)
    except (CheckpointError, OSError, ValueError, KeyError, ImportError) as err:
        fail(str(err))
    if run.reused_set:
        console.print(f"reusing the mixture set in {out / 'mixture_set.json'}")
    typer.echo(mx.results_markdown(run.results))
    console.print(f"results in {run.json_path} / .md")
    from separator.plots import collect_mixture_results, plot_mixture_results

    _draw_chart(lambda: plot_mixture_results(collect_mixture_results(out), out / "results.png"), "mixtures")


def _add_import_command(imp) -> None:
    """``qsep import-official NAME`` for one entry of :data:`separator.importers.IMPORTERS`."""

    def command(
        ckpt: Path = typer.Argument(..., help=imp.checkpoint),
        out: Path = typer.Option(..., "--out", "-o", help=f"Model folder to write (components: {', '.join(imp.components)})."),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow full unpickling (runs code from the file; only for files you trust)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model folder."),
    ) -> None:
        from qsep_core.checkpoint import CheckpointError
        from separator.importers import import_official

        try:
            folder = import_official(imp.name, ckpt, out, trust_pickle=trust_pickle, overwrite=overwrite)
        except CheckpointError as exc:
            fail(str(exc))
        console.print(f"wrote {folder} (components: {', '.join(imp.components)})", highlight=False)

    command.__doc__ = imp.summary
    import_app.command(imp.name)(command)


for _importer in IMPORTERS:
    _add_import_command(_importer)


class _Signalled(KeyboardInterrupt):
    """SIGINT / SIGTERM / SIGHUP as an interrupt, so every open output is cleaned up as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNALLED: list[int] = []


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _SIGNALLED.append(signum)
    raise _Signalled(signum)


def main() -> None:
    """Console entry point (``qsep``).

    Ctrl-C, SIGTERM and SIGHUP stop the command: outputs being written are dropped (their temporary
    files removed; finished outputs stay), the signal is named, and the exit status is 128 + its number.
    """
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _on_signal)
    try:
        app()
    except (SystemExit, KeyboardInterrupt) as exc:
        if not _SIGNALLED:
            raise
        signum = _SIGNALLED[0]
        console.print(f"interrupted by {signal.Signals(signum).name}: outputs not finished were not written and "
                      "their temporary files were removed", highlight=False)
        sys.exit(128 + int(signum))

if __name__ == "__main__":
    main()
