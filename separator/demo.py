"""``qsep demo``: a local web page (Gradio, the ``demo`` extra) to try a model by ear and by eye.

The page is a thin layer over the API, like the CLI: queries are planned by
:func:`separator.batch.plan_queries` (the names ``qsep separate`` gives), encoded by the model's
:class:`~separator.query.QueryEncoder` and separated by :meth:`separator.Separator.separate_file` (streamed
from and to disk, outputs at the input's rate and channel count, 32-bit float wav so target + residual equals
the input exactly); the "what is in this file" timeline is :func:`sed.detect.detect_file` with
:func:`sed.detect.plot_detection`; pictures come from :mod:`separator.plots`.

* Upload or record audio; pick a model (what ``qsep models`` lists); query by text (one query per line), by
  labels of the model's label bank, by example recordings (together one query), with an optional "not this"
  text applied to every query; up to :data:`MAX_QUERIES` queries at once.
* Each query gives a target and a residual player (with download) and the spectrograms of mixture / target /
  residual. "What is in this file" runs the model's sound event detector; clicking a detected class in its
  table separates that class.
* Each browser session works in its own temporary folder, removed when the session ends (and the whole demo
  folder when the server stops); Gradio's own copies of the outputs are removed after :data:`CACHE_SECONDS`.
* Everything is served from the local server: the theme uses the system's fonts, Gradio's analytics are off.

``app.py`` in the repository root builds the same page for a Hugging Face Space.
"""
import atexit
import functools
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

__all__ = ["MAX_QUERIES", "CACHE_SECONDS", "DemoError", "model_choices", "label_choices", "build_demo", "launch_options",
           "theme", "DemoSession"]

#: most queries one click separates (one result row each)
MAX_QUERIES = 4
#: Gradio's copies of outputs (what the players serve) are deleted this long after they were made
CACHE_SECONDS = 3600
#: frame threshold of the "what is in this file" detection (lower than `qsep detect`'s 0.5: a demo shows more)
DETECT_THRESHOLD = 0.3
#: classes listed by the detection
DETECT_TOP_K = 10


class DemoError(Exception):
    """A problem the page shows to the user (bad file, bad query, ...), one line."""


def model_choices() -> list[str]:
    """Names of the separator models ``qsep models`` lists (broken ones and detector-only ones left out)."""
    from qsep_core.hub import list_models

    return [e.name for e in list_models() if not e.error and e.query_types and not e.query_types[0].startswith("(")]


def label_choices(model: str | None) -> list[str]:
    """The label bank of ``model`` (empty when it has none or does not load)."""
    from qsep_core.checkpoint import CheckpointError
    from separator.query.labels import label_bank_table

    try:
        return [r["label"] for r in label_bank_table(model)]
    except (CheckpointError, OSError, ValueError):
        return []


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _separator(model: str | None):
    from separator.api import Separator

    return Separator.from_pretrained(model)


@functools.lru_cache(maxsize=2)
def _detector(model: str | None):
    import sed

    return sed.load_detector(model)


def _message(exc: BaseException, upload: str | os.PathLike | None) -> str:
    """The error's message with the server-side temporary path of an upload replaced by its file name."""
    text = str(exc) or type(exc).__name__
    if upload:
        text = text.replace(str(upload), Path(upload).name)
    return text


