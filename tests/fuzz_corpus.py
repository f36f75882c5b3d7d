"""A corpus of small bad or unusual inputs, made on the fly, each with the outcome qsep owes it.

:func:`audio_corpus` writes audio inputs (valid but unusual ones that must separate, and broken ones that
must fail with a named cause); :func:`model_corpus` writes broken model folders. ``long=True`` adds more
rates, codecs, lengths and random-byte variants (the slow-marked tests use it).

Each case is a :class:`Case`: the path, ``"ok"`` or ``"error"``, and for errors a fragment the one-line
message must contain.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass
class Case:
    path: Path
    outcome: str  # "ok" | "error"
    expect: str = ""  # fragment of the error message (errors only)
    kind: str = ""  # what the case is about, for reports


def _tone(rate: int, seconds: float, channels: int = 1, level: float = 0.3, seed: int = 0) -> np.ndarray:
    n = max(1, int(round(rate * seconds)))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    x = level * np.sin(2 * np.pi * 440.0 * t) + 0.02 * rng.standard_normal(n)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def _ffmpeg(out: Path, codec: list[str], seconds: float = 1.0) -> bool:
    if shutil.which("ffmpeg") is None:
        return False
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
           "-ac", "2", *codec, str(out)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def audio_corpus(root: Path, long: bool = False) -> list[Case]:
    """Write the audio cases under ``root`` (created) and return them."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def ok(name: str, data: np.ndarray, rate: int, kind: str, **kw) -> None:
        p = root / name
        sf.write(p, data, rate, **kw)
        cases.append(Case(p, "ok", kind=kind))

    def bad(name: str, content: bytes, expect: str, kind: str) -> None:
        p = root / name
        p.write_bytes(content)
        cases.append(Case(p, "error", expect, kind))

    # --- valid but unusual: must separate
    ok("pcm16_stereo_44k.wav", _tone(44100, 0.5, 2), 44100, "common rate, stereo", subtype="PCM_16")
    ok("float_mono_16k.wav", _tone(16000, 0.5), 16000, "float wav", subtype="FLOAT")
    ok("one_sample.wav", _tone(8000, 1 / 8000), 8000, "1 sample", subtype="PCM_16")
    ok("odd_rate_11127.wav", _tone(11127, 0.5), 11127, "rate without common divisor", subtype="PCM_16")
    ok("odd_rate_7919.flac", _tone(7919, 0.3), 7919, "prime rate")
    ok("vorbis.ogg", _tone(22050, 0.5), 22050, "ogg vorbis", format="OGG", subtype="VORBIS")
    ok("gsm610.wav", _tone(8000, 0.5), 8000, "unseekable codec (GSM 6.10)", subtype="GSM610")
    ok("g721.wav", _tone(8000, 0.5), 8000, "unseekable codec (G.721)", subtype="G721_32")
    ok("nms_adpcm.wav", _tone(8000, 0.5), 8000, "unseekable codec (NMS ADPCM)", subtype="NMS_ADPCM_16")
    ok("...wav", _tone(16000, 0.3), 16000, "name that is only dots", format="WAV", subtype="PCM_16")
    ok("silence.wav", np.zeros((4000, 1), np.float32), 16000, "digital silence", subtype="PCM_16")
    for ext, codec in ((".m4a", ["-c:a", "aac"]), (".mp4", ["-c:a", "aac"]), (".mkv", ["-c:a", "flac"]),
                       (".webm", ["-c:a", "libopus"])):
        p = root / f"container_{ext[1:]}{ext}"
        if _ffmpeg(p, codec, 0.5):
            cases.append(Case(p, "ok", kind=f"{ext} through ffmpeg"))

    # --- broken: must fail with a named cause
    bad("empty_bytes.wav", b"", "cannot decode", "zero-byte file")
    bad("random.wav", np.random.default_rng(1).bytes(3000), "cannot decode", "random bytes")
    bad("text.mp3", b"this is not an mp3 file\n" * 20, "cannot decode", "bad mp3")
    bad("random.m4a", np.random.default_rng(2).bytes(3000), "cannot decode", "bad m4a")
    head = (root / "pcm16_stereo_44k.wav").read_bytes()
    bad("truncated_header.wav", head[:30], "cannot decode", "truncated header")
    p = root / "zero_frames.wav"
    sf.write(p, np.zeros((0, 1), np.float32), 16000)
    cases.append(Case(p, "error", "no samples", "zero frames"))
    x = _tone(16000, 0.5)
    x[5000, 0] = np.nan
    p = root / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    cases.append(Case(p, "error", "frame 5000 (0.312 s)", "NaN sample"))
    x = _tone(16000, 0.5)
    x[7000, 0] = np.inf
    p = root / "inf.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    cases.append(Case(p, "error", "NaN/inf", "inf sample"))
    p = root / "huge_finite.wav"
    sf.write(p, _tone(16000, 0.5, level=3.0e38), 16000, subtype="FLOAT")
    cases.append(Case(p, "error", "far beyond full scale", "finite input near float32 max"))
    p = root / "fifo.wav"
    os.mkfifo(p)
    cases.append(Case(p, "error", "FIFO", "named pipe (would hang)"))
    p = root / "folder.wav"
    p.mkdir()
    cases.append(Case(p, "error", "folder holds no audio files", "folder with an audio name"))
    if os.geteuid() != 0:  # root reads every file
        p = root / "unreadable.wav"
        sf.write(p, _tone(16000, 0.2), 16000)
        p.chmod(0)
        cases.append(Case(p, "error", "permission denied", "unreadable file"))

    if long:
        for rate in (4000, 6000, 12345, 22254, 37800, 44056, 50000, 96000, 192000):
            ok(f"rate_{rate}.wav", _tone(rate, 0.4, 2), rate, f"rate {rate}", subtype="PCM_16")
        for subtype in ("PCM_U8", "PCM_24", "PCM_32", "DOUBLE", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM",
                        "NMS_ADPCM_24", "NMS_ADPCM_32", "G721_32"):
            ok(f"subtype_{subtype.lower()}.wav", _tone(8000, 0.6, 1), 8000, f"wav {subtype}", subtype=subtype)
        ok("six_channels.wav", _tone(16000, 0.3, 6), 16000, "6 channels", subtype="PCM_16")
        ok("long_odd_rate.wav", _tone(11127, 10.0), 11127, "10 s at 11127 Hz", subtype="PCM_16")
        ok("aiff.aiff", _tone(16000, 0.3), 16000, "aiff", format="AIFF", subtype="PCM_16")
        ok("flac24.flac", _tone(48000, 0.5, 2), 48000, "flac 24-bit", subtype="PCM_24")
        for seed in range(3, 13):
            bad(f"random_{seed}.flac", np.random.default_rng(seed).bytes(200 * seed), "cannot decode",
                "random bytes")
        for cut in (44, 100, 1000):
            bad(f"cut_{cut}.flac", _flac_bytes(root)[:cut], "", "truncated flac")
    return cases


