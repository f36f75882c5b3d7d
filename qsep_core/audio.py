"""All audio file I/O of qsep: read, write, resample, channel handling.

This is the only module that opens audio files. Everything returned here is
``torch.float32`` shaped ``(channels, time)``; the time axis is always the last
one and is never guessed from the shape.

Reading goes through :mod:`soundfile` (libsndfile: wav, flac, ogg/vorbis, opus,
mp3, aiff, ...). Writing is atomic (:class:`qsep_core.atomic.AtomicPath`): data
goes to a temporary file in the destination folder, which is renamed over the
destination only once it is complete, so an interrupted write never leaves a
half file and never clobbers an existing one.

Long files are read and written block by block (:class:`AudioReader`,
:class:`AudioWriter`), so a 2-hour file never has to be held in memory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from qsep_core.atomic import AtomicPath

__all__ = [
    "AudioError",
    "AudioNotFoundError",
    "AudioDecodeError",
    "EmptyAudioError",
    "NonFiniteAudioError",
    "UnsupportedFormatError",
    "AudioWriteError",
    "AudioInfo",
    "AudioReader",
    "AudioWriter",
    "BIT_DEPTHS",
    "WRITE_FORMATS",
    "info",
    "load",
    "save",
    "resample",
    "to_channels",
    "check_finite",
    "is_audio_path",
    "AUDIO_EXTENSIONS",
    "collect_audio_files",
    "check_output_format",
]

#: Extensions treated as audio when a folder is scanned for inputs.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf")
#: Formats :func:`save` writes, by extension.
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
#: ``bit_depth`` values accepted by :func:`save` and the soundfile subtype each maps to per format.
BIT_DEPTHS = {
    "WAV": {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"},
    "FLAC": {"16": "PCM_16", "24": "PCM_24"},
}
BitDepth = Literal["16", "24", "32f"]


class AudioError(Exception):
    """Base class of every audio I/O error qsep raises."""


class AudioNotFoundError(AudioError, FileNotFoundError):
    """The input file does not exist."""


class AudioDecodeError(AudioError):
    """The file exists but cannot be decoded (corrupt, truncated, or not audio)."""


class EmptyAudioError(AudioError):
    """The audio holds zero samples."""


class NonFiniteAudioError(AudioError):
    """The audio holds NaN or infinite samples."""


class UnsupportedFormatError(AudioError):
    """The requested output format, bit depth or channel layout is not supported."""


class AudioWriteError(AudioError):
    """The destination cannot be written (missing folder, permissions, disk full, exists)."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header without decoding the samples."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def is_audio_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioDecodeError(f"expected an audio file but {path} is a folder")


def _open(path: Path) -> sf.SoundFile:
    _check_exists(path)
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(
            f"cannot decode {path}: {exc}. The file is corrupt, truncated or not in a format "
            f"libsndfile reads (wav, flac, ogg, opus, mp3, aiff); convert it, e.g. with ffmpeg."
        ) from exc


def info(path: str | os.PathLike) -> AudioInfo:
    """Header of an audio file: rate, channels, length, format.

    Raises:
        AudioNotFoundError: the file does not exist.
        AudioDecodeError: the file cannot be decoded.
    """
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(path, int(f.samplerate), int(f.channels), int(f.frames), f.format, f.subtype)


def check_finite(wav: torch.Tensor, what: str = "audio") -> torch.Tensor:
    """Return ``wav`` unchanged.

    Raises:
        NonFiniteAudioError: ``wav`` holds NaN or inf (the message says how many and where the first is).
    """
    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        first = tuple(int(i) for i in bad[0])
        raise NonFiniteAudioError(
            f"{what} holds {bad.shape[0]} NaN/inf samples (first at index {first}); "
            "qsep does not guess replacements: fix or trim the source"
        )
    return wav