class DemoSession:
    """The temporary folder of one browser session: ``root/<session>/run-<n>/`` per separation.

    Attributes:
        folder: the session's folder (made on first use).
    """

    def __init__(self, root: Path, session: str):
        safe = "".join(ch for ch in session if ch.isalnum() or ch in "-_") or "anonymous"
        self.folder = Path(root) / safe
        self._runs = itertools.count(1)

    def new_run(self) -> Path:
        """A fresh, empty folder for one separation."""
        while True:
            run = self.folder / f"run-{next(self._runs)}"
            if not run.exists():
                run.mkdir(parents=True)
                return run

    def close(self) -> None:
        """Remove the session's folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)


def separate_queries(audio: str | os.PathLike, model: str | None, texts: Sequence[str] = (), labels: Sequence[str] = (),
                     examples: Sequence[str | os.PathLike] = (), negatives: Sequence[str] = (), *, out_dir: Path,
                     progress: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Separate every query from ``audio`` into ``out_dir``; returns ``(results, report lines)``.

    Each result is ``{"name", "target": Path, "residual": Path, "plot": Path}``: target and residual are 32-bit
    float wav files at the input's rate and channel count (their sum is the input), ``plot`` the spectrograms of
    mixture / target / residual. ``progress(fraction, message)`` is called as chunks finish.

    Raises:
        DemoError: no audio, no query, too many queries, or a query / file / model problem (the message is what
            ``qsep separate`` says about it).
    """
    from qsep_core.audio import AudioError
    from qsep_core.checkpoint import CheckpointError
    from separator.batch import plan_queries
    from separator.plots import plot_separation
    from separator.query import QueryError

    if not audio:
        raise DemoError("no audio: upload a file or record one first")
    texts = [t.strip() for t in texts if t and t.strip()]
    try:
        queries = plan_queries(texts, list(examples), list(labels), (), [n.strip() for n in negatives if n and n.strip()])
    except QueryError as exc:
        raise DemoError(str(exc)) from None
    if not queries:
        raise DemoError("empty query: type a text, pick a label or upload an example recording")
    if len(queries) > MAX_QUERIES:
        raise DemoError(f"{len(queries)} queries given; the page separates at most {MAX_QUERIES} at once")
    report: list[str] = []
    results: list[dict[str, Any]] = []
    try:
        with _LOCK:  # one model load at a time; the model itself is shared by every session
            sep = _separator(model)
        for i, (name, query) in enumerate(queries.items()):
            def tick(done: int, total: int, i: int = i, name: str = name) -> None:
                if progress is not None:
                    progress((i + done / max(total, 1)) / len(queries), f"separating {name}: chunk {done}/{total}")

            cond = sep.query_encoder.encode(query)
            report += [f"{name}: {line}" for line in cond.report_lines(verbose=True)]
            out = sep.separate_file(audio, out_dir=out_dir, condition=cond, name=name, filename="{query}.{ext}",
                                    bit_depth="32f", progress=tick)
            plot = plot_separation(audio, {"target": out["target"], "residual": out["residual"]},
                                   out_dir / f"{name}.png", title=f"query: {name}")
            results.append({"name": name, "target": out["target"], "residual": out["residual"], "plot": plot})
    except (AudioError, QueryError, CheckpointError, ValueError, OSError) as exc:
        raise DemoError(_message(exc, audio)) from None
    return results, report


def detect_events(audio: str | os.PathLike, model: str | None, out_dir: Path) -> tuple[list[list[Any]], Path]:
    """The "what is in this file" timeline: ``(rows [label, start s, end s, confidence], timeline PNG)``.

    Raises:
        DemoError: no audio, a file the detector cannot read, or a model without a detector.
    """
    from qsep_core.audio import AudioError
    from qsep_core.checkpoint import CheckpointError
    from sed.detect import detect_file, plot_detection

    if not audio:
        raise DemoError("no audio: upload a file or record one first")
    try:
        with _LOCK:
            detector = _detector(model)
        det = detect_file(detector, audio, threshold=DETECT_THRESHOLD, top_k=DETECT_TOP_K)
        det.path = Path(audio).name
        png = plot_detection(det, out_dir / "timeline.png", class_names=detector.class_names)
    except (AudioError, CheckpointError, ValueError, OSError) as exc:
        raise DemoError(_message(exc, audio)) from None
    rows = [[e.label, e.start, e.end, e.confidence] for e in det.events]
    if not rows:  # nothing above the threshold: list the top classes of the whole file instead
        rows = [[label, 0.0, det.duration, score] for label, score in det.clipwise.items()]
    return rows, png


def theme():
    """The page's theme: Gradio's default colours with the system's fonts (no font is fetched from anywhere)."""
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


def launch_options() -> dict[str, Any]:
    """Keyword arguments of ``Blocks.launch`` that every launch of the page uses (theme)."""
    return {"theme": theme()}


