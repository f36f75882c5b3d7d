"""MUSDB18 evaluation under two protocols, clearly labeled.

``sisec18`` (the standard, default)
    Estimates at 44.1 kHz stereo for the whole track; BSS Eval v4 through ``museval`` with
    1-s windows and hops; per stem the median over frames (NaN frames, i.e. silent references,
    ignored), then the median over tracks. Also the MDX-challenge whole-track SDR
    (:func:`qsep_core.metrics.mdx_sdr`), reported as the mean and the median over tracks.

``zsass`` (NON-STANDARD, the ZS-ASS paper's protocol as its reference code runs it)
    Stereo is averaged to mono and resampled to 32 kHz; the track is cut to a whole number of
    2-s segments (the reference drops the tail) and every segment is separated on its own;
    a multichannel Wiener post-filter (soft-mask initialisation, one EM iteration, scale
    factor 8, eps 1e-9, STFT 2048/320 Hann) combines the four estimates of each segment; the
    SDR of each segment is BSS Eval v4 over the whole segment (window = hop = 2 s); segments
    whose reference or estimate is all zeros are skipped; median over segments per track,
    then median over tracks. The reference Wiener filter took the separator's masked
    magnitude spectrogram; an :class:`~separator.eval.estimators.Estimator` returns waveforms,
    so here the magnitudes are those of the estimates' STFTs (equal up to STFT consistency).

Outputs under ``out/<method>/<protocol>/``: ``tracks/<track>.json`` (qsep's per-track result,
also the marker that makes a rerun skip the track), ``museval/<subset>/<track>.json``
(museval's own per-track JSON, SiSEC18 only) and ``estimates/<track>/<stem>.wav`` if asked.
:func:`summarize` writes ``out/summary.json`` and ``out/summary.md`` over every method and
protocol found under ``out``.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from qsep_core import audio
from qsep_core.atomic import atomic_write_text
from qsep_core.constants import ANCHOR_SECONDS, SAMPLE_RATE
from qsep_core.dsp import StftConfig, istft, stft
from qsep_core.metrics import mdx_sdr
from separator.eval.deps import import_musdb, import_museval
from separator.eval.estimators import Estimator, estimate_stems
from separator.eval.wiener import wiener

__all__ = [
    "STEMS",
    "Sisec18Protocol",
    "ZsassProtocol",
    "PROTOCOLS",
    "protocol_from_name",
    "TrackAudio",
    "TrackEstimates",
    "open_musdb",
    "select_tracks",
    "load_track",
    "evaluate_track",
    "evaluate_musdb",
    "summarize",
    "zsass_segments",
    "score_sisec18",
    "score_zsass",
    "estimate_sisec18",
    "estimate_zsass",
    "zsass_wiener",
    "summary_markdown",
    "RESULT_VERSION",
]

#: The four MUSDB18 targets, in museval's order.
STEMS: tuple[str, ...] = ("vocals", "drums", "bass", "other")
#: Version of the per-track JSON written by qsep.
RESULT_VERSION = 1

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Sisec18Protocol:
    """The SiSEC18 protocol (standard).

    Attributes:
        window_seconds / hop_seconds: BSS Eval framing (1 s / 1 s).
        mdx_eps: regulariser of the MDX whole-track SDR.
    """

    name: str = "sisec18"
    window_seconds: float = 1.0
    hop_seconds: float = 1.0
    mdx_eps: float = 1e-7
    non_standard: bool = False
    description: str = "SiSEC18: 44.1 kHz stereo, museval BSS Eval v4, 1-s windows/hops, median over frames then tracks"

    def estimate(self, track: TrackAudio, estimator: Estimator) -> TrackEstimates:
        """Whole-track estimates at the track's rate and channels (:func:`estimate_sisec18`)."""
        ests = estimate_sisec18(track, estimator)
        return TrackEstimates(track.sample_rate, {s: track.stems[s].numpy() for s in ests},
                              {s: e.numpy() for s, e in ests.items()})

    def score(self, name: str, subset: str, est: TrackEstimates) -> tuple[dict[str, Any], str | None]:
        """``(result, museval's own per-track JSON)`` (:func:`score_sisec18`)."""
        res = score_sisec18(name, subset, est.sample_rate, est.references, est.estimates, self)
        return res, res.pop("museval_json")

    def waveforms(self, est: TrackEstimates) -> dict[str, torch.Tensor]:
        """The estimates as ``(channels, time)`` audio at ``est.sample_rate``, to save."""
        return {s: torch.from_numpy(e) for s, e in est.estimates.items()}


