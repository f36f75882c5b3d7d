"""All audio file I/O of qsep: read, write, resample, channel handling.

This is the only module that opens audio files. Everything returned here is
``torch.float32`` shaped ``(channels, time)``; the time axis is always the last
one and is never guessed from the shape.

Reading goes through :mod:`soundfile` (libsndfile: wav, flac, ogg/vorbis, opus,
mp3, aiff, ...); containers libsndfile cannot open (m4a, mp4, mkv, webm, ...) are decoded by
the ``ffmpeg`` program, streamed through a pipe. Only regular files are read: a FIFO, a device or
a socket is refused at once instead of blocking. Writing is atomic (:class:`qsep_core.atomic.AtomicPath`): data
goes to a temporary file in the destination folder, which is renamed over the
destination only once it is complete, so an interrupted write never leaves a
half file and never clobbers an existing one.

Long files are read and written block by block (:class:`AudioReader`,
:class:`AudioWriter`), so a 2-hour file never has to be held in memory.
"""
from __future__ import annotations

import math
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from qsep_core.atomic import AtomicPath, write_error_message

__all__ = [
    "AudioError",
    "AudioNotFoundError",
    "AudioDecodeError",
    "EmptyAudioError",
    "NonFiniteAudioError",
    "UnsupportedFormatError",
    "AudioWriteError",
    "AudioPermissionError",
    "FfmpegMissingError",
    "AudioInfo",
    "AudioReader",
    "AudioWriter",
    "resampled_length",
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
    "FFMPEG_EXTENSIONS",
    "OUTPUT_SOFTWARE_TAG",
    "is_qsep_output",
    "collect_audio_files",
    "check_output_format",
]

#: Extensions treated as audio when a folder is scanned for inputs.
#: Containers libsndfile cannot open; they are decoded by the ``ffmpeg`` program (streamed through a pipe).
FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".m4b", ".aac", ".mkv", ".mka", ".webm", ".mov", ".wma", ".ac3")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf") + FFMPEG_EXTENSIONS
#: Separation outputs carry this in their ``software`` tag (``AudioWriter(..., tag=OUTPUT_SOFTWARE_TAG)``), so a
#: later folder scan can tell earlier outputs from inputs (:func:`is_qsep_output`).
OUTPUT_SOFTWARE_TAG = "qsep"
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


class AudioPermissionError(AudioError, PermissionError):
    """The file exists but this user may not read it."""