class AudioReader:
    """Block-wise reader of one audio file, ``(channels, frames)`` float32 blocks.

    Use as a context manager::

        with AudioReader("long.flac") as r:
            for block in r.blocks(r.sample_rate * 10):   # (channels, <=10 s)
                ...
            piece = r.read(start=1000, frames=512)       # random access

    Every block is checked for NaN/inf.

    Raises:
        AudioNotFoundError, AudioDecodeError: the file is missing or cannot be decoded.
        EmptyAudioError: the file holds no samples.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = _open(self.path)
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        if self.frames == 0:
            self._file.close()
            raise EmptyAudioError(f"{self.path} holds no samples (zero-length audio)")

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, start: int = 0, frames: int = -1) -> torch.Tensor:
        """Read ``frames`` frames from ``start`` (-1: to the end) as ``(channels, n)``.

        Reading past the end returns the frames that exist (possibly none).

        Raises:
            ValueError: ``start`` is negative.
            AudioDecodeError: the file is truncated or cannot be decoded there.
            NonFiniteAudioError: the block holds NaN or inf.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        start = min(start, self.frames)
        if frames < 0:
            frames = self.frames - start
        frames = min(frames, self.frames - start)
        try:
            self._file.seek(start)
            data = self._file.read(frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioDecodeError(f"cannot decode {self.path} at frame {start}: {exc}") from exc
        # soundfile gives (frames, channels); transpose to (channels, frames)
        block = torch.from_numpy(np.ascontiguousarray(data.T))
        if block.shape[-1] < frames:
            raise AudioDecodeError(
                f"{self.path} is truncated: expected {frames} frames from {start}, got {block.shape[-1]}"
            )
        return check_finite(block, f"{self.path} (frames {start}..{start + frames})")

    def blocks(self, block_frames: int) -> Iterator[torch.Tensor]:
        """Consecutive ``(channels, <= block_frames)`` blocks covering the whole file.

        Raises:
            ValueError: ``block_frames`` is not positive; otherwise as :meth:`read`.
        """
        if block_frames <= 0:
            raise ValueError(f"block_frames must be > 0, got {block_frames}")
        for start in range(0, self.frames, block_frames):
            yield self.read(start, block_frames)


def load(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    channels: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Read a whole file (or a time range) as ``(channels, time)`` float32.

    Args:
        path: any file libsndfile decodes.
        sample_rate: resample to this rate (None: keep the file's rate).
        channels: convert to this many channels (None: keep; see :func:`to_channels`).
        start: offset in seconds.
        duration: length in seconds (None: to the end).

    Returns:
        ``(wav, rate)`` with ``wav`` shaped ``(channels, time)``.

    Raises:
        AudioNotFoundError, AudioDecodeError, EmptyAudioError, NonFiniteAudioError.
    """
    with AudioReader(path) as r:
        first = int(round(start * r.sample_rate))
        n = -1 if duration is None else int(round(duration * r.sample_rate))
        wav = r.read(first, n)
        rate = r.sample_rate
    if wav.shape[-1] == 0:
        raise EmptyAudioError(f"{path}: no samples in the requested range (start {start} s, duration {duration})")
    if channels is not None:
        wav = to_channels(wav, channels)
    if sample_rate is not None and sample_rate != rate:
        wav = resample(wav, rate, sample_rate)
        rate = sample_rate
    return wav, rate


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc).

    Works on any leading dims. The output length is ``ceil(T * new / orig)``.

    Raises:
        ValueError: a rate is not positive.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return wav
    g = math.gcd(int(orig_rate), int(new_rate))
    return AF.resample(wav, int(orig_rate) // g, int(new_rate) // g)


def to_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``(..., C, T)`` to ``channels`` channels.

    Down-mix to mono averages the channels; mono is up-mixed by copying. Other
    conversions (e.g. 5.1 to stereo) have no single right answer.

    Raises:
        ValueError: ``wav`` has no channel axis.
        UnsupportedFormatError: a conversion other than to or from mono.
    """
    if wav.dim() < 2:
        raise ValueError(f"expected (..., channels, time), got shape {tuple(wav.shape)}")
    have = wav.shape[-2]
    if have == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if have == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    raise UnsupportedFormatError(f"cannot convert {have} channels to {channels}; only to/from mono is defined")


def _subtype_for(path: Path, bit_depth: str) -> tuple[str, str]:
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UnsupportedFormatError(
            f"cannot write {path.name}: output formats are {sorted(WRITE_FORMATS)} (by extension)"
        )
    subtype = BIT_DEPTHS[fmt].get(str(bit_depth))
    if subtype is None:
        raise UnsupportedFormatError(
            f"bit depth {bit_depth!r} is not available for {fmt}; choose one of {sorted(BIT_DEPTHS[fmt])}"
        )
    return fmt, subtype


def check_output_format(ext: str, bit_depth: str) -> None:
    """Check that files with extension ``ext`` can be written at ``bit_depth``.

    Raises:
        UnsupportedFormatError: the extension is not one of :data:`WRITE_FORMATS`, or the bit depth is not
            available for it.
    """
    _subtype_for(Path(f"x.{ext.lstrip('.')}"), bit_depth)


class AudioWriter:
    """Block-wise, atomic writer: blocks go to a temporary file that replaces ``path`` on success.

    Use as a context manager; if the block raises, the temporary file is removed
    and ``path`` (if it existed) is untouched::

        with AudioWriter("out.flac", 44100, channels=2, bit_depth="24") as w:
            w.write(block)        # (channels, n) float

    Integer formats clip samples outside [-1, 1]; :attr:`clipped` counts them so
    the caller can report it (qsep never clips silently).

    Raises:
        UnsupportedFormatError: the extension or bit depth cannot be written.
        ValueError: a non-positive sample rate.
        AudioWriteError: (on open / commit) the folder is missing, ``path`` exists without ``overwrite``,
            or writing fails.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        bit_depth: str = "16",
        overwrite: bool = True,
    ):
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.format, self.subtype = _subtype_for(self.path, bit_depth)
        self.overwrite = overwrite
        self.frames = 0
        self.clipped = 0
        self.peak = 0.0
        self._file: sf.SoundFile | None = None
        self._atomic: AtomicPath | None = None
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")

    def __enter__(self) -> "AudioWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def open(self) -> None:
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise AudioWriteError(f"cannot write {self.path}: folder {folder} does not exist")
        if self.path.exists() and not self.overwrite:
            raise AudioWriteError(f"{self.path} exists; refusing to overwrite it (pass overwrite=True)")
        try:
            self._atomic = AtomicPath(self.path, overwrite=self.overwrite)
            self._file = sf.SoundFile(
                str(self._atomic.tmp), "w", samplerate=self.sample_rate, channels=self.channels, format=self.format,
                subtype=self.subtype,
            )
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self.abort()
            raise AudioWriteError(f"cannot write {self.path}: {exc}") from exc

    def write(self, block: torch.Tensor) -> None:
        """Append a ``(channels, n)`` block.

        Raises:
            ValueError: the block is not ``(channels, n)``.
            NonFiniteAudioError: the block holds NaN or inf.
            AudioWriteError: writing failed (the temporary file is removed).
        """
        if self._file is None:
            raise RuntimeError("AudioWriter is not open")
        if block.dim() != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a ({self.channels}, n) block, got shape {tuple(block.shape)}")
        check_finite(block, f"block written to {self.path}")
        data = block.detach().to(torch.float32).cpu()
        if data.numel():
            self.peak = max(self.peak, float(data.abs().max()))
        if self.subtype != "FLOAT":
            over = data.abs() > 1.0
            self.clipped += int(over.sum())
            data = data.clamp(-1.0, 1.0)
        try:
            self._file.write(np.ascontiguousarray(data.numpy().T))
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self.abort()
            raise AudioWriteError(f"writing {self.path} failed: {exc}") from exc
        self.frames += data.shape[-1]

    def commit(self) -> None:
        """Close the temporary file and move it over the destination."""
        if self._file is None:
            return
        try:
            self._file.close()
            self._file = None
            if self.path.exists() and not self.overwrite:
                raise AudioWriteError(f"{self.path} appeared while writing; refusing to overwrite it")
            self._atomic.commit()
            self._atomic = None
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self.abort()
            raise AudioWriteError(f"cannot finish writing {self.path}: {exc}") from exc
        except AudioWriteError:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file; the destination stays as it was."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not mask the real error
                pass
            self._file = None
        if self._atomic is not None:
            self._atomic.abort()
            self._atomic = None


def save(
    path: str | os.PathLike,
    wav: torch.Tensor,
    sample_rate: int,
    bit_depth: str = "16",
    overwrite: bool = True,
) -> AudioWriter:
    """Write ``(channels, time)`` audio atomically as wav or flac (chosen by extension).

    Args:
        bit_depth: ``"16"``, ``"24"`` (wav, flac) or ``"32f"`` (wav float).
        overwrite: if False and ``path`` exists, raise :class:`AudioWriteError`.

    Returns:
        The closed writer, whose ``clipped`` and ``peak`` say whether integer
        output had to clip samples outside [-1, 1].

    Raises:
        ValueError: ``wav`` is not 2-d.
        EmptyAudioError: ``wav`` holds no samples.
        UnsupportedFormatError, AudioWriteError, NonFiniteAudioError: as :class:`AudioWriter`.
    """
    if wav.dim() != 2:
        raise ValueError(f"save expects (channels, time), got shape {tuple(wav.shape)}")
    if wav.shape[-1] == 0:
        raise EmptyAudioError(f"refusing to write zero-length audio to {path}")
    writer = AudioWriter(path, sample_rate, wav.shape[0], bit_depth=bit_depth, overwrite=overwrite)
    with writer:
        writer.write(wav)
    return writer


def collect_audio_files(inputs: "list[str | os.PathLike]") -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursively, by :data:`AUDIO_EXTENSIONS`) and glob patterns into audio files.

    Returns:
        ``(files, problems)``: the files in the order given (folders sorted, no duplicates) and one message per
        input that matched nothing, so a caller can report them and go on with the rest.
    """
    import glob

    files: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            files.append(p)

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_audio_path(q))
            if not found:
                problems.append(f"{p}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            for q in found:
                add(q)
        elif p.exists():
            add(p)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
            if not found:
                problems.append(f"{item}: pattern matches no file")
            for q in found:
                add(q)
        else:
            problems.append(f"{p}: file not found")
    return files, problems
