"""The Python API: :class:`Separator` loads a qsep model folder and separates audio of any length, rate and channel count.

Core (this module): separation with a given condition vector,
:meth:`Separator.separate_condition` (in memory) and
:meth:`Separator.separate_file_condition` (streaming from file to file, memory
independent of the file length). Query handling (text / audio / label) builds
on top of these.

How inputs are handled:

* Channels are separated independently, as a batch (a stereo input gives a
  stereo target).
* The model runs at its own rate (32 kHz for every shipped preset). Each chunk
  is resampled to the model rate, separated, and resampled back, so the result
  is at the input's rate. For inputs above 32 kHz (44.1 / 48 kHz) the model
  only sees content up to 16 kHz; with ``full_band`` (opt-in) the band
  above gets the target's mask from the band just below it
  (:func:`qsep_core.dsp.extend_band`), without it that band all ends up in the residual.
* Several queries of one input run in one pass (:meth:`Separator.separate_conditions`,
  :meth:`Separator.separate_file_conditions`): each chunk is read, resampled and
  transformed once and the queries form one batch; each output equals that of a
  one-query run to float rounding.
* CPU threads: ``threads="auto"`` (the default) uses the cores not kept busy by other
  processes right now (:func:`qsep_core.threads.default_threads`), set for each call and
  restored after it.
* ``residual = mixture - target``, so target + residual equals the mixture
  (to float rounding).
* Long inputs are cut into overlapping chunks (``segment`` seconds, ``overlap``
  fraction), cross-faded with a Hann taper and normalised by the summed
  weights (:func:`qsep_core.dsp.chunked_apply`). Nothing is dropped at the tail.
  The segment is rounded to the nearest length the U-Net runs without padding,
  and an input shorter than a segment is one chunk of its own length (``snap_segment``).
* :meth:`Separator.from_pretrained` prepares the model it loads for inference
  (BatchNorm folded into convolutions, channels-last weights:
  :func:`separator.models.prepare_for_inference`).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from qsep_core import audio as audio_io
from qsep_core.dsp import chunked_apply, chunked_apply_stream, extend_band
from qsep_core.threads import resolve_threads, torch_threads
from separator.checkpoint import CheckpointError, ModelFolder
from separator.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FILENAME, DEFAULT_OVERLAP, DEFAULT_SEGMENT, RESIDUAL_PREFIX
from separator.models import prepare_for_inference

if TYPE_CHECKING:
    from separator.query.compose import ConditionResult

__all__ = [
    "Separator", "SeparationResult", "DEFAULT_SEGMENT", "DEFAULT_OVERLAP", "DEFAULT_BATCH_SIZE",
    "DEFAULT_FILENAME", "resolve_device", "check_bf16", "slugify", "output_path", "track_name", "track_names",
    "check_chunking", "MAX_OVERLAP", "SeparationOverflowError",
]

#: largest chunk overlap accepted: at 0.9 every sample already runs through the model 10 times
MAX_OVERLAP = 0.9


class SeparationOverflowError(audio_io.AudioError):
    """The separator produced NaN/inf from a finite input (an input far beyond full scale, or a broken model)."""


def check_chunking(segment: float | None = None, overlap: float | None = None, batch_size: int | None = None) -> list[str]:
    """Check chunking settings; returns warnings (empty when all is well).

    Raises:
        ValueError: a segment or batch size that is not positive, or an overlap outside ``[0, MAX_OVERLAP]``
            (the message says what it would cost).
    """
    warnings: list[str] = []
    if segment is not None and not float(segment) > 0:
        raise ValueError(f"segment must be > 0 seconds, got {segment}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if overlap is not None:
        ov = float(overlap)
        if not 0.0 <= ov <= MAX_OVERLAP:
            cost = f" (every sample would run through the model {1 / (1 - ov):.0f} times)" if MAX_OVERLAP < ov < 1 else ""
            raise ValueError(f"overlap must be in [0, {MAX_OVERLAP}], got {overlap}{cost}; the default is {DEFAULT_OVERLAP}")
        if ov == 0.0:
            warnings.append("overlap 0: chunks are butted without a cross-fade, so their seams can click; "
                            f"use at least {DEFAULT_OVERLAP} for clean output")
    return warnings


def track_name(path: str | os.PathLike) -> str:
    """The ``{track}`` of an input: its file stem, or a file-safe version when the stem is only dots (``...wav``)."""
    stem = Path(path).stem
    return stem if stem.strip(". ") else slugify(Path(path).name)


def track_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """:func:`track_name` of each input, made unique: a second ``song.wav`` (in another folder) is ``song_2``."""
    out: list[str] = []
    used: set[str] = set()
    for p in paths:
        base = track_name(p)
        name, i = base, 2
        while name.lower() in used:  # case-insensitive: outputs may land on a case-insensitive file system
            name, i = f"{base}_{i}", i + 1
        used.add(name.lower())
        out.append(name)
    return out

Progress = Callable[[int, int], None]


def check_bf16(device: torch.device) -> None:
    """Check that bfloat16 compute pays off on ``device``.

    Raises:
        ValueError: ``device`` is a CPU without native bf16 instructions (AVX512-BF16 / AMX), which
            emulates it, slower than float32.
    """
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise ValueError("bf16 on this CPU is emulated (no AVX512-BF16/AMX) and slower than float32; drop --bf16")


#: most channels an in-memory waveform may have: channels are separated as a batch, so a (time, channels) array
#: passed by mistake as (channels, time) would otherwise be tens of thousands of 2-sample "channels"
MAX_CHANNELS = 64


def resolve_device(device: torch.device | str | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other value as :class:`torch.device`.

    Raises:
        RuntimeError: CUDA is asked for but not available (the message says what torch was built for).
        RuntimeError (torch): ``device`` is not a device string.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} was asked for, but CUDA is not available here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu or auto"
        )
    return dev


def slugify(text: str, max_len: int = 60) -> str:
    """A file-name-safe version of a query name: ``"Dog barking!"`` -> ``"dog_barking"``."""
    keep = "".join(ch.lower() if ch.isalnum() else "_" for ch in text.strip())
    slug = "_".join(part for part in keep.split("_") if part)
    return (slug or "query")[:max_len].rstrip("_")


def output_path(out_dir: str | os.PathLike, template: str, track: str, query: str, ext: str, model: str = "model") -> Path:
    """Where one output goes: ``out_dir / template.format(track=, query=, ext=, model=)``.

    The template may use ``{track}`` (input file stem), ``{query}`` (slug of the query; the residual is
    ``no_<query>``), ``{ext}`` and ``{model}`` (the model's name, as ``qsep models`` lists it, e.g.
    ``"{model}/{track}/{query}.{ext}"`` for Demucs' ``separated/<model>/<track>/`` layout); it must contain
    ``{query}`` so outputs of different queries differ.

    Raises:
        ValueError: the template lacks ``{query}``, uses an unknown field, or leaves the output folder.
    """
    if "{query}" not in template:
        raise ValueError(f"--filename template {template!r} must contain {{query}} (else every query writes the same file)")
    try:
        rel = template.format(track=track, query=query, ext=ext, model=model)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"--filename template {template!r} uses an unknown field {exc}; use {{track}}, {{query}}, {{ext}}, "
                         "{model}") from None
    rel_path = Path(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise ValueError(f"--filename template {template!r} must give a path inside the output folder, got {rel!r}")
    return Path(out_dir) / rel_path


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (same path after resolving links, or hard links to one inode)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first.

    Raises:
        qsep_core.audio.AudioWriteError: a folder cannot be made (permissions, a file in the way, ...).
    """
    missing: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise audio_io.AudioWriteError(f"cannot make the output folder {folder}: {exc.strerror or exc}") from None
    return list(reversed(missing))


@dataclass
class SeparationResult:
    """Target and residual shaped like the input, at the input's sample rate."""

    target: torch.Tensor
    residual: torch.Tensor
    sample_rate: int
    #: how the query became a condition, when a query (not a bare condition tensor) was given
    query: ConditionResult | None = None


class Separator:
    """A query-conditioned separator ready for inference.

    Attributes:
        model: the :class:`~separator.models.QueryUNet`
            (``model(mixture (B, 1, T), condition (B, D)) -> (B, 1, T)`` at ``sample_rate``).
        model_folder: the :class:`~separator.checkpoint.ModelFolder` it came from (None if built in memory).
        device: where the model runs.
        segment, overlap, batch_size: default chunking (seconds, fraction, chunks per call).
        bf16: bfloat16 autocast, on CUDA or on a CPU with native bf16 (AVX512-BF16 / AMX; an error
            elsewhere). Faster (``zsass``: ~1.5x on 2 CPU threads) at ~65 dB SNR to float32.
        snap_segment: round the segment to the nearest length the model runs without
            padding (:meth:`~separator.models.QueryUNetConfig.padding_free_length`:
            6 s -> 5.755 s for ``zsass``, 6.075 s for ``resunet_film_small``), and run an
            input shorter than one segment as a single chunk of its own length.
        threads: CPU threads torch uses during each separation call: a number, ``"auto"`` (the cores
            not kept busy by other processes, measured at the call; see :mod:`qsep_core.threads`) or
            None (leave torch's setting alone). Ignored on CUDA when ``"auto"``.
        full_band: above the model's Nyquist (inputs at more than twice the model rate), give the
            target the mask of the band just below (:func:`qsep_core.dsp.extend_band`); False keeps
            the old behaviour (that band all goes to the residual).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_folder: ModelFolder | None = None,
        device: torch.device | str = "cpu",
        segment: float = DEFAULT_SEGMENT,
        overlap: float = DEFAULT_OVERLAP,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bf16: bool = False,
        snap_segment: bool = True,
        threads: int | str | None = "auto",
        full_band: bool = False,
    ):
        self.model = model.eval()
        self.model_folder = model_folder
        self.device = resolve_device(device)
        self._query_encoder: Any = None
        self.model.to(self.device)
        check_chunking(segment, overlap, batch_size)
        self.segment = float(segment)
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.bf16 = bool(bf16)
        self.snap_segment = bool(snap_segment)
        resolve_threads(threads if threads != "auto" else None)  # a bad value is an error now, not at the first call
        self.threads = threads
        self.full_band = bool(full_band)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        device: torch.device | str = "auto",
        component: str = "separator",
        **kwargs,
    ) -> "Separator":
        """Load the ``separator`` component of a qsep model.

        Args:
            path: a model folder or ``.safetensors`` file, a model name from the search path, an
                ``owner/repo`` Hugging Face id (with ``huggingface_hub``), or None for the shipped
                default (see :func:`qsep_core.hub.resolve_model`).
            device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

        Extra keyword arguments go to the constructor (segment, overlap, batch_size, bf16, threads, full_band).

        Raises:
            CheckpointError: the model is not found, malformed, or holds no ``query_unet`` ``component``.
            RuntimeError: CUDA was asked for but is not available.
        """
        device = resolve_device(device)
        folder = cls.open_model(path, component)
        # this model is ours alone: fold BatchNorms into convolutions, channels-last weights
        model = prepare_for_inference(folder.build(component, device))
        return cls(model, model_folder=folder, device=device, **kwargs)

    @staticmethod
    def open_model(path: str | os.PathLike | None = None, component: str = "separator") -> ModelFolder:
        """Resolve ``path`` as :meth:`from_pretrained` does and check it holds a valid separator; loads no weights.

        Raises:
            CheckpointError: the model is not found, malformed, or holds no ``query_unet`` ``component``.
        """
        from qsep_core.hub import resolve_model

        folder = ModelFolder(resolve_model(path))
        if not folder.has(component):
            raise CheckpointError(
                f"{folder.path} has no {component!r} component (it has {sorted(folder.components)}); "
                "it is not a separator model"
            )
        if folder.kind(component) != "query_unet":
            raise CheckpointError(f"{folder.path}: component {component!r} is a {folder.kind(component)!r}, not a query_unet")
        folder.check(component)  # its config against the header's shapes, before any query reads it
        return folder

    # ------------------------------------------------------------------ properties
    @property
    def model_name(self) -> str:
        """The model's name as ``qsep models`` lists it (``"model"`` for one built in memory)."""
        from qsep_core.hub import model_display_name

        return model_display_name(self.model_folder.path) if self.model_folder is not None else "model"

    @property
    def sample_rate(self) -> int:
        """The rate the model runs at."""
        return int(self.model.config.sample_rate)

    @property
    def cond_dim(self) -> int:
        return int(self.model.config.cond_dim)

    def to(self, device: torch.device | str) -> "Separator":
        self.device = resolve_device(device)
        self.model.to(self.device)
        if self._query_encoder is not None:
            self._query_encoder.device = self.device
        return self

    # ------------------------------------------------------------------ queries
    @property
    def query_encoder(self):
        """The :class:`separator.query.QueryEncoder` over this model's components (encoders load on first use)."""
        if self._query_encoder is None:
            from separator.query import QueryEncoder

            if self.model_folder is None:
                raise CheckpointError("this Separator was built in memory; give conditions with separate_condition()")
            self._query_encoder = QueryEncoder.from_model(self.model_folder, device=self.device)
        return self._query_encoder

    def release_query_encoder(self) -> None:
        """Free the query encoders (loaded again on the next query).

        Encode every query first, release, then separate: the separation then runs without the
        encoders' memory (the ZS-ASS audio encoder alone has 200 M parameters). ``qsep separate``
        goes further and encodes before it loads the separator at all.
        """
        self._query_encoder = None
        import gc

        gc.collect()

    def encode_query(
        self,
        text: str | Sequence[str] | None = None,
        audio: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        label: str | Sequence[str] | None = None,
        embedding: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        negative: str | Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        negative_strength: float | None = None,
    ):
        """Encode a query once (to reuse it on many inputs): returns a :class:`separator.query.ConditionResult`.

        Several positives (texts, the audio files as one example set, labels, embedding files) are
        combined with ``weights``; ``negative`` texts are removed by condition arithmetic
        (:mod:`separator.query.compose`).

        Raises:
            separator.query.QueryError: an empty or malformed query, or one the model's encoders cannot encode.
            qsep_core.audio.AudioError: an example recording cannot be read.
            CheckpointError: the separator was built in memory (no encoders), or an encoder does not load.
        """
        from separator.query import Query

        extra = {} if negative_strength is None else {"negative_strength": negative_strength}
        query = Query.build(text=text, audio=audio, label=label, embedding=embedding, weights=weights,
                            negative=negative, **extra)
        return self.query_encoder.encode(query)

    def separate(
        self,
        waveform: torch.Tensor,
        sample_rate: int,
        text: str | Sequence[str] | None = None,
        audio: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        label: str | Sequence[str] | None = None,
        embedding: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        negative: str | Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        condition: Any = None,
        **chunking: Any,
    ) -> SeparationResult:
        """Separate what the query names from ``waveform`` ``(channels, time)`` or ``(time,)`` at ``sample_rate``.

        Give the query as ``text=``, ``audio=`` (example files), ``label=``, ``embedding=`` (a file from
        ``qsep embed``), alone or combined, with optional ``negative=`` texts; or a ready ``condition``
        (a tensor, or the result of :meth:`encode_query`). ``chunking`` goes to :meth:`separate_condition`
        (segment, overlap, batch_size, progress). Target and residual come back shaped like the input.

        Raises:
            ValueError: both a condition and a query, a condition of the wrong size, or a malformed waveform.
            separator.query.QueryError: no query at all, or one that cannot be encoded (see :meth:`encode_query`).
            qsep_core.audio.EmptyAudioError, qsep_core.audio.NonFiniteAudioError: the waveform is empty or not finite.
        """
        vec, result = self._resolve_condition(condition, text, audio, label, embedding, negative, weights)
        res = self.separate_condition(waveform, sample_rate, vec, **chunking)
        res.query = result
        return res

    def _resolve_condition(self, condition, text, audio, label, embedding, negative,
                           weights) -> tuple[torch.Tensor, ConditionResult | None]:
        """``(condition vector, how it was encoded)``; the second is None for a bare condition tensor."""
        from separator.query.compose import ConditionResult

        has_query = any(q is not None for q in (text, audio, label, embedding))
        if condition is not None:
            if has_query:
                raise ValueError("give either condition= or a query (text/audio/label/embedding), not both")
            if isinstance(condition, ConditionResult):
                return condition.condition, condition
            return condition, None
        if not has_query:
            from separator.query import QueryError

            raise QueryError("empty query: give text=, audio=, label= or embedding= (or a condition)")
        result = self.encode_query(text=text, audio=audio, label=label, embedding=embedding, negative=negative,
                                   weights=weights)
        return result.condition, result

    def separate_file(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike = "separated",
        text: str | Sequence[str] | None = None,
        audio: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        label: str | Sequence[str] | None = None,
        embedding: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        negative: str | Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        condition: Any = None,
        name: str | None = None,
        filename: str = DEFAULT_FILENAME,
        residual: bool = True,
        format: str = "wav",
        bit_depth: str = "16",
        overwrite: bool = False,
        track: str | None = None,
        **chunking: Any,
    ) -> dict[str, Any]:
        """Separate a file, streaming it from and to disk; outputs keep its rate and channel count.

        Returns ``{"target": Path, "residual": Path | None, "writers": {...}, "query": ConditionResult | None}``.
        The writers' ``clipped``/``peak`` tell whether integer output had to clip (use ``bit_depth="32f"``
        to keep overs). Existing outputs are never replaced unless ``overwrite``, and an output that would
        land on the input itself is always refused. ``track`` is the ``{track}`` of the output names (default
        :func:`track_name`); folders made for the outputs are removed again if the separation fails.
        Several queries of one file: :meth:`separate_file_queries` (one pass).

        Raises:
            qsep_core.audio.AudioWriteError: an output exists (without ``overwrite``), is the input, or cannot be
                written.
            qsep_core.audio.AudioError: the input cannot be read.
            ValueError, separator.query.QueryError: as :meth:`separate`.
        """
        vec, result = self._resolve_condition(condition, text, audio, label, embedding, negative, weights)
        if name is None:
            name = result.query.short_name() if result is not None else "condition"
        out = self.separate_file_queries(path, {name: result if result is not None else vec}, out_dir=out_dir,
                                         filename=filename, residual=residual, format=format, bit_depth=bit_depth,
                                         overwrite=overwrite, track=track, **chunking)
        return out[name]

    def output_paths(self, path: str | os.PathLike, name: str, out_dir: str | os.PathLike = "separated",
                     filename: str = DEFAULT_FILENAME, residual: bool = True, format: str = "wav",
                     overwrite: bool = False, track: str | None = None) -> tuple[Path, Path | None]:
        """``(target path, residual path | None)`` of query ``name`` on input ``path``, checked before any work.

        Raises:
            qsep_core.audio.AudioWriteError: an output exists (without ``overwrite``) or is the input itself.
            ValueError: an unusable ``filename`` template.
        """
        ext = format.lower().lstrip(".")
        track = track_name(path) if track is None else track
        target_path = output_path(out_dir, filename, track, slugify(name), ext, model=self.model_name)
        residual_path = (output_path(out_dir, filename, track, RESIDUAL_PREFIX + slugify(name), ext, model=self.model_name)
                         if residual else None)
        for p in (target_path, residual_path):
            if p is None:
                continue
            if _same_file(p, Path(path)):
                raise audio_io.AudioWriteError(
                    f"output {p} is the input file itself; refusing to replace an input with its separation "
                    "(choose another -o or --filename)"
                )
            if p.exists() and not overwrite:
                raise audio_io.AudioWriteError(f"{p} exists; refusing to overwrite it (pass overwrite=True / --overwrite)")
        return target_path, residual_path

    def separate_file_queries(
        self,
        path: str | os.PathLike,
        queries: dict[str, Any],
        out_dir: str | os.PathLike = "separated",
        filename: str = DEFAULT_FILENAME,
        residual: bool = True,
        format: str = "wav",
        bit_depth: str = "16",
        overwrite: bool = False,
        track: str | None = None,
        **chunking: Any,
    ) -> dict[str, dict[str, Any]]:
        """Separate a file for several queries in one pass (read, resample and transform each chunk once).

        Args:
            queries: ``{name: condition}``, each a ``(cond_dim,)`` tensor or a :class:`ConditionResult`
                (from :meth:`encode_query`); ``name`` gives the ``{query}`` of its output files.
            others: as :meth:`separate_file`; ``chunking`` as :meth:`separate_file_conditions`.

        Returns:
            ``{name: {"target": Path, "residual": Path | None, "writers": {...}, "query": ConditionResult | None}}``;
            each output equals that of a one-query :meth:`separate_file` to float rounding.

        Raises:
            As :meth:`separate_file`; every output is checked (:meth:`output_paths`) before any is written,
            and a failure leaves none of them behind.
        """
        from separator.query.compose import ConditionResult

        if not queries:
            raise ValueError("give at least one query")
        names = list(queries)
        paths = [self.output_paths(path, n, out_dir, filename, residual, format, overwrite, track) for n in names]
        flat = [p for pair in paths for p in pair if p is not None]
        if len({str(p) for p in flat}) != len(flat):
            raise ValueError(f"two queries of {path} would write the same output; give them distinct names")
        conds = [q.condition if isinstance(q, ConditionResult) else q for q in queries.values()]
        made: list[Path] = []
        try:
            for p in flat:
                made += _make_folders(p.parent)
            writers = self.separate_file_conditions(path, paths, conds, bit_depth=bit_depth, overwrite=overwrite,
                                                    **chunking)
        except BaseException:
            for folder in reversed(made):  # only the folders made here, and only while empty
                try:
                    folder.rmdir()
                except OSError:
                    pass
            raise
        return {n: {"target": t, "residual": r, "writers": w,
                    "query": q if isinstance(q, ConditionResult) else None}
                for n, (t, r), w, q in zip(names, paths, writers, queries.values())}

    # ------------------------------------------------------------------ core
    def _conditions(self, conditions: Any) -> torch.Tensor:
        """``(queries, cond_dim)`` float32 on the device from a ``(cond_dim,)`` / ``(Q, cond_dim)`` tensor or a sequence.

        Raises:
            ValueError: no condition, a wrong size, or NaN/inf values.
        """
        if isinstance(conditions, (list, tuple)):
            if not conditions:
                raise ValueError("give at least one condition")
            conditions = torch.stack([torch.as_tensor(c, dtype=torch.float32).reshape(-1) for c in conditions])
        cond = torch.as_tensor(conditions, dtype=torch.float32)
        if cond.dim() == 1:
            cond = cond[None]
        if cond.dim() != 2 or cond.shape[0] < 1 or cond.shape[1] != self.cond_dim:
            raise ValueError(
                f"condition must have shape ({self.cond_dim},) or (queries, {self.cond_dim}) for this model, "
                f"got {tuple(cond.shape)}"
            )
        if not torch.isfinite(cond).all():
            raise ValueError("condition holds NaN/inf values")
        return cond.to(self.device)

    def _condition(self, condition: torch.Tensor) -> torch.Tensor:
        """One ``(cond_dim,)`` condition on the device (``(1, cond_dim)`` accepted).

        Raises:
            ValueError: a wrong size (also several queries), or NaN/inf values.
        """
        cond = self._conditions(condition)
        if cond.shape[0] != 1:
            raise ValueError(f"condition must have shape ({self.cond_dim},) or (1, {self.cond_dim}), got {tuple(cond.shape)}")
        return cond[0]

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        check_bf16(self.device)
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _threads(self, threads: int | str | None = None) -> int | None:
        """The torch thread count for one call (None: leave torch alone); see the ``threads`` attribute."""
        threads = self.threads if threads is None else threads
        if threads == "auto" and self.device.type != "cpu":
            return None
        return resolve_threads(threads)

    def _run_model(self, mix: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``mix (B, 1, L)`` at the model rate, ``cond (Q, D)`` -> ``(B, Q, 1, L)``: one STFT per row when the model can."""
        with self._autocast():
            if cond.shape[0] == 1:  # the module's own forward (and its hooks)
                return self.model(mix, cond.expand(mix.shape[0], -1))[:, None]
            many = getattr(self.model, "forward_queries", None)
            if many is not None:
                return many(mix, cond)
            q = cond.shape[0]
            y = self.model(mix.repeat_interleave(q, dim=0), cond.repeat(mix.shape[0], 1))  # (B * Q, 1, L)
            return y.reshape(mix.shape[0], q, *y.shape[1:])

    def _chunk_fn(self, cond: torch.Tensor, in_rate: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Chunk function for :mod:`qsep_core.dsp.chunked`: ``(n, C, L)`` at ``in_rate`` -> ``(n, Q, 2, C, L)``
        (target, residual per query) for ``cond (Q, D)``."""
        model_rate = self.sample_rate
        queries = cond.shape[0]
        full_band = self.full_band and in_rate > 2 * (model_rate / 2)

        def fn(x: torch.Tensor) -> torch.Tensor:
            n, channels, length = x.shape
            x = x.to(self.device, torch.float32)
            mix = x.reshape(n * channels, 1, length)  # (n*C, 1, L)
            y = audio_io.resample(mix, in_rate, model_rate)  # (n*C, 1, L')
            y = self._run_model(y, cond).float()  # (n*C, Q, 1, L')
            y = audio_io.resample(y[:, :, 0], model_rate, in_rate)[..., :length]  # (n*C, Q, <=L)
            if y.shape[-1] < length:
                y = torch.nn.functional.pad(y, (0, length - y.shape[-1]))
            target = y.reshape(n, channels, queries, length).transpose(1, 2)  # (n, Q, C, L)
            if full_band:
                target = extend_band(x[:, None], target, in_rate, model_rate / 2)  # (n, Q, C, L)
            out = torch.stack([target, x[:, None] - target], dim=2)  # (n, Q, 2, C, L)
            if not bool(torch.isfinite(out).all()):
                peak = float(x.abs().max())
                why = (f"the input peaks at {peak:.3g}, far beyond full scale (1.0): scale it down"
                       if peak > 1e3 else f"the input is finite (peak {peak:.3g}): the model is broken")
                raise SeparationOverflowError(f"the separation overflowed to NaN/inf; {why}")
            return out

        return fn

    def _chunking(self, sample_rate: int, length: int, segment: float | None, overlap: float | None,
                  batch_size: int | None) -> tuple[int, float, int]:
        """(segment samples at ``sample_rate``, overlap fraction, batch size) for an input of ``length`` samples."""
        seg = self.segment if segment is None else float(segment)
        ov = self.overlap if overlap is None else float(overlap)
        bs = self.batch_size if batch_size is None else int(batch_size)
        check_chunking(seg, ov, bs)
        config = getattr(self.model, "config", None)
        if not (self.snap_segment and hasattr(config, "padding_free_length")):
            return max(1, int(round(seg * sample_rate))), ov, bs
        # the chunk the model sees (after resampling) is as long as it runs without padding; an
        # input shorter than that is one chunk of its own length (the U-Net pads it after its
        # input norm, as the official ZS-ASS forward does, instead of seeing zero audio)
        to_model = config.sample_rate / sample_rate
        segment_samples = max(1, int(config.padding_free_length(seg * config.sample_rate) / to_model))
        return (length if 0 < length <= segment_samples else segment_samples), ov, bs

    def separate_condition(
        self,
        waveform: torch.Tensor,
        sample_rate: int,
        condition: torch.Tensor,
        segment: float | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
        threads: int | str | None = None,
    ) -> SeparationResult:
        """Separate the source described by ``condition`` from ``waveform``.

        Args:
            waveform: ``(channels, time)`` or ``(time,)`` at ``sample_rate``, any length >= 1.
            sample_rate: rate of ``waveform`` in Hz.
            condition: ``(cond_dim,)`` or ``(1, cond_dim)`` query vector.
            segment: chunk length in seconds (default :attr:`segment`).
            overlap: chunk overlap fraction in [0, 1) (default :attr:`overlap`).
            batch_size: chunks per model call (default :attr:`batch_size`).
            device: run on this device (moves the model there).
            progress: ``progress(chunks_done, chunks_total)`` after each batch.
            threads: CPU threads for this call (default :attr:`threads`).

        Returns:
            :class:`SeparationResult` with ``target`` and ``residual`` shaped like
            ``waveform`` (float32, CPU) at ``sample_rate``.

        Raises:
            ValueError: a waveform that is not 1-d or 2-d, a non-positive rate or segment, or a condition
                of the wrong shape or not finite.
            qsep_core.audio.EmptyAudioError, qsep_core.audio.NonFiniteAudioError: the waveform is empty or not finite.
        """
        self._condition(condition)  # exactly one query
        return self.separate_conditions(waveform, sample_rate, condition, segment=segment, overlap=overlap,
                                        batch_size=batch_size, device=device, progress=progress, threads=threads)[0]

    def separate_conditions(
        self,
        waveform: torch.Tensor,
        sample_rate: int,
        conditions: torch.Tensor | Sequence[torch.Tensor],
        segment: float | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
        threads: int | str | None = None,
    ) -> list[SeparationResult]:
        """Separate several sources from ``waveform`` in one pass: one :class:`SeparationResult` per condition.

        Each chunk is resampled and transformed once; the queries run as one batch (``batch_size`` chunks
        x channels x queries rows per model call). Each result equals :meth:`separate_condition` with that
        condition alone, to float rounding.

        Args:
            conditions: ``(queries, cond_dim)`` or a sequence of ``(cond_dim,)`` vectors.
            others: as :meth:`separate_condition`.

        Raises:
            As :meth:`separate_condition`.
        """
        wav = torch.as_tensor(waveform)
        if wav.dim() not in (1, 2):
            raise ValueError(f"waveform must be (channels, time) or (time,), got shape {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise audio_io.EmptyAudioError("waveform holds no samples")
        if wav.dim() == 2 and wav.shape[0] > MAX_CHANNELS:
            hint = (" it looks like (time, channels), the layout soundfile returns: pass waveform.T"
                    if wav.shape[1] <= MAX_CHANNELS else "")
            raise ValueError(f"waveform has shape {tuple(wav.shape)}, i.e. {wav.shape[0]} channels of {wav.shape[1]} "
                             f"samples (at most {MAX_CHANNELS} channels are separated);{hint or ' pass (channels, time)'}")
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        audio_io.check_finite(wav, "waveform")
        if device is not None:
            self.to(device)
        mono = wav.dim() == 1
        x = wav.to(torch.float32)[None] if mono else wav.to(torch.float32)  # (channels, time)
        cond = self._conditions(conditions)  # (Q, D)
        seg, ov, bs = self._chunking(int(sample_rate), x.shape[-1], segment, overlap, batch_size)
        with torch_threads(self._threads(threads)), torch.inference_mode():
            out = chunked_apply(self._chunk_fn(cond, int(sample_rate)), x, seg, ov, bs, progress=progress)  # (Q, 2, C, T)
        out = out.cpu()
        results = []
        for q in range(out.shape[0]):
            target, residual = out[q, 0], out[q, 1]
            if mono:
                target, residual = target[0], residual[0]
            results.append(SeparationResult(target=target, residual=residual, sample_rate=int(sample_rate)))
        return results

    def separate_file_condition(
        self,
        in_path: str | os.PathLike,
        out_path_target: str | os.PathLike | None,
        out_path_residual: str | os.PathLike | None,
        condition: torch.Tensor,
        segment: float | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
        bit_depth: str = "16",
        overwrite: bool = True,
        threads: int | str | None = None,
    ) -> dict[str, audio_io.AudioWriter]:
        """Stream ``in_path`` through the separator into target and/or residual files.

        Memory does not grow with the file length (blocks are read and written as
        the chunks finish). Outputs keep the input's rate and channel count and are
        written atomically. Returns the writers (``"target"`` / ``"residual"``),
        whose ``clipped`` / ``peak`` attributes let the caller report clipping.

        Raises:
            ValueError: no output path, or a condition of the wrong shape.
            qsep_core.audio.AudioError: the input cannot be read, or an output cannot be written.
        """
        self._condition(condition)  # exactly one query
        return self.separate_file_conditions(in_path, [(out_path_target, out_path_residual)], condition, segment=segment,
                                             overlap=overlap, batch_size=batch_size, device=device, progress=progress,
                                             bit_depth=bit_depth, overwrite=overwrite, threads=threads)[0]

    def separate_file_conditions(
        self,
        in_path: str | os.PathLike,
        outputs: Sequence[tuple[str | os.PathLike | None, str | os.PathLike | None]],
        conditions: torch.Tensor | Sequence[torch.Tensor],
        segment: float | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
        bit_depth: str = "16",
        overwrite: bool = True,
        threads: int | str | None = None,
    ) -> list[dict[str, audio_io.AudioWriter]]:
        """Stream ``in_path`` through the separator once for several queries (see :meth:`separate_conditions`).

        ``outputs[q]`` is ``(target path | None, residual path | None)`` of ``conditions[q]``. Returns the
        writers of each query, as :meth:`separate_file_condition`. Memory does not grow with the file length.

        Raises:
            ValueError: as many outputs as conditions are needed, each with at least one path.
            qsep_core.audio.AudioError: the input cannot be read, or an output cannot be written (no output
                of this call is then left behind).
        """
        cond = self._conditions(conditions)  # (Q, D)
        if len(outputs) != cond.shape[0]:
            raise ValueError(f"give one (target, residual) pair per condition: {len(outputs)} for {cond.shape[0]}")
        if any(t is None and r is None for t, r in outputs):
            raise ValueError("give out_path_target and/or out_path_residual")
        if device is not None:
            self.to(device)
            cond = cond.to(self.device)
        with audio_io.AudioReader(in_path) as reader:
            rate, channels = reader.sample_rate, reader.channels
            writers = [
                {name: audio_io.AudioWriter(path, rate, channels, bit_depth=bit_depth, overwrite=overwrite,
                                            tag=audio_io.OUTPUT_SOFTWARE_TAG)
                 for name, path in (("target", target), ("residual", residual)) if path is not None}
                for target, residual in outputs
            ]
            seg, ov, bs = self._chunking(rate, reader.frames, segment, overlap, batch_size)
            with contextlib.ExitStack() as stack:
                for per_query in writers:
                    for w in per_query.values():
                        stack.enter_context(w)

                def write(block: torch.Tensor) -> None:  # (Q, 2, C, m)
                    block = block.cpu()
                    for q, per_query in enumerate(writers):
                        if "target" in per_query:
                            per_query["target"].write(block[q, 0])
                        if "residual" in per_query:
                            per_query["residual"].write(block[q, 1])

                with torch_threads(self._threads(threads)), torch.inference_mode():
                    chunked_apply_stream(
                        self._chunk_fn(cond, rate), reader.read, write, reader.frames, seg, ov, bs, progress=progress
                    )
        return writers