@dataclass(frozen=True)
class ZsassProtocol:
    """The ZS-ASS paper's protocol (non-standard), reproduced from its reference evaluation code.

    Attributes:
        sample_rate: evaluation rate (the reference model's rate).
        segment_seconds: segment length; separation, Wiener filter and SDR are per segment.
        wiener: apply the Wiener post-filter over all four estimates.
        wiener_iterations / wiener_softmask / wiener_scale_factor / wiener_eps: its settings.
        stft: STFT of the Wiener filter.
        batch_segments: segments passed to the estimator per call (as channels).
        silence_energy: a segment is silent (skipped) when the sum of squares of its reference or
            of its estimate is ``<=`` this (0: exactly zero, as the reference's ``np.sum(x) == 0``
            test amounts to for digital silence).
    """

    name: str = "zsass"
    sample_rate: int = SAMPLE_RATE
    segment_seconds: float = ANCHOR_SECONDS
    wiener: bool = True
    wiener_iterations: int = 1
    wiener_softmask: bool = True
    wiener_scale_factor: float = 8.0
    wiener_eps: float = 1e-9
    stft: StftConfig = field(default_factory=StftConfig)  # 2048 / 320 periodic Hann, as the reference
    batch_segments: int = 8
    silence_energy: float = 0.0
    non_standard: bool = True
    description: str = (
        "NON-STANDARD (ZS-ASS paper): mono 32 kHz, one SDR per 2-s segment, silent segments skipped, "
        "Wiener post-filter over the four estimates, median over segments then tracks; not comparable with SiSEC18"
    )

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))

    def estimate(self, track: TrackAudio, estimator: Estimator) -> TrackEstimates:
        """Per-segment estimates at :attr:`sample_rate`, Wiener-filtered if set (:func:`estimate_zsass`)."""
        refs, ests = estimate_zsass(track, estimator, self)
        return TrackEstimates(self.sample_rate, {s: r.numpy() for s, r in refs.items()},
                              {s: e.numpy() for s, e in ests.items()})

    def score(self, name: str, subset: str, est: TrackEstimates) -> tuple[dict[str, Any], str | None]:
        """``(result, None)``: per-segment SDR (:func:`score_zsass`); museval writes no JSON here."""
        return score_zsass(est.references, est.estimates, self), None

    def waveforms(self, est: TrackEstimates) -> dict[str, torch.Tensor]:
        """The segments of each estimate joined into one mono ``(1, time)`` signal, to save."""
        return {s: torch.from_numpy(e).reshape(1, -1) for s, e in est.estimates.items()}


PROTOCOLS = {"sisec18": Sisec18Protocol, "zsass": ZsassProtocol}
Protocol_ = Sisec18Protocol | ZsassProtocol


def protocol_from_name(name: str) -> Protocol_:
    """The protocol object for ``"sisec18"`` or ``"zsass"``."""
    try:
        return PROTOCOLS[name]()
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None


def _protocol_dict(protocol: Protocol_) -> dict[str, Any]:
    d = asdict(protocol)
    if "stft" in d:
        d["stft"] = dict(d["stft"])
    return d


# --------------------------------------------------------------------------------------------
# Reading MUSDB18 through musdb


@dataclass
class TrackAudio:
    """One MUSDB18 track in memory.

    Attributes:
        mixture: ``(channels, time)`` float32.
        stems: name -> ``(channels, time)`` float32 (vocals, drums, bass, other).
    """

    name: str
    subset: str
    sample_rate: int
    mixture: torch.Tensor
    stems: dict[str, torch.Tensor]


@dataclass
class TrackEstimates:
    """One track's references and estimates as its protocol scores them (numpy: picklable for worker processes).

    Attributes:
        sample_rate: rate of the arrays in Hz.
        references, estimates: stem -> ``(channels, time)`` (SiSEC18) or ``(segments, samples)`` (ZS-ASS).
    """

    sample_rate: int
    references: dict[str, np.ndarray]
    estimates: dict[str, np.ndarray]


#: file extensions of the MUSDB18-HQ folder layout (``<track>/mixture.<ext>`` + one file per stem)
HQ_EXTENSIONS = ("wav", "flac")


def _detect_layout(root: Path, subsets: Sequence[str]) -> str | None:
    """``None`` for ``.stem.mp4`` files (MUSDB18), else the extension of the MUSDB18-HQ stem files."""
    for subset in subsets:
        folder = root / subset
        if not folder.is_dir():
            continue
        if any(folder.glob("*.stem.mp4")):
            return None
        for ext in HQ_EXTENSIONS:
            if any((d / f"mixture.{ext}").is_file() for d in folder.iterdir() if d.is_dir()):
                return ext
    raise FileNotFoundError(
        f"no MUSDB18 tracks under {root} for subset(s) {list(subsets)}: expected {root}/<subset>/*.stem.mp4 "
        f"(MUSDB18) or {root}/<subset>/<track>/mixture.wav + vocals/drums/bass/other.wav (MUSDB18-HQ; .flac works too)"
    )


