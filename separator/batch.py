"""Batch separation of many files with several queries: what ``qsep separate`` runs.

Each query is encoded once and reused for every input; each input is streamed from disk to disk once for
all its queries by :meth:`separator.api.Separator.separate_file_queries` (every chunk read, resampled and
transformed once, the queries as one batch). A (input, query) pair whose output cannot be written (it
exists, or is the input) is reported and the other queries of that input still run. A failing input (unreadable, corrupt, existing
output) is recorded and the others go on. Inputs with the same stem (``a/song.wav``, ``b/song.wav``) get
distinct ``{track}`` names (``song``, ``song_2``), so one never writes over another's outputs. An
interrupt (Ctrl-C, SIGTERM) stops every running pair at its next chunk; their temporary files are removed.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from separator.api import DEFAULT_FILENAME, Separator, output_path, slugify, track_names

__all__ = ["SeparationJob", "JobResult", "plan_queries", "run_jobs"]


@dataclass
class SeparationJob:
    """Output settings shared by every (input, query) pair."""

    out_dir: Path
    filename: str = DEFAULT_FILENAME
    residual: bool = True
    fmt: str = "wav"
    bit_depth: str = "16"
    overwrite: bool = False

    def check_template(self) -> None:
        """Raise ValueError now (before any work) if the file name template is unusable."""
        from qsep_core.audio import check_output_format

        check_output_format(self.fmt, self.bit_depth)
        output_path(self.out_dir, self.filename, "track", "query", self.fmt)


class Cancelled(Exception):
    """The batch was interrupted; raised inside a running pair at its next chunk."""


@dataclass
class JobResult:
    """What happened to one (input, query) pair."""

    input: Path
    query: str
    target_path: Path | None = None
    residual_path: Path | None = None
    duration: float = 0.0
    seconds: float = 0.0
    clipped: int = 0
    peak: float = 0.0
    error: str | None = None

    @property
    def rtf(self) -> float:
        """Real-time factor: audio seconds per wall second."""
        return self.duration / self.seconds if self.seconds > 0 else 0.0


def plan_queries(
    texts: Sequence[str] = (),
    audio_files: Sequence[str | os.PathLike] = (),
    labels: Sequence[str] = (),
    embeddings: Sequence[str | os.PathLike] = (),
    negatives: Sequence[str] = (),
) -> dict[str, Any]:
    """One :class:`separator.query.Query` per text, per label, per embedding file, and one for all audio files.

    Returns ``{name: Query}`` with file-name-safe, unique names. ``negatives`` apply to every query.
    """
    from separator.query import Query

    specs: list[tuple[str, dict[str, Any]]] = [(t, {"text": t}) for t in texts]
    if audio_files:
        specs.append(("+".join(Path(f).stem for f in audio_files), {"audio": list(audio_files)}))
    specs += [(lab, {"label": lab}) for lab in labels]
    specs += [(Path(e).stem, {"embedding": e}) for e in embeddings]
    out: dict[str, Any] = {}
    for name, kw in specs:
        base = slugify(name + ("-not-" + "+".join(negatives) if negatives else ""))
        key, i = base, 2
        while key in out:
            key, i = f"{base}_{i}", i + 1
        out[key] = Query.build(negative=list(negatives) or None, **kw)
    return out


def _one(sep: Separator, path: Path, conditions: dict[str, Any], job: SeparationJob, progress: Any,
         track: str | None = None, cancel: threading.Event | None = None) -> list[JobResult]:
    """Every query of one input in one pass; one :class:`JobResult` per query (each with the pass's time)."""
    from qsep_core import audio

    results = {name: JobResult(path, name) for name in conditions}

    def failed(exc: BaseException) -> str:
        return str(exc) if isinstance(exc, (audio.AudioError, Cancelled)) else f"{type(exc).__name__}: {exc}"

    if cancel is not None and cancel.is_set():
        for r in results.values():
            r.error = "not started: interrupted"
        return list(results.values())
    runnable = {}
    for name, cond in conditions.items():  # outputs that cannot be written fail alone, before any work
        try:
            sep.output_paths(path, name, job.out_dir, job.filename, job.residual, job.fmt, job.overwrite, track)
            runnable[name] = cond
        except (audio.AudioError, ValueError) as exc:
            results[name].error = failed(exc)
    task = None
    try:
        if not runnable:
            return list(results.values())
        duration = audio.info(path).duration
        for r in results.values():
            r.duration = duration
        if progress is not None:
            task = progress.add_task(f"{path.name} [{', '.join(runnable)}]", total=None)

        def tick(done: int, total: int) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("interrupted")
            if progress is not None:
                progress.update(task, completed=done, total=total)

        t0 = time.perf_counter()
        out = sep.separate_file_queries(path, {n: c.condition for n, c in runnable.items()}, out_dir=job.out_dir,
                                        filename=job.filename, residual=job.residual, format=job.fmt,
                                        bit_depth=job.bit_depth, overwrite=job.overwrite, progress=tick, track=track)
        seconds = time.perf_counter() - t0
        for name, o in out.items():
            r = results[name]
            r.seconds = seconds
            r.target_path, r.residual_path = o["target"], o["residual"]
            r.clipped = sum(w.clipped for w in o["writers"].values())
            r.peak = max((w.peak for w in o["writers"].values()), default=0.0)
    except Exception as exc:  # every failure of one input is reported, the other inputs go on
        for name in runnable:
            results[name].error = failed(exc)
    finally:
        if progress is not None and task is not None:
            progress.remove_task(task)
    return list(results.values())


def run_jobs(
    sep: Separator,
    files: Sequence[Path],
    conditions: dict[str, Any],
    job: SeparationJob,
    jobs: int = 1,
    console: Any = None,
) -> list[JobResult]:
    """Separate every file with every encoded query (``{name: ConditionResult}``).

    Each file runs all its queries in one pass; ``jobs`` files run in parallel threads (the model is shared;
    torch releases the GIL). With a rich ``console``, shows an overall bar (files) and one bar per running
    file (chunks done / total). Returns one :class:`JobResult` per (file, query), files in order.
    """
    tracks = track_names(files)
    inputs = [(Path(f), track) for f, track in zip(files, tracks)]
    cancel = threading.Event()
    progress = None
    if console is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=False)
    results: list[JobResult] = []
    with progress if progress is not None else contextlib.nullcontext():
        overall = progress.add_task("all", total=len(inputs)) if progress is not None else None

        def work(item: tuple[Path, str]) -> list[JobResult]:
            r = _one(sep, item[0], conditions, job, progress, track=item[1], cancel=cancel)
            if progress is not None:
                progress.advance(overall)
            return r

        if jobs <= 1:
            results = [r for item in inputs for r in work(item)]
        else:
            pool = ThreadPoolExecutor(max_workers=jobs)
            try:
                results = [r for rs in pool.map(work, inputs) for r in rs]
            except BaseException:
                # Ctrl-C / SIGTERM reach the main thread only: stop the workers at their next chunk and
                # wait, so each removes its temporary files before the process exits
                cancel.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    return results