class FfmpegMissingError(AudioError):
    """A container that only ffmpeg decodes (m4a, mp4, mkv, webm, ...) was given, and ffmpeg is not installed."""


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
    """Raise the error a user can act on when ``path`` is not a readable regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioNotFoundError(f"audio file not found: {path}") from None
    except PermissionError:
        raise AudioPermissionError(
            f"cannot read {path}: permission denied on a folder above it (check its permissions)"
        ) from None
    except OSError as exc:
        raise AudioDecodeError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioDecodeError(f"expected an audio file but {path} is a folder")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        # opening a FIFO blocks until a writer appears: refuse before opening
        raise AudioDecodeError(f"{path} is {kind}, not a regular file; qsep reads audio files only (save the stream "
                               "to a file first)")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioPermissionError(
            f"cannot read {path}: permission denied (the file is not readable by this user; check `ls -l`)"
        ) from None
    except OSError as exc:
        raise AudioDecodeError(f"cannot read {path}: {exc.strerror or exc}") from None


def _uses_ffmpeg(path: Path) -> bool:
    return path.suffix.lower() in FFMPEG_EXTENSIONS


def _open(path: Path) -> sf.SoundFile:
    _check_exists(path)
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        why = (getattr(exc, "error_string", None) or str(exc)).strip().rstrip(".")
        if "does not exist" in why or "System error" in why:
            # libsndfile's words for "no decoder recognised the data" (e.g. a bad .mp3): the file does exist
            why = "no audio decoder recognises its data"
        raise AudioDecodeError(
            f"cannot decode {path}: {why}. The file is corrupt, truncated or not in a format "
            f"libsndfile reads (wav, flac, ogg, opus, mp3, aiff; {', '.join(FFMPEG_EXTENSIONS)} go through ffmpeg); "
            "convert it, e.g. with ffmpeg."
        ) from None


def _ffmpeg_binary(path: Path, program: str = "ffmpeg") -> str:
    exe = shutil.which(program)
    if exe is None:
        raise FfmpegMissingError(
            f"cannot read {path}: {path.suffix} files are decoded by the {program} program, which is not installed "
            "(./install.sh installs it; or apt install ffmpeg / conda install ffmpeg / brew install ffmpeg)"
        )
    return exe


#: frame counts of ffmpeg-decoded files, by (path, size, mtime): counting needs a full decode
_FFMPEG_FRAMES: dict[tuple[str, int, int], int] = {}


class _FfmpegSource:
    """Sequential ``(frames, channels)`` float32 reads of a file decoded by ffmpeg (a pipe, never the whole file)."""

    def __init__(self, path: Path):
        self.path = path
        self._ffmpeg = _ffmpeg_binary(path)
        probe = _ffmpeg_binary(path, "ffprobe")
        try:
            out = subprocess.run(
                [probe, "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
                 "-of", "default=noprint_wrappers=1", str(path)],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AudioDecodeError(f"cannot decode {path}: ffprobe failed ({exc})") from None
        fields = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        try:
            self.samplerate = int(fields["sample_rate"])
            self.channels = int(fields["channels"])
        except (KeyError, ValueError):
            why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "it holds no audio stream"
            raise AudioDecodeError(f"cannot decode {path} with ffmpeg: {why}") from None
        if self.samplerate <= 0 or self.channels <= 0:
            raise AudioDecodeError(f"cannot decode {path}: ffprobe reports {self.samplerate} Hz, {self.channels} channels")
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FFMPEG_FRAMES:
            _FFMPEG_FRAMES[key] = self._count_frames()
        self.frames = _FFMPEG_FRAMES[key]
        self._proc: subprocess.Popen | None = None
        self._pos = 0

    def _start(self) -> subprocess.Popen:
        self._err = tempfile.TemporaryFile()
        return subprocess.Popen(
            [self._ffmpeg, "-nostdin", "-v", "error", "-i", str(self.path), "-map", "0:a:0", "-f", "f32le",
             "-acodec", "pcm_f32le", "-ac", str(self.channels), "-ar", str(self.samplerate), "pipe:1"],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
        )

    def _count_frames(self) -> int:
        proc = self._start()
        n = 0
        assert proc.stdout is not None
        while True:
            block = proc.stdout.read(1 << 20)
            if not block:
                break
            n += len(block)
        proc.wait()
        if proc.returncode != 0:
            self._err.seek(0)
            why = self._err.read().decode(errors="replace").strip().splitlines()
            raise AudioDecodeError(f"cannot decode {self.path} with ffmpeg: {why[-1] if why else proc.returncode}")
        return n // (4 * self.channels)

    def read(self, frames: int) -> np.ndarray:
        if self._proc is None:
            self._proc = self._start()
        want = frames * 4 * self.channels
        buf = bytearray()
        assert self._proc.stdout is not None
        while len(buf) < want:
            got = self._proc.stdout.read(want - len(buf))
            if not got:
                break
            buf += got
        n = len(buf) // (4 * self.channels)
        self._pos += n
        return np.frombuffer(bytes(buf[: n * 4 * self.channels]), dtype="<f4").reshape(n, self.channels)

    def rewind(self) -> None:
        self.close()
        self._pos = 0

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def info(path: str | os.PathLike) -> AudioInfo:
    """Header of an audio file: rate, channels, length, format.

    For containers decoded by ffmpeg (:data:`FFMPEG_EXTENSIONS`) the length is counted by a streamed
    decode (compressed headers do not give it exactly); it is cached for the process.

    Raises:
        AudioNotFoundError: the file does not exist.
        AudioPermissionError: the file cannot be read by this user.
        AudioDecodeError: the file cannot be decoded, or it is not a regular file (a FIFO, a device).
        FfmpegMissingError: the file needs ffmpeg, which is not installed.
    """
    path = Path(path)
    if _uses_ffmpeg(path):
        _check_exists(path)
        src = _FfmpegSource(path)
        return AudioInfo(path, src.samplerate, src.channels, src.frames, path.suffix.lstrip(".").upper(), "FFMPEG")
    with _open(path) as f:
        return AudioInfo(path, int(f.samplerate), int(f.channels), int(f.frames), f.format, f.subtype)


def check_finite(wav: torch.Tensor, what: str = "audio", offset: int = 0, sample_rate: int | None = None) -> torch.Tensor:
    """Return ``wav`` unchanged.

    Args:
        offset: frame of ``wav[..., 0]`` in the whole signal, so the message gives a position in the file.
        sample_rate: with it, the message also gives that position in seconds.

    Raises:
        NonFiniteAudioError: ``wav`` holds NaN or inf (the message says how many and where the first is).
    """
    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        first = [int(i) for i in bad[0]]
        if wav.dim() >= 2:
            frame = offset + first[-1]
            where = f"frame {frame}" + (f" ({frame / sample_rate:.3f} s)" if sample_rate else "") + f", channel {first[-2]}"
        else:
            frame = offset + first[-1]
            where = f"sample {frame}" + (f" ({frame / sample_rate:.3f} s)" if sample_rate else "")
        raise NonFiniteAudioError(
            f"{what} holds {bad.shape[0]} NaN/inf samples (first at {where}); "
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
        if _uses_ffmpeg(self.path):
            _check_exists(self.path)
            self._file = _FfmpegSource(self.path)
        else:
            self._file = _open(self.path)
        self.sample_rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames = int(self._file.frames)
        # files are read forward; the frames of the last read are kept so the overlapping reads of chunked
        # processing never seek back, and a seek is only asked for when the position really changes. Some
        # codecs (GSM 6.10, G.721, NMS ADPCM) and every ffmpeg pipe cannot seek at all.
        self._pos = 0
        self._cache = np.zeros((0, self.channels), dtype="float32")
        self._cache_start = 0
        if self.frames == 0:
            self.close()
            raise EmptyAudioError(f"{self.path} holds no samples (zero-length audio)")

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _rewind(self) -> None:
        if isinstance(self._file, _FfmpegSource):
            self._file.rewind()
        else:  # reopening is the one way back in a file that cannot seek
            self._file.close()
            self._file = _open(self.path)
        self._pos = 0

    def _seekable(self) -> bool:
        return not isinstance(self._file, _FfmpegSource) and self._file.seekable()

    def _read_forward(self, n: int) -> np.ndarray:
        if isinstance(self._file, _FfmpegSource):
            data = self._file.read(n)
        else:
            data = self._file.read(n, dtype="float32", always_2d=True)
        self._pos += data.shape[0]
        return data

    def _goto(self, start: int) -> None:
        """Move the read position to ``start`` (seek when possible, else read forward or reopen)."""
        if start == self._pos:
            return
        if self._seekable():
            self._file.seek(start)
            self._pos = start
            return
        if start < self._pos:
            self._rewind()
        while self._pos < start:
            if self._read_forward(min(start - self._pos, 1 << 16)).shape[0] == 0:
                break

    def read(self, start: int = 0, frames: int = -1) -> torch.Tensor:
        """Read ``frames`` frames from ``start`` (-1: to the end) as ``(channels, n)``.

        Reading past the end returns the frames that exist (possibly none).

        Raises:
            ValueError: ``start`` is negative.
            AudioDecodeError: the file is truncated or cannot be decoded there.
            NonFiniteAudioError: the block holds NaN or inf (the message gives the frame and time in the file).
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        start = min(start, self.frames)
        if frames < 0:
            frames = self.frames - start
        frames = min(frames, self.frames - start)
        try:
            cache_end = self._cache_start + self._cache.shape[0]
            if self._cache_start <= start < cache_end and cache_end == self._pos:
                head = self._cache[start - self._cache_start: start - self._cache_start + frames]
                rest = self._read_forward(frames - head.shape[0]) if frames > head.shape[0] else head[:0]
                data = np.concatenate([head, rest]) if rest.shape[0] else head
            else:
                self._goto(start)
                data = self._read_forward(frames)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioDecodeError(f"cannot decode {self.path} at frame {start}: {exc}") from None
        self._cache, self._cache_start = data, start
        # soundfile gives (frames, channels); transpose to (channels, frames)
        block = torch.from_numpy(np.ascontiguousarray(data.T))
        if block.shape[-1] < frames:
            raise AudioDecodeError(
                f"{self.path} is truncated: expected {frames} frames from {start}, got {block.shape[-1]}"
            )
        return check_finite(block, str(self.path), offset=start, sample_rate=self.sample_rate)

    def resampled_frames(self, sample_rate: int) -> int:
        """Length of the whole file resampled to ``sample_rate`` (:func:`resample`'s ``ceil(T * new / orig)``)."""
        return resampled_length(self.frames, self.sample_rate, sample_rate)

    def read_resampled(self, start: int, frames: int, sample_rate: int, channels: int | None = None,
                       margin: float = 0.1) -> torch.Tensor:
        """Frames ``[start, start + frames)`` of the file resampled to ``sample_rate`` (indices at that rate).

        Only a span around them is read and resampled: ``margin`` seconds more on each side (far more than
        the resampler's kernel), with the span's start on a sample shared by both rates' grids, so the result
        equals slicing the resampled whole file (to float rounding) while memory stays bounded whatever the
        file's length. Channels are converted first (``channels``; None: keep), as :func:`load` does.

        Returns:
            ``(channels, n)`` float32, ``n <= frames`` (shorter at the end of the file).

        Raises:
            ValueError: ``start`` is negative or ``frames`` not positive; otherwise as :meth:`read`.
        """
        if start < 0 or frames <= 0:
            raise ValueError(f"need start >= 0 and frames > 0, got start={start}, frames={frames}")
        if int(sample_rate) == self.sample_rate:
            wav = self.read(start, frames)
            return to_channels(wav, channels) if channels is not None else wav
        g = math.gcd(self.sample_rate, int(sample_rate))
        unit_in, unit_out = self.sample_rate // g, int(sample_rate) // g  # one grid point: 1/g s
        stop = min(start + frames, self.resampled_frames(sample_rate))
        if stop <= start:
            return torch.zeros(self.channels if channels is None else channels, 0)
        pad = math.ceil(margin * g)  # grid points of margin
        u0 = max(0, start // unit_out - pad)
        u1 = -(-stop // unit_out) + pad
        first, last = u0 * unit_in, min(self.frames, u1 * unit_in)
        span = self.read(first, last - first)
        if channels is not None:
            span = to_channels(span, channels)
        out = resample(span, self.sample_rate, int(sample_rate))
        offset = u0 * unit_out
        return out[..., start - offset: stop - offset]

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


#: largest reduced ratio term (``rate / gcd``) resampled by torchaudio's exact polyphase kernel; its kernel holds
#: ``new/g * (orig/g + ~14)`` taps, so a ratio like 11127 -> 32000 (no common divisor) would need gigabytes
RESAMPLE_EXACT_MAX = 2000


def resampled_length(frames: int, orig_rate: int, new_rate: int) -> int:
    """Samples :func:`resample` gives for ``frames`` samples: ``ceil(frames * new / orig)``."""
    return frames if orig_rate == new_rate else -(-int(frames) * int(new_rate) // int(orig_rate))


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis.

    Works on any leading dims. The output length is ``ceil(T * new / orig)``. Ratios whose reduced terms
    (``rate / gcd``) are both at most :data:`RESAMPLE_EXACT_MAX` (every common rate: 8k, 11.025k, 16k,
    22.05k, 24k, 44.1k, 48k, 88.2k, 96k, ... to and from 32 kHz) use torchaudio's windowed-sinc polyphase
    kernel. Other ratios (e.g. 11 127 Hz, 22 254 Hz, 7 919 Hz) would need a kernel of gigabytes there, so
    they go through libsoxr (``soxr``, "HQ" quality, on the CPU) with bounded memory; its output is padded
    or cut to the same length convention.

    Raises:
        ValueError: a rate is not positive.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return wav
    g = math.gcd(int(orig_rate), int(new_rate))
    up, down = int(orig_rate) // g, int(new_rate) // g
    if max(up, down) <= RESAMPLE_EXACT_MAX:
        return AF.resample(wav, up, down)
    import soxr

    length = wav.shape[-1]
    out_len = math.ceil(length * int(new_rate) / int(orig_rate))
    flat = wav.reshape(-1, length)  # (B, T)
    dtype = np.float64 if flat.dtype == torch.float64 else np.float32
    x = np.ascontiguousarray(flat.detach().cpu().numpy().astype(dtype, copy=False).T)  # (T, B)
    y = soxr.resample(x, int(orig_rate), int(new_rate), quality="HQ")  # (T', B)
    y = torch.from_numpy(np.ascontiguousarray(y.T)).to(device=wav.device, dtype=wav.dtype)  # (B, T')
    if y.shape[-1] < out_len:
        y = torch.nn.functional.pad(y, (0, out_len - y.shape[-1]))
    return y[..., :out_len].reshape(*wav.shape[:-1], out_len)


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
    the caller can report it (qsep never clips silently). ``tag`` goes into the file's ``software``
    field (separation outputs: :data:`OUTPUT_SOFTWARE_TAG`).

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
        tag: str | None = None,
    ):
        self.path = Path(path)
        self.tag = tag
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
            if self.tag:
                self._file.software = self.tag
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self.abort()
            raise AudioWriteError(_write_failure(self.path, exc, "cannot write")) from None

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
        check_finite(block, f"audio written to {self.path}", offset=self.frames, sample_rate=self.sample_rate)
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
            raise AudioWriteError(_write_failure(self.path, exc, "writing failed:")) from None
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
            raise AudioWriteError(_write_failure(self.path, exc, "cannot finish writing")) from None
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


def _write_failure(path: Path, exc: BaseException, what: str) -> str:
    """One line saying why writing ``path`` failed (:func:`qsep_core.atomic.write_error_message`)."""
    return write_error_message(path, exc, what)


def is_qsep_output(path: str | os.PathLike) -> bool:
    """True when ``path`` is an audio file qsep wrote (its ``software`` tag is :data:`OUTPUT_SOFTWARE_TAG`).

    Never raises: an unreadable or non-audio file is simply not an output.
    """
    p = Path(path)
    if _uses_ffmpeg(p):
        return False
    try:
        if not stat.S_ISREG(p.stat().st_mode):
            return False
        with sf.SoundFile(str(p)) as f:
            return (f.software or "").split(" (")[0] == OUTPUT_SOFTWARE_TAG
    except Exception:  # noqa: BLE001 - a file we cannot open is an input, and its error comes when it is read
        return False


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


def collect_audio_files(
    inputs: "list[str | os.PathLike]", skipped: "list[Path] | None" = None
) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursively, by :data:`AUDIO_EXTENSIONS`) and glob patterns into audio files.

    Files found by scanning a folder or a pattern that qsep itself wrote (:func:`is_qsep_output`: earlier
    outputs kept next to their inputs) are left out, and appended to ``skipped`` when given; a file named
    explicitly is always kept. Folders that cannot be listed are reported, not raised.

    Returns:
        ``(files, problems)``: the files in the order given (folders sorted, no duplicates) and one message per
        input that matched nothing, so a caller can report them and go on with the rest.
    """
    import glob

    files: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(p: Path, scanned: bool) -> None:
        key = p.resolve()
        if key in seen:
            return
        if scanned and is_qsep_output(p):
            if skipped is not None:
                skipped.append(p)
            return
        seen.add(key)
        files.append(p)

    def is_file(q: Path) -> bool:
        try:
            return q.is_file()
        except OSError:
            return False

    for item in inputs:
        p = Path(item).expanduser()
        try:
            is_dir, exists = p.is_dir(), p.exists()
        except OSError as exc:
            problems.append(f"{p}: cannot be read ({exc.strerror or exc})")
            continue
        if is_dir:
            try:
                found = sorted(q for q in p.rglob("*") if is_file(q) and is_audio_path(q))
            except OSError as exc:
                problems.append(f"{p}: folder cannot be listed ({exc.strerror or exc}: {getattr(exc, 'filename', '')})")
                continue
            n_before = len(files)
            for q in found:
                add(q, scanned=True)
            if not found:
                problems.append(f"{p}: folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            elif len(files) == n_before and skipped:
                problems.append(f"{p}: folder holds only files qsep wrote (earlier outputs); name them to separate them")
        elif exists:
            add(p, scanned=False)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if is_file(Path(q)))
            if not found:
                problems.append(f"{item}: pattern matches no file")
            for q in found:
                add(q, scanned=True)
        else:
            problems.append(f"{p}: file not found")
    return files, problems