def _detect_is_wav(root: Path, subsets: Sequence[str]) -> bool:
    return _detect_layout(root, subsets) is not None


def _setup_file(ext: str) -> str | None:
    """A musdb setup YAML naming the stem files ``<stem>.<ext>`` (None: musdb's own, ``.wav``)."""
    if ext == "wav":
        return None
    import tempfile

    import yaml

    musdb = import_musdb()
    setup = yaml.safe_load((Path(musdb.__path__[0]) / "configs" / "mus.yaml").read_text())
    setup["mixture"] = f"mixture.{ext}"
    setup["sources"] = {k: f"{Path(v).stem}.{ext}" for k, v in setup["sources"].items()}
    folder = Path(tempfile.gettempdir()) / "qsep-musdb-setup"
    folder.mkdir(exist_ok=True)
    path = folder / f"mus_{ext}.yaml"
    path.write_text(yaml.safe_dump(setup))
    return str(path)


def open_musdb(root: str | os.PathLike, subset: str = "test", is_wav: bool | None = None):
    """Open a MUSDB18 (``.stem.mp4``) or MUSDB18-HQ (``is_wav``) folder with ``musdb.DB``.

    Args:
        root: folder holding ``train/`` and ``test/``.
        subset: ``"train"`` or ``"test"``.
        is_wav: layout; ``None`` detects it from the files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"MUSDB18 folder {root} does not exist")
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    ext = "wav"
    if is_wav is None:
        found = _detect_layout(root, [subset])
        is_wav, ext = found is not None, found or "wav"
    musdb = import_musdb()
    db = musdb.DB(root=str(root), subsets=subset, is_wav=is_wav, setup_file=_setup_file(ext) if is_wav else None)
    if len(db) == 0:
        raise FileNotFoundError(f"musdb found no tracks in {root}/{subset} (is_wav={is_wav})")
    return db


def select_tracks(db, tracks: int | str | Sequence[str] | None = None) -> list:
    """Pick tracks from a ``musdb.DB``: all (None), the first N (int or digit string) or names.

    Names may be given as a sequence or a comma-separated string; an unknown name is an error
    that lists close names.
    """
    all_tracks = list(db.tracks)
    if tracks is None or tracks == "":
        return all_tracks
    if isinstance(tracks, int) or (isinstance(tracks, str) and tracks.strip().isdigit()):
        n = int(tracks)
        if n <= 0:
            raise ValueError(f"--tracks must be a positive count or track names, got {tracks!r}")
        return all_tracks[:n]
    names = [t.strip() for t in tracks.split(",")] if isinstance(tracks, str) else list(tracks)
    by_name = {t.name: t for t in all_tracks}
    missing = [n for n in names if n not in by_name]
    if missing:
        import difflib

        hints = {n: difflib.get_close_matches(n, by_name, n=2) for n in missing}
        raise ValueError(f"unknown track name(s) {missing}; close matches: {hints}")
    return [by_name[n] for n in names]


def load_track(track, duration: float | None = None, stems: Sequence[str] = STEMS) -> TrackAudio:
    """Read a musdb track's mixture and stems as ``(channels, time)`` float32 tensors.

    Args:
        duration: read only the first ``duration`` seconds (quick runs); None reads all.
    """
    if duration is not None:
        if duration <= 0:
            raise ValueError(f"duration must be positive, got {duration}")
        track.chunk_start = 0.0
        track.chunk_duration = float(duration)
    mix = torch.from_numpy(np.ascontiguousarray(track.audio.T)).float()  # (channels, time)
    out = {}
    for s in stems:
        if s not in track.targets:
            raise KeyError(f"track {track.name!r} has no target {s!r}; it has {list(track.targets)}")
        ref = torch.from_numpy(np.ascontiguousarray(track.targets[s].audio.T)).float()  # (channels, time)
        if ref.shape[-1] < mix.shape[-1]:
            raise ValueError(f"track {track.name!r}: stem {s!r} has {ref.shape[-1]} samples, fewer than the mixture's "
                             f"{mix.shape[-1]}; the stem file is truncated (re-extract or re-download it)")
        out[s] = ref[..., : mix.shape[-1]]  # a few extra samples (codec padding of .mp4 stems) are cut
    return TrackAudio(name=track.name, subset=track.subset, sample_rate=int(track.rate), mixture=mix, stems=out)


# --------------------------------------------------------------------------------------------
# SiSEC18


def estimate_sisec18(track: TrackAudio, estimator: Estimator, stems: Sequence[str] = STEMS) -> dict[str, torch.Tensor]:
    """Full-track estimates at the track's rate and channel count: stem -> ``(channels, time)``."""
    refs = track.stems if estimator.needs_references else None
    out = {}
    for s, est in estimate_stems(estimator, track.mixture, track.sample_rate, stems, refs).items():
        _check_estimate(est, track.mixture, estimator, s)
        out[s] = est.float()
    return out