def _flac_bytes(root: Path) -> bytes:
    p = root / ".template.flac"
    if not p.exists():
        sf.write(p, _tone(16000, 1.0), 16000)
    return p.read_bytes()


# ------------------------------------------------------------------------------------------- model folders

def _st(header: object, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def model_corpus(good: Path, root: Path, long: bool = False) -> list[Case]:
    """Broken copies of the model folder ``good`` under ``root``; every one must be refused with the cause."""
    root.mkdir(parents=True, exist_ok=True)
    base = json.loads((good / "config.json").read_text())
    weights = (good / "model.safetensors").read_bytes()
    cases: list[Case] = []

    def folder(name: str, config: object = None, raw: bytes | None = None, st: bytes | None = None,
               expect: str = "") -> None:
        d = root / name
        d.mkdir()
        (d / "config.json").write_bytes(raw if raw is not None else json.dumps(config).encode())
        (d / "model.safetensors").write_bytes(weights if st is None else st)
        cases.append(Case(d, "error", expect, name))

    def sep(change) -> dict:
        c = json.loads(json.dumps(base))
        change(c["components"]["separator"]["config"])
        return c

    folder("top_level_list", raw=b"[]", expect="expected a JSON object")
    folder("non_utf8", raw=b'{"format": "qsep-model\xff"}', expect="not UTF-8")
    folder("not_json", raw=b"{format", expect="not valid JSON")
    folder("component_is_int", {**base, "components": {"separator": 5}}, expect="must be an object")
    c = json.loads(json.dumps(base))
    c["components"]["separator"].pop("kind")
    folder("component_without_kind", c, expect="has no kind")
    folder("channels_string", sep(lambda s: s.__setitem__("channels", "abc")), expect="expected a list")
    folder("unknown_field", sep(lambda s: s.__setitem__("bogus", 1)), expect="unknown field")
    folder("sample_rate_zero", sep(lambda s: s.__setitem__("sample_rate", 0)), expect="sample_rate must be > 0")
    folder("n_fft_1e9", sep(lambda s: s.__setitem__("n_fft", 1e9)), expect="does not fit")
    folder("huge_channels", sep(lambda s: s.__setitem__("channels", [4096, 8192, 16384, 32768, 65536])),
           expect="does not fit")
    folder("header_list", base, st=_st([1, 2]), expect="not a valid safetensors file")
    folder("header_int_entry", base, st=_st({"a": 5}), expect="not a valid safetensors file")
    folder("string_offsets", base, st=_st({"separator.x": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}},
                                          b"\0" * 8), expect="not a valid safetensors file")
    folder("negative_offsets", base, st=_st({"separator.x": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
                                            b"\0" * 8), expect="not a valid safetensors file")
    folder("overlapping_offsets", base, st=_st({
        "separator.x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "separator.y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    }, b"\0" * 8), expect="not a valid safetensors file")
    if long:
        for key, value in (("n_fft", -4), ("hop_length", 0), ("cond_dim", "x"), ("channels", [16, -1]),
                           ("mask", "banana"), ("input_norm", "yes"), ("bn_momentum", [1]), ("n_fft", 1.5)):
            folder(f"field_{key}_{str(value)[:6]}", sep(lambda s, k=key, v=value: s.__setitem__(k, v)),
                   expect="config")
        folder("truncated_weights", base, st=weights[: len(weights) // 2], expect="not a valid safetensors file")
        folder("format_version_str", {**base, "format_version": "1"}, expect="format_version")
        folder("metadata_list", {**base, "metadata": []}, expect="metadata")
    return cases