def build_demo(default_model: str | None = None, root: str | os.PathLike | None = None):
    """Build the page (a ``gradio.Blocks``; call ``.launch(**launch_options())``).

    Args:
        default_model: the model selected at start (None: the shipped default when listed, else the first).
        root: folder for the sessions' temporary folders (None: a new folder in the system's temp dir, removed
            at exit).

    Raises:
        qsep_core.extras.MissingExtraError: gradio (the ``demo`` extra) is not installed.
    """
    from qsep_core.extras import require

    gr = require("gradio", "demo", "the demo page")
    from qsep_core.hub import DEFAULT_MODEL

    if root is None:
        root = Path(tempfile.mkdtemp(prefix="qsep-demo-"))
        atexit.register(shutil.rmtree, root, True)
    root = Path(root)
    models = model_choices()
    if default_model is None:
        default_model = DEFAULT_MODEL if DEFAULT_MODEL in models else (models[0] if models else None)
    elif default_model not in models:
        models = [default_model, *models]
    sessions: dict[str, DemoSession] = {}

    def session(request: gr.Request | None) -> DemoSession:
        key = getattr(request, "session_hash", None) or "anonymous"
        if key not in sessions:
            sessions[key] = DemoSession(root, key)
        return sessions[key]

    def end_session(request: gr.Request) -> None:
        s = sessions.pop(getattr(request, "session_hash", None) or "anonymous", None)
        if s is not None:
            s.close()

    def slots_update(results: list[dict[str, Any]]) -> list[Any]:
        updates: list[Any] = []
        for i in range(MAX_QUERIES):
            if i < len(results):
                r = results[i]
                updates += [gr.update(visible=True), f"### {r['name']}", str(r["target"]), str(r["residual"]),
                            str(r["plot"])]
            else:
                updates += [gr.update(visible=False), "", None, None, None]
        return updates

    def run(audio, model, text, labels, examples, negative, request: gr.Request, progress=gr.Progress()):
        lines = [ln for ln in (text or "").replace(";", "\n").splitlines() if ln.strip()]
        example_files = [getattr(f, "name", f) for f in (examples or [])]
        s = session(request)
        try:
            results, report = separate_queries(audio, model, lines, labels or [], example_files,
                                               [negative] if negative else [], out_dir=s.new_run(),
                                               progress=lambda f, m: progress(f, desc=m))
        except DemoError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [*slots_update(results), "\n".join(f"- {ln}" for ln in report)]

    def detect(audio, model, request: gr.Request):
        try:
            rows, png = detect_events(audio, model, session(request).new_run())
        except DemoError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return rows, str(png)

    def separate_clicked(audio, model, negative, evt: gr.SelectData, request: gr.Request, progress=gr.Progress()):
        row = evt.row_value if isinstance(evt.row_value, list) else None
        label = row[0] if row else evt.value
        s = session(request)
        try:
            results, report = separate_queries(audio, model, labels=[str(label)], negatives=[negative] if negative else [],
                                               out_dir=s.new_run(), progress=lambda f, m: progress(f, desc=m))
        except DemoError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return [*slots_update(results), "\n".join(f"- {ln}" for ln in report)]

    def labels_of(model):
        return gr.update(choices=label_choices(model), value=[])

    with gr.Blocks(title="qsep: query-based audio source separation", analytics_enabled=False,
                   delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        gr.Markdown("# qsep: name a sound, get it out of the mix\nUpload or record audio, say what to separate "
                    "(text, labels of the model, or an example recording), and listen to the target and the residual.")
        with gr.Row():
            with gr.Column(scale=3):
                audio = gr.Audio(label="mixture", sources=["upload", "microphone"], type="filepath", elem_id="mixture")
                model = gr.Dropdown(models, value=default_model, label="model (qsep models)", allow_custom_value=True,
                                    elem_id="model")
            with gr.Column(scale=2):
                text = gr.Textbox(label="text queries (one per line)", placeholder="vocals\ndog barking", lines=2,
                                  elem_id="text")
                labels = gr.Dropdown(label_choices(default_model), multiselect=True, label="labels of the model",
                                     elem_id="labels")
                examples = gr.File(label="example recordings (together one query)", file_count="multiple",
                                   type="filepath", elem_id="examples")
                negative = gr.Textbox(label="not this (applied to every query)", placeholder="wind", elem_id="negative")
                go = gr.Button("Separate", variant="primary", elem_id="separate")
        report = gr.Markdown(elem_id="report")
        slots: list[Any] = []
        for i in range(MAX_QUERIES):
            with gr.Group(visible=False) as group:
                title = gr.Markdown()
                with gr.Row():
                    target = gr.Audio(label="target", type="filepath", interactive=False, elem_id=f"target-{i}")
                    residual = gr.Audio(label="residual", type="filepath", interactive=False, elem_id=f"residual-{i}")
                picture = gr.Image(label="spectrograms: mixture / target / residual", type="filepath",
                                   interactive=False, elem_id=f"spectrogram-{i}")
            slots += [group, title, target, residual, picture]
        with gr.Accordion("What is in this file? (sound event detection; click a class to separate it)", open=False):
            find = gr.Button("Detect sound events", elem_id="detect")
            events = gr.Dataframe(headers=["class", "start s", "end s", "confidence"], interactive=False,
                                  elem_id="events")
            timeline = gr.Image(label="timeline", type="filepath", interactive=False, elem_id="timeline")
        model.change(labels_of, model, labels)
        go.click(run, [audio, model, text, labels, examples, negative], [*slots, report], api_name="separate")
        find.click(detect, [audio, model], [events, timeline], api_name="detect")
        events.select(separate_clicked, [audio, model, negative], [*slots, report])
        demo.unload(end_session)
    demo.queue(default_concurrency_limit=1)
    return demo