def _check_estimate(est: torch.Tensor, mixture: torch.Tensor, estimator: Estimator, stem: str) -> None:
    if tuple(est.shape) != tuple(mixture.shape):
        raise ValueError(
            f"estimator {estimator.name!r} returned shape {tuple(est.shape)} for {stem!r}; expected the mixture's "
            f"shape {tuple(mixture.shape)}"
        )
    if not torch.isfinite(est).all():
        raise ValueError(f"estimator {estimator.name!r} returned non-finite values for {stem!r}")


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    """NaN (museval's mark for a silent reference frame) -> None; +-inf (a perfect estimate) is kept."""
    return [None if (v is None or math.isnan(v)) else float(v) for v in values]


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(vals)) if vals else None


def score_sisec18(
    name: str,
    subset: str,
    sample_rate: int,
    references: Mapping[str, np.ndarray],
    estimates: Mapping[str, np.ndarray],
    protocol: Sisec18Protocol,
) -> dict[str, Any]:
    """BSS Eval v4 (museval) + MDX SDR of one track.

    Args:
        references, estimates: stem -> ``(channels, time)`` arrays.

    Returns:
        ``{"stems": {stem: {"sdr_median", "frame_sdr", "mdx_sdr", ...}}, "museval_json": <museval's TrackStore JSON text>}``
        (NaN frames, where the reference is silent, are ``None`` in ``frame_sdr``).

    A stem whose reference is digital silence over the whole evaluated range cannot be scored (BSS Eval
    refuses the whole track then): it is left out and reported as ``{"not_scored": reason, "sdr_median": None,
    ...}``, and the other stems are scored among themselves. Their SDR is unchanged by this (BSS Eval v4's
    image SDR depends on a stem's own reference and estimate only); their SIR / SAR are computed without the
    silent stem.

    Raises:
        ValueError: every stem is silent.
    """
    museval = import_museval()
    silent = [s for s in references if not np.any(references[s])]
    stems = [s for s in references if s not in silent]
    if not stems:
        raise ValueError(f"track {name!r}: every stem is digital silence in the evaluated range; nothing to score")
    refs = np.stack([references[s].T for s in stems]).astype(np.float64)  # (sources, time, channels)
    ests = np.stack([estimates[s].T for s in stems]).astype(np.float64)  # (sources, time, channels)
    win = int(round(protocol.window_seconds * sample_rate))
    hop = int(round(protocol.hop_seconds * sample_rate))
    sdr, isr, sir, sar = museval.evaluate(refs, ests, win=win, hop=hop)
    store = museval.TrackStore(win=protocol.window_seconds, hop=protocol.hop_seconds, track_name=name)
    result: dict[str, Any] = {"stems": {}}
    for i, s in enumerate(stems):
        store.add_target(
            target_name=s,
            values={"SDR": sdr[i].tolist(), "SIR": sir[i].tolist(), "ISR": isr[i].tolist(), "SAR": sar[i].tolist()},
        )
        frames = _nan_to_none(sdr[i].tolist())
        mdx = mdx_sdr(estimate=torch.from_numpy(estimates[s]), reference=torch.from_numpy(references[s]),
                      eps=protocol.mdx_eps)
        result["stems"][s] = {
            "sdr_median": _median(frames),
            "frame_sdr": frames,
            "frames": len(frames),
            "nan_frames": sum(v is None for v in frames),
            "mdx_sdr": float(mdx),
        }
    for s in silent:
        result["stems"][s] = {
            "sdr_median": None, "frame_sdr": [], "frames": 0, "nan_frames": 0, "mdx_sdr": None,
            "not_scored": "the reference is digital silence in the evaluated range (a --duration that ends before "
                          "the stem starts does this); BSS Eval cannot score it",
        }
    result["stems"] = {s: result["stems"][s] for s in references}  # the stems in their usual order
    result["museval_json"] = store.json
    return result


# --------------------------------------------------------------------------------------------
# ZS-ASS (non-standard)


def zsass_segments(wav: torch.Tensor, sample_rate: int, protocol: ZsassProtocol) -> torch.Tensor:
    """Mono, resampled, cut into whole segments as the reference evaluation did.

    Args:
        wav: ``(channels, time)`` at ``sample_rate``.

    Returns:
        ``(segments, segment_samples)`` float32; the tail shorter than a segment is dropped
        (part of this protocol).
    """
    mono = wav.mean(dim=0, keepdim=True)  # (1, time)
    mono = audio.resample(mono, sample_rate, protocol.sample_rate)[0]  # (time,)
    seg = protocol.segment_samples
    n = mono.shape[-1] // seg
    return mono[: n * seg].reshape(n, seg)  # (segments, samples)


def estimate_zsass(
    track: TrackAudio, estimator: Estimator, protocol: ZsassProtocol, stems: Sequence[str] = STEMS
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-segment estimates (Wiener-filtered if the protocol says so).

    Returns:
        ``(references, estimates)``: stem -> ``(segments, segment_samples)`` float32 each.
    """
    mix = zsass_segments(track.mixture, track.sample_rate, protocol)  # (segments, samples)
    refs = {s: zsass_segments(track.stems[s], track.sample_rate, protocol) for s in stems}
    if mix.shape[0] == 0:
        raise ValueError(
            f"track {track.name!r} is shorter than one {protocol.segment_seconds}-s segment; "
            "the zsass protocol has nothing to evaluate"
        )
    ests: dict[str, list[torch.Tensor]] = {s: [] for s in stems}
    for i in range(0, mix.shape[0], protocol.batch_segments):
        chunk = mix[i : i + protocol.batch_segments]  # (batch, samples) — segments as channels
        chunk_refs = {s: r[i : i + protocol.batch_segments] for s, r in refs.items()} if estimator.needs_references else None
        for s, est in estimate_stems(estimator, chunk, protocol.sample_rate, stems, chunk_refs).items():
            _check_estimate(est, chunk, estimator, s)
            ests[s].append(est.float())
    est_t = {s: torch.cat(v) for s, v in ests.items()}
    if protocol.wiener:
        est_t = zsass_wiener(mix, est_t, protocol)
    return refs, est_t


def zsass_wiener(mix: torch.Tensor, estimates: Mapping[str, torch.Tensor], protocol: ZsassProtocol) -> dict[str, torch.Tensor]:
    """Wiener post-filter over all estimates of each segment.

    Args:
        mix: ``(segments, samples)``.
        estimates: stem -> ``(segments, samples)``.

    Returns:
        stem -> ``(segments, samples)`` filtered estimates.
    """
    cfg = protocol.stft
    names = list(estimates)
    x = stft(mix.double(), cfg)[:, None]  # (segments, 1 channel, freq, frames)
    mags = torch.stack([stft(estimates[s].double(), cfg).abs() for s in names])[:, :, None]  # (sources, seg, 1, freq, frames)
    y = wiener(
        mags, x, iterations=protocol.wiener_iterations, softmask=protocol.wiener_softmask,
        scale_factor=protocol.wiener_scale_factor, eps=protocol.wiener_eps,
    )  # (sources, segments, 1, freq, frames)
    out = istft(y[:, :, 0], cfg, mix.shape[-1]).float()  # (sources, segments, samples)
    return {s: out[i] for i, s in enumerate(names)}


def score_zsass(
    references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray], protocol: ZsassProtocol
) -> dict[str, Any]:
    """Per-segment BSS Eval SDR (window = hop = segment), silent segments skipped.

    Args:
        references, estimates: stem -> ``(segments, samples)`` arrays.
    """
    museval = import_museval()
    result: dict[str, Any] = {"stems": {}}
    seg = protocol.segment_samples
    for s, ref in references.items():
        est = estimates[s]
        values: list[float | None] = []
        for r, e in zip(ref, est):
            r64, e64 = r.astype(np.float64), e.astype(np.float64)
            if float(np.sum(r64**2)) <= protocol.silence_energy or float(np.sum(e64**2)) <= protocol.silence_energy:
                values.append(None)  # silent segment: skipped, as the reference code does
                continue
            sdr = museval.evaluate(r64[None, :, None], e64[None, :, None], win=seg, hop=seg)[0]
            values.append(float(sdr[0, 0]))
        clean = _nan_to_none(values)
        result["stems"][s] = {
            "sdr_median": _median(clean),
            "segment_sdr": clean,
            "evaluated": sum(v is not None for v in clean),
            "skipped": sum(v is None for v in clean),
        }
    return result


# --------------------------------------------------------------------------------------------
# Driver


def _track_dir(out: Path, method: str, protocol: Protocol_) -> Path:
    return out / method / protocol.name


def _settings(protocol: Protocol_, duration: float | None, subset: str) -> dict[str, Any]:
    return {"protocol": _protocol_dict(protocol), "duration": duration, "subset": subset}


def _with_estimator(settings: Mapping[str, Any], estimator: Estimator) -> dict[str, Any]:
    """Settings plus the estimator's ``fingerprint`` (e.g. model path + queries), so a rerun with another
    model under the same method name recomputes instead of reusing stale results."""
    return {**settings, "estimator": str(getattr(estimator, "fingerprint", "") or estimator.name)}


def _result_path(out: Path, method: str, protocol: Protocol_, track_name: str) -> Path:
    return _track_dir(out, method, protocol) / "tracks" / f"{track_name}.json"


def _is_done(path: Path, settings: Mapping[str, Any]) -> bool:
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("version") == RESULT_VERSION and data.get("settings") == json.loads(json.dumps(settings))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON; an infinite SDR (estimate equal to the reference) is written as ``Infinity``."""
    _write_text(path, json.dumps(data, indent=2))


@dataclass
class _ScoringJob:
    """Scores one track and writes its JSON files; picklable, so :func:`evaluate_musdb` can run it in a worker."""

    protocol: Protocol_
    estimates: TrackEstimates
    header: dict[str, Any]
    result_path: str | None
    museval_path: str | None

    def result(self) -> tuple[dict[str, Any], str | None]:
        """``(the per-track result, museval's JSON or None)``."""
        res, museval_json = self.protocol.score(self.header["track"], self.header["subset"], self.estimates)
        return {**self.header, **res}, museval_json

    def run(self) -> str:
        """Score and write ``result_path`` (and ``museval_path``); returns the track name."""
        res, museval_json = self.result()
        if self.museval_path is not None and museval_json is not None:
            _write_text(Path(self.museval_path), museval_json)
        _write_json(Path(self.result_path), res)
        return self.header["track"]


def _scoring_job(track: TrackAudio, estimator: Estimator, protocol: Protocol_, out: Path | None,
                 save_estimates: bool, settings: Mapping[str, Any] | None) -> _ScoringJob:
    """Separate ``track`` (in this process), save the estimates if asked, and return the scoring still to do."""
    settings = dict(settings or _settings(protocol, None, track.subset))
    header = {
        "version": RESULT_VERSION,
        "track": track.name,
        "subset": track.subset,
        "method": estimator.name,
        "protocol": protocol.name,
        "non_standard": protocol.non_standard,
        "description": protocol.description,
        "settings": settings,
    }
    est = protocol.estimate(track, estimator)
    if out is None:
        return _ScoringJob(protocol, est, header, None, None)
    folder = _track_dir(out, estimator.name, protocol)
    if save_estimates:
        (folder / "estimates" / track.name).mkdir(parents=True, exist_ok=True)
        for s, wav in protocol.waveforms(est).items():
            audio.save(folder / "estimates" / track.name / f"{s}.wav", wav, est.sample_rate, bit_depth="32f")
    museval_path = folder / "museval" / track.subset / f"{track.name}.json"
    return _ScoringJob(protocol, est, header, str(_result_path(out, estimator.name, protocol, track.name)),
                       str(museval_path))


def evaluate_track(
    track: TrackAudio,
    estimator: Estimator,
    protocol: Protocol_,
    out: str | os.PathLike | None = None,
    save_estimates: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Separate one track and score it under ``protocol``, in this process.

    Args:
        out: output root (per-track JSON, museval's JSON, estimates if ``save_estimates``); None
            computes and returns the result without writing anything.
        settings: recorded in the result (default: the protocol's; :func:`evaluate_musdb` adds the run's).

    Returns:
        The per-track result dict (``"stems"``: per stem ``"sdr_median"`` and protocol extras).

    Raises:
        ValueError: the estimator returned a wrong shape or non-finite values, or the track is too short.
        FfmpegNotFoundError: museval cannot be imported because ffmpeg is missing.
    """
    job = _scoring_job(track, estimator, protocol, Path(out) if out is not None else None, save_estimates, settings)
    if job.result_path is None:
        return job.result()[0]
    job.run()
    return json.loads(Path(job.result_path).read_text())


def evaluate_musdb(
    root: str | os.PathLike,
    estimators: Sequence[Estimator],
    out: str | os.PathLike,
    protocol: Protocol_ | str = "sisec18",
    subset: str = "test",
    tracks: int | str | Sequence[str] | None = None,
    duration: float | None = None,
    jobs: int = 1,
    save_estimates: bool = False,
    is_wav: bool | None = None,
    progress: ProgressFn | None = None,
    run_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate estimators on MUSDB18 tracks, resumably, and write the summary.

    The summary covers the results in ``out`` made with this run's settings (protocol, subset, duration) on the
    selected tracks; results of earlier runs with other settings stay on disk but are not mixed in. It records
    the settings, the tracks and ``run_info`` (the caller's facts: model, queries).

    Args:
        estimators: the methods to evaluate (a model, oracles) — each gets its own row.
        tracks: None (all), a count, or names.
        jobs: worker processes for the metrics (separation stays in this process).
        progress: called as ``progress(message, done, total)`` after each finished item.

    Returns:
        The summary over the selected tracks (as written to ``out/summary.json``). Tracks that could not be
        scored (a stem that is digital silence in the evaluated range, a truncated stem) are listed under
        ``"failed"`` (track, method, error; also ``out/failed.json``) and the other tracks are still scored.

    Raises:
        ValueError: ``jobs`` < 1, no or duplicate estimator names, an unknown protocol or track, or an
            estimator that returns a wrong shape or non-finite values.
        FileNotFoundError: no MUSDB18 tracks under ``root``.
        FfmpegNotFoundError: ffmpeg is missing (musdb and museval need it).
    """
    proto = protocol_from_name(protocol) if isinstance(protocol, str) else protocol
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if not estimators:
        raise ValueError("nothing to evaluate: give a model and/or an oracle")
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique, got {names}")
    out_path = Path(out)
    db = open_musdb(root, subset=subset, is_wav=is_wav)
    selected = select_tracks(db, tracks)
    settings = _settings(proto, duration, subset)
    todo = [(t, e) for t in selected for e in estimators
            if not _is_done(_result_path(out_path, e.name, proto, t.name), _with_estimator(settings, e))]
    total = len(selected) * len(estimators)
    done = total - len(todo)
    if progress is not None:
        progress(f"{done} of {total} already done", done, total)
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) if jobs > 1 else None
    pending: list[Future] = []

    # a track that cannot be scored (a silent or truncated stem) is reported and the others go on
    failures: list[dict[str, str]] = []

    def _failed(track: str, method: str, exc: BaseException) -> None:
        failures.append({"track": track, "method": method, "error": str(exc)})
        if progress is not None:
            progress(f"FAILED {track}: {exc}", done, total)

    def _drain(limit: int) -> None:
        nonlocal done
        while len(pending) > limit:
            fut, track, method = pending.pop(0)
            done += 1
            try:
                name = fut.result()
            except (ValueError, KeyError) as exc:
                _failed(track, method, exc)
                continue
            if progress is not None:
                progress(f"scored {name}", done, total)

    try:
        loaded: dict[str, TrackAudio | Exception] = {}
        for t, est in todo:
            if t.name not in loaded:
                loaded.clear()
                try:
                    loaded[t.name] = load_track(t, duration=duration)
                except (ValueError, KeyError) as exc:
                    loaded[t.name] = exc
            track_audio = loaded[t.name]
            if isinstance(track_audio, Exception):
                done += 1
                _failed(t.name, est.name, track_audio)
                continue
            job = _scoring_job(track_audio, est, proto, out_path, save_estimates, _with_estimator(settings, est))
            if executor is not None:
                pending.append((executor.submit(job.run), t.name, est.name))
                _drain(jobs)
            else:
                done += 1
                try:
                    job.run()
                except ValueError as exc:
                    _failed(t.name, est.name, exc)
                    continue
                if progress is not None:
                    progress(f"{est.name}: {t.name}", done, total)
        _drain(0)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    summary = summarize(out_path, track_names=[t.name for t in selected], settings=settings,
                        run_info={**(run_info or {}), "methods": names})
    if failures:
        summary["failed"] = failures
        _write_json(out_path / "failed.json", failures)
    else:
        (out_path / "failed.json").unlink(missing_ok=True)
    return summary


def _run_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A result's settings without the estimator fingerprint (what makes results of one run comparable)."""
    return {k: v for k, v in json.loads(json.dumps(settings)).items() if k != "estimator"}


def summarize(out: str | os.PathLike, track_names: Sequence[str] | None = None,
              settings: Mapping[str, Any] | None = None, run_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate ``<method>/<protocol>/tracks/*.json`` under ``out``: median of per-track medians.

    Only results of ``track_names`` (None: all) made with ``settings`` (protocol, subset, duration; None: any)
    are aggregated. Writes ``out/summary.json`` and ``out/summary.md`` and returns the summary dict:
    ``{"settings", "run", "rows": [{"method", "protocol", "non_standard", "tracks", "sdr": {stem: median}, ...}]}``.
    """
    out_path = Path(out)
    wanted = _run_settings(settings) if settings is not None else None
    rows = []
    for track_dir in sorted(out_path.glob("*/*/tracks")):
        method, proto_name = track_dir.parent.parent.name, track_dir.parent.name
        results = []
        for f in sorted(track_dir.glob("*.json")):
            data = json.loads(f.read_text())
            if track_names is not None and data.get("track") not in track_names:
                continue
            if wanted is not None and _run_settings(data.get("settings") or {}) != wanted:
                continue
            results.append(data)
        if not results:
            continue
        stems = list(results[0]["stems"])
        row: dict[str, Any] = {
            "method": method,
            "protocol": proto_name,
            "non_standard": bool(results[0].get("non_standard", proto_name != "sisec18")),
            "description": results[0].get("description", ""),
            "tracks": len(results),
            "sdr": {s: _median(r["stems"][s]["sdr_median"] for r in results) for s in stems},
            # tracks in which a stem could not be scored (a silent reference), per stem
            "not_scored": {s: n for s in stems if (n := sum("not_scored" in r["stems"][s] for r in results))},
        }
        if proto_name == "sisec18":
            mdx = {s: [r["stems"][s]["mdx_sdr"] for r in results if r["stems"][s]["mdx_sdr"] is not None] for s in stems}
            row["mdx_sdr_mean"] = {s: float(np.mean(v)) if v else None for s, v in mdx.items()}
            row["mdx_sdr_median"] = {s: _median(v) for s, v in mdx.items()}
        vals = [v for v in row["sdr"].values() if v is not None]
        row["sdr_mean_over_stems"] = float(np.mean(vals)) if vals else None
        rows.append(row)
    summary = {"version": RESULT_VERSION, "aggregation": "median over frames/segments per track, then median over tracks",
               "settings": wanted, "tracks": list(track_names) if track_names is not None else None,
               "run": dict(run_info or {}), "rows": rows}
    out_path.mkdir(parents=True, exist_ok=True)
    _write_json(out_path / "summary.json", summary)
    _write_text(out_path / "summary.md", summary_markdown(summary))
    return summary


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """Markdown tables of a summary: BSS Eval SDR per protocol, and the MDX SDR for SiSEC18."""
    lines = ["# MUSDB18 SDR (dB)", ""]
    st, run = summary.get("settings") or {}, summary.get("run") or {}
    if st:
        dur = st.get("duration")
        lines += [f"Settings: subset `{st.get('subset')}`, {'whole tracks' if dur is None else f'first {dur:g} s of each track'}, "
                  f"{len(summary.get('tracks') or [])} track(s)."]
    if run.get("model"):
        queries = run.get("stem_queries")
        q = ", ".join(f"{k}: '{v}'" for k, v in queries.items()) if isinstance(queries, dict) else queries
        lines += [f"Model: `{run['model']}`; stem queries: {q}."]
    if st or run.get("model"):
        lines.append("")
    for proto_name in sorted({r["protocol"] for r in summary["rows"]}):
        rows = [r for r in summary["rows"] if r["protocol"] == proto_name]
        stems = list(rows[0]["sdr"])
        label = "NON-STANDARD protocol — not comparable with SiSEC18 numbers" if rows[0]["non_standard"] else "standard protocol"
        lines += [f"## protocol `{proto_name}` ({label})", "", rows[0]["description"], ""]
        lines += ["| method | " + " | ".join(stems) + " | mean | tracks |", "|---" * (len(stems) + 3) + "|"]
        for r in rows:
            lines.append(f"| {r['method']} | " + " | ".join(_fmt(r["sdr"][s]) for s in stems)
                         + f" | {_fmt(r['sdr_mean_over_stems'])} | {r['tracks']} |")
        lines.append("")
        for r in rows:
            if r.get("not_scored"):
                lines += [f"{r['method']}: not scored (reference silent in the evaluated range): "
                          + ", ".join(f"{s} in {n} track(s)" for s, n in r["not_scored"].items()), ""]
        if proto_name == "sisec18":
            lines += ["MDX-style whole-track SDR (mean over tracks):", ""]
            lines += ["| method | " + " | ".join(stems) + " |", "|---" * (len(stems) + 1) + "|"]
            for r in rows:
                lines.append(f"| {r['method']} | " + " | ".join(_fmt(r["mdx_sdr_mean"][s]) for s in stems) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"
