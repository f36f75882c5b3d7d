"""Weakly labeled clip datasets for SED training: AudioSet layout, PANNs HDF5 packs, CSV manifests.

Every dataset yields a :class:`WeakItem` ``(waveform, target, clip_id)``:

- ``waveform``: ``(samples,)`` float32 mono at the model's sample rate, exactly
  ``clip_samples`` long (zero-padded at the end, or cropped; see ``crop``);
- ``target``: ``(classes,)`` float32 multi-hot clip-level labels;
- ``clip_id``: a string naming the clip (YouTube id, HDF5 ``audio_name`` or manifest path).

Layouts:

(a) AudioSet: a segments CSV (``YTID, start_seconds, end_seconds, positive_labels``;
    ``#`` comment lines, quoted comma-separated MID lists) + ``class_labels_indices.csv``
    (``index, mid, display_name``) + a folder (searched recursively) of audio files named
    ``<YTID>.<ext>`` or ``Y<YTID>.<ext>`` (also ``[Y]<YTID>_<anything>.<ext>``, e.g.
    ``<YTID>_30.000_40.000.wav``), any extension in :data:`qsep_core.audio.AUDIO_EXTENSIONS`.
    Each file is expected to hold the labeled segment already (the way AudioSet downloads
    are usually stored); reading starts at the file's start. Clips missing on disk are
    counted and reported (:attr:`WeakLabelDataset.missing`), not fatal; none found is an error.
(b) PANNs-style HDF5 pack(s): datasets ``waveform`` int16 ``(N, samples)``, ``target``
    ``(N, classes)`` and ``audio_name`` ``(N,)``; int16 is scaled by 1/32767 as PANNs/HTS-AT do.
(c) CSV manifest: columns ``path`` (relative to the manifest's folder, or absolute) and
    ``labels`` (``;``-separated class names or MIDs), optional ``caption``.

All audio files are read through :mod:`qsep_core.audio`. Randomness (random crops, the
balanced sampler) comes from explicit, seeded ``torch.Generator`` objects.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from qsep_core import audio
from qsep_core.extras import require

__all__ = [
    "DatasetError",
    "ClassList",
    "WeakItem",
    "MissingReport",
    "WeakLabelDataset",
    "AudioSetDataset",
    "HDF5PackDataset",
    "ManifestDataset",
    "BalancedClassSampler",
    "read_audioset_segments",
    "CropMode",
    "DATA_FORMATS",
    "guess_format",
    "open_weak_dataset",
]

log = logging.getLogger(__name__)

CropMode = Literal["start", "center", "random"]
#: length of a YouTube id (AudioSet's YTID)
YTID_LEN = 11
#: int16 -> float scale of the PANNs / HTS-AT HDF5 packs (``int16_to_float32``: x / 32767).
INT16_SCALE = 32767.0


class DatasetError(ValueError):
    """A dataset description (CSV, HDF5 pack, folder) is malformed or yields no usable clip."""


# --------------------------------------------------------------------------------------------
# classes


@dataclass(frozen=True)
class ClassList:
    """Ordered list of the classes of a model: index <-> display name <-> MID.

    ``mids`` may be empty strings for classes that have none (own data). Lookups by name are
    exact first, then case-insensitive; a MID lookup is exact.
    """

    names: tuple[str, ...]
    mids: tuple[str, ...] = ()
    _lookup: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        mids = tuple(str(m) for m in self.mids) if self.mids else ("",) * len(names)
        if len(mids) != len(names):
            raise DatasetError(f"ClassList: {len(names)} names but {len(mids)} MIDs")
        if not names:
            raise DatasetError("ClassList: no classes")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DatasetError(f"ClassList: duplicate class names {dup[:10]}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "mids", mids)
        lookup: dict[str, int] = {}
        for i, n in enumerate(names):  # order of precedence: exact name, MID, lower-cased name
            lookup.setdefault(n.lower(), i)
        for i, m in enumerate(mids):
            if m:
                lookup[m] = i
        for i, n in enumerate(names):
            lookup[n] = i
        self._lookup.update(lookup)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def index(self, key: str) -> int:
        """Index of a class given its display name or MID; :class:`KeyError` naming close matches."""
        i = self.find(key)
        if i is None:
            close = [n for n in self.names if key.lower() in n.lower()][:5]
            hint = f"; similar names: {close}" if close else ""
            raise KeyError(f"unknown class {key!r} (not a name or MID of this {len(self)}-class list){hint}")
        return i

    def find(self, key: str) -> int | None:
        """Like :meth:`index` but ``None`` when unknown."""
        key = key.strip()
        i = self._lookup.get(key)
        return i if i is not None else self._lookup.get(key.lower())

    def name(self, index: int) -> str:
        return self.names[index]

    def mid(self, index: int) -> str:
        return self.mids[index]

    def multi_hot(self, keys: Iterable[str]) -> torch.Tensor:
        """``(classes,)`` float32 target with ones at the given names/MIDs (unknown ones raise)."""
        t = torch.zeros(len(self), dtype=torch.float32)
        for k in keys:
            t[self.index(k)] = 1.0
        return t

    def to_dict(self) -> dict[str, list[str]]:
        return {"names": list(self.names), "mids": list(self.mids)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassList":
        return cls(tuple(d["names"]), tuple(d.get("mids") or ()))

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "ClassList":
        """Read an AudioSet ``class_labels_indices.csv`` (``index, mid, display_name``)."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"class list not found: {path}")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            want = {"index", "mid", "display_name"}
            if reader.fieldnames is None or not want <= {h.strip() for h in reader.fieldnames}:
                raise DatasetError(f"{path}: expected columns index, mid, display_name; got {reader.fieldnames}")
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
        try:
            order = sorted(rows, key=lambda r: int(r["index"]))
        except ValueError as exc:
            raise DatasetError(f"{path}: non-integer index: {exc}") from exc
        idx = [int(r["index"]) for r in order]
        if idx != list(range(len(idx))):
            raise DatasetError(f"{path}: indices must be 0..{len(idx) - 1} without gaps")
        return cls(tuple(r["display_name"] for r in order), tuple(r["mid"] for r in order))

    @classmethod
    def generic(cls, n: int) -> "ClassList":
        """``class_0 .. class_{n-1}`` (an HDF5 pack without a class list)."""
        return cls(tuple(f"class_{i}" for i in range(n)))


# --------------------------------------------------------------------------------------------
# items, base dataset


class WeakItem(NamedTuple):
    """One weakly labeled clip. Batched by the default collate to ``(B, samples)``, ``(B, K)``, list."""

    waveform: torch.Tensor  # (samples,)
    target: torch.Tensor  # (classes,)
    clip_id: str


@dataclass
class MissingReport:
    """Clips listed in a dataset description but absent (or unreadable) on disk."""

    listed: int = 0
    missing: list[str] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)

    @property
    def found(self) -> int:
        return self.listed - len(self.missing)

    def summary(self, what: str = "dataset") -> str:
        s = f"{what}: {self.found} of {self.listed} listed clips found"
        if self.missing:
            s += f", {len(self.missing)} missing (e.g. {', '.join(self.missing[:3])})"
        if self.unknown_labels:
            top = sorted(self.unknown_labels.items(), key=lambda kv: -kv[1])[:3]
            s += f"; {sum(self.unknown_labels.values())} label(s) not in the class list ignored (e.g. {top})"
        return s


def fit_length(wave: torch.Tensor, length: int, crop: CropMode = "start", generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop or zero-pad ``wave`` ``(..., T)`` to ``(..., length)`` (padding at the end)."""
    t = wave.shape[-1]
    if t == length:
        return wave
    if t < length:
        return torch.nn.functional.pad(wave, (0, length - t))
    if crop == "start":
        start = 0
    elif crop == "center":
        start = (t - length) // 2
    elif crop == "random":
        start = int(torch.randint(0, t - length + 1, (1,), generator=generator))
    else:
        raise ValueError(f"crop must be 'start', 'center' or 'random', got {crop!r}")
    return wave[..., start:start + length]


class WeakLabelDataset(Dataset):
    """Base class: a list of clips with clip-level multi-hot targets.

    Attributes:
        classes: the :class:`ClassList` of the targets.
        sample_rate: rate of the returned waveforms.
        clip_samples: length of the returned waveforms.
        targets: ``(N, classes)`` float32 multi-hot targets of every usable clip (what the
            balanced sampler reads; no audio is decoded for it).
        clip_ids: ``N`` clip names.
        report: :class:`MissingReport` of what was listed but not found.
    """

    classes: ClassList
    targets: torch.Tensor
    clip_ids: list[str]
    report: MissingReport

    def __init__(self, classes: ClassList, sample_rate: int, clip_samples: int, crop: CropMode = "start", seed: int = 0):
        if sample_rate <= 0 or clip_samples <= 0:
            raise ValueError(f"sample_rate and clip_samples must be positive, got {sample_rate}, {clip_samples}")
        self.classes = classes
        self.sample_rate = int(sample_rate)
        self.clip_samples = int(clip_samples)
        self.crop: CropMode = crop
        self.seed = int(seed)
        self.epoch = 0
        #: skip-and-report of unreadable clips (set by training: ``BadClipGuard(max_bad_clips)``); None: strict
        self.bad_clips = None

    def _split_key(self, key: int) -> tuple[int, int]:
        """``(index, epoch)`` of an item key: ``key < N`` is an index (epoch :meth:`set_epoch`), larger keys are
        ``epoch * N + index`` (what a :class:`qsep_core.training.ResumableSampler` with ``epoch_keys`` yields)."""
        key, n = int(key), len(self)
        return (key, self.epoch) if key < n else (key % n, key // n)

    def _guarded(self, index: int, fn) -> "WeakItem | None":
        if self.bad_clips is None:
            return fn()
        return self.bad_clips.read(self.clip_ids[index], fn)

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops (``crop='random'``) from one epoch to the next."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def missing(self) -> list[str]:
        return self.report.missing

    def _generator(self, index: int, epoch: int | None = None) -> torch.Generator:
        # one seeded generator per (seed, epoch, item): the crop of an item does not depend on
        # which worker loads it or on the order of loading.
        epoch = self.epoch if epoch is None else epoch
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)

    def _finish(self, wave: torch.Tensor, index: int, epoch: int | None = None) -> torch.Tensor:
        gen = self._generator(index, epoch) if self.crop == "random" else None
        return fit_length(wave, self.clip_samples, self.crop, gen).contiguous()

    def class_counts(self) -> torch.Tensor:
        """``(classes,)`` number of clips carrying each label."""
        return self.targets.sum(0)


class _FileListDataset(WeakLabelDataset):
    """Clips that live as separate audio files (AudioSet folder, manifest)."""

    paths: list[Path]

    def __getitem__(self, key: int) -> WeakItem:
        index, epoch = self._split_key(key)

        def read() -> WeakItem:
            wave = self._read(self.paths[index], index, epoch)
            return WeakItem(self._finish(wave, index, epoch), self.targets[index].clone(), self.clip_ids[index])

        return self._guarded(index, read)

    def _read(self, path: Path, index: int, epoch: int | None = None) -> torch.Tensor:
        """Mono ``(samples,)`` at the model rate; long files are only read over the needed span."""
        inf = audio.info(path)
        need_s = self.clip_samples / self.sample_rate
        start_s = 0.0
        if inf.duration > need_s and self.crop != "start":
            # choose the crop on the file's own time axis, then read just that span
            n_file = inf.frames
            n_need = min(n_file, int(math.ceil(need_s * inf.sample_rate)))
            if self.crop == "center":
                first = (n_file - n_need) // 2
            else:
                first = int(torch.randint(0, n_file - n_need + 1, (1,), generator=self._generator(index, epoch)))
            start_s = first / inf.sample_rate
        duration = min(inf.duration - start_s, need_s)
        wav, _ = audio.load(path, sample_rate=self.sample_rate, channels=1, start=start_s, duration=duration)
        return wav[0]  # (samples,)

    def _finish(self, wave: torch.Tensor, index: int, epoch: int | None = None) -> torch.Tensor:
        # the crop was already chosen while reading; only pad / trim resampling rounding here
        return fit_length(wave, self.clip_samples, "start").contiguous()


# --------------------------------------------------------------------------------------------
# (a) AudioSet layout


@dataclass(frozen=True)
class AudioSetSegment:
    ytid: str
    start: float
    end: float
    labels: tuple[str, ...]  # MIDs


def read_audioset_segments(path: str | os.PathLike) -> list[AudioSetSegment]:
    """Parse an AudioSet segments CSV (``balanced_train_segments.csv`` etc.).

    Handles the official quirks: ``#`` comment lines (the column header is one of them),
    a space after each comma, and the MID list quoted with commas inside. A header row
    without ``#`` is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"segments CSV not found: {path}")
    out: list[AudioSetSegment] = []
    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for lineno, row in enumerate(csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True), start=1):
        if not row:
            continue
        if row[0].strip().upper() == "YTID":
            continue
        if len(row) < 4:
            raise DatasetError(f"{path}: row {lineno} has {len(row)} fields, expected YTID, start_seconds, end_seconds, positive_labels: {row}")
        try:
            start, end = float(row[1]), float(row[2])
        except ValueError as exc:
            raise DatasetError(f"{path}: row {lineno}: bad start/end seconds {row[1:3]}") from exc
        # the MID list is normally one quoted field; tolerate an unquoted list spilling into more fields
        mids = ",".join(row[3:]).replace('"', "").split(",")
        out.append(AudioSetSegment(row[0].strip(), start, end, tuple(m.strip() for m in mids if m.strip())))
    return out


def index_audio_folder(folder: str | os.PathLike) -> dict[str, Path]:
    """Map file stem -> path for every audio file under ``folder`` (recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"audio folder not found: {folder}")
    found: dict[str, Path] = {}
    derived: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and audio.is_audio_path(p):
            found.setdefault(p.stem, p)
            # "<YTID>_<start>[_<end>]" / "Y<YTID>_..." (YouTube ids are 11 characters)
            stem = p.stem[1:] if p.stem.startswith("Y") and len(p.stem) > YTID_LEN + 1 and p.stem[YTID_LEN + 1] == "_" else p.stem
            if len(stem) > YTID_LEN and stem[YTID_LEN] == "_":
                derived.setdefault(stem[:YTID_LEN], p)
    for k, p in derived.items():
        found.setdefault(k, p)
    return found


class AudioSetDataset(_FileListDataset):
    """AudioSet layout: segments CSV + class_labels_indices.csv + audio folder.

    Args:
        segments_csv: ``YTID, start_seconds, end_seconds, positive_labels`` CSV.
        audio_dir: folder with ``<YTID>.<ext>`` or ``Y<YTID>.<ext>`` files (searched recursively).
        classes: the class list (e.g. ``ClassList.from_csv("class_labels_indices.csv")``).
        sample_rate, clip_samples: output rate and length (the model's).
        crop: where to cut files longer than a clip.
        seed: seed of the random crops.

    Raises:
        DatasetError: the CSV is malformed or none of its clips is on disk.
    """

    def __init__(
        self,
        segments_csv: str | os.PathLike,
        audio_dir: str | os.PathLike,
        classes: ClassList,
        sample_rate: int,
        clip_samples: int,
        crop: CropMode = "start",
        seed: int = 0,
    ):
        super().__init__(classes, sample_rate, clip_samples, crop, seed)
        segments = read_audioset_segments(segments_csv)
        files = index_audio_folder(audio_dir)
        report = MissingReport(listed=len(segments))
        paths: list[Path] = []
        ids: list[str] = []
        rows: list[torch.Tensor] = []
        for seg in segments:
            path = files.get(seg.ytid) or files.get("Y" + seg.ytid)
            if path is None:
                report.missing.append(seg.ytid)
                continue
            t = torch.zeros(len(classes), dtype=torch.float32)
            for mid in seg.labels:
                i = classes.find(mid)
                if i is None:
                    report.unknown_labels[mid] = report.unknown_labels.get(mid, 0) + 1
                else:
                    t[i] = 1.0
            paths.append(path)
            ids.append(seg.ytid)
            rows.append(t)
        if not paths:
            raise DatasetError(
                f"none of the {report.listed} clips of {segments_csv} was found in {audio_dir} "
                f"(looked for <YTID>.<ext> and Y<YTID>.<ext> with ext in {audio.AUDIO_EXTENSIONS})"
            )
        self.paths, self.clip_ids, self.report = paths, ids, report
        self.targets = torch.stack(rows)  # (N, classes)
        (log.warning if report.missing or report.unknown_labels else log.info)(report.summary(str(segments_csv)))


# --------------------------------------------------------------------------------------------
# (c) CSV manifest


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a manifest CSV with at least ``path`` and ``labels`` columns."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        cols = {c.strip() for c in (reader.fieldnames or [])}
        if not {"path", "labels"} <= cols:
            raise DatasetError(f"{path}: a manifest needs the columns 'path' and 'labels' (';'-separated); it has {sorted(cols)}")
        return [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]


def split_labels(field_text: str) -> list[str]:
    return [s.strip() for s in field_text.split(";") if s.strip()]


def manifest_classes(path: str | os.PathLike) -> ClassList:
    """Class list made of the sorted union of the labels a manifest uses."""
    names = sorted({lab for r in read_manifest(path) for lab in split_labels(r["labels"])})
    if not names:
        raise DatasetError(f"{path}: no labels in the manifest")
    return ClassList(tuple(names))


class ManifestDataset(_FileListDataset):
    """Generic CSV manifest: ``path, labels[, caption]``, labels ``;``-separated names (or MIDs).

    Relative paths are taken from the manifest's folder. Labels that are not in ``classes``
    are counted in :attr:`report` and ignored; files missing on disk are counted too.
    ``captions`` keeps the optional caption column (empty strings when absent).
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        classes: ClassList | None,
        sample_rate: int,
        clip_samples: int,
        crop: CropMode = "start",
        seed: int = 0,
    ):
        classes = classes or manifest_classes(manifest)
        super().__init__(classes, sample_rate, clip_samples, crop, seed)
        manifest = Path(manifest)
        rows_in = read_manifest(manifest)
        report = MissingReport(listed=len(rows_in))
        paths: list[Path] = []
        ids: list[str] = []
        caps: list[str] = []
        rows: list[torch.Tensor] = []
        for r in rows_in:
            p = Path(r["path"]).expanduser()
            if not p.is_absolute():
                p = manifest.parent / p
            if not p.is_file():
                report.missing.append(r["path"])
                continue
            t = torch.zeros(len(classes), dtype=torch.float32)
            for lab in split_labels(r["labels"]):
                i = classes.find(lab)
                if i is None:
                    report.unknown_labels[lab] = report.unknown_labels.get(lab, 0) + 1
                else:
                    t[i] = 1.0
            paths.append(p)
            ids.append(r["path"])
            caps.append(r.get("caption", ""))
            rows.append(t)
        if not paths:
            raise DatasetError(f"none of the {report.listed} files listed in {manifest} exists")
        self.paths, self.clip_ids, self.captions, self.report = paths, ids, caps, report
        self.targets = torch.stack(rows)  # (N, classes)
        (log.warning if report.missing or report.unknown_labels else log.info)(report.summary(str(manifest)))


# --------------------------------------------------------------------------------------------
# (b) PANNs-style HDF5 packs


class HDF5PackDataset(WeakLabelDataset):
    """PANNs / HTS-AT HDF5 pack(s): ``waveform`` int16 ``(N, samples)``, ``target`` ``(N, K)``, ``audio_name``.

    Args:
        packs: one or more ``.h5`` files (concatenated in the given order).
        classes: class list (``None``: ``class_0..`` of the pack's width).
        sample_rate: model rate. ``pack_sample_rate``: rate of the stored waveforms (default: the
            file attribute ``sample_rate`` if present, else ``sample_rate``); resampled when they differ.
        clip_samples: output length.

    The files are opened lazily in each DataLoader worker (h5py handles do not survive fork).
    """

    def __init__(
        self,
        packs: str | os.PathLike | Sequence[str | os.PathLike],
        classes: ClassList | None,
        sample_rate: int,
        clip_samples: int,
        crop: CropMode = "start",
        seed: int = 0,
        pack_sample_rate: int | None = None,
    ):
        h5py = require("h5py", "hdf5", "reading HDF5 packs")
        if isinstance(packs, (str, os.PathLike)):
            packs = [packs]
        self.packs = [Path(p) for p in packs]
        if not self.packs:
            raise DatasetError("no HDF5 pack given")
        ids: list[str] = []
        rows: list[torch.Tensor] = []
        self._where: list[tuple[int, int]] = []
        rates: set[int] = set()
        for pi, p in enumerate(self.packs):
            if not p.is_file():
                raise DatasetError(f"HDF5 pack not found: {p}")
            with h5py.File(p, "r") as f:
                for key in ("waveform", "target"):
                    if key not in f:
                        raise DatasetError(f"{p}: HDF5 pack lacks the dataset {key!r} (has {sorted(f.keys())})")
                wf, tg = f["waveform"], f["target"]
                if wf.ndim != 2 or wf.dtype.kind not in "if":
                    raise DatasetError(f"{p}: 'waveform' must be (N, samples) int16 or float, got {wf.shape} {wf.dtype}")
                if tg.ndim != 2 or tg.shape[0] != wf.shape[0]:
                    raise DatasetError(f"{p}: 'target' must be (N, classes) with N={wf.shape[0]}, got {tg.shape}")
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["audio_name"][:]] if "audio_name" in f else [f"{p.stem}:{i}" for i in range(wf.shape[0])]
                if "sample_rate" in f.attrs:
                    rates.add(int(f.attrs["sample_rate"]))
                rows.append(torch.from_numpy(tg[:].astype("float32")))
                ids.extend(names)
                self._where.extend((pi, i) for i in range(wf.shape[0]))
        targets = torch.cat(rows)  # (N, K)
        if classes is None:
            classes = ClassList.generic(targets.shape[1])
        if targets.shape[1] != len(classes):
            raise DatasetError(f"HDF5 targets have {targets.shape[1]} classes but the class list has {len(classes)}")
        if len(rates) > 1:
            raise DatasetError(f"HDF5 packs disagree on sample_rate: {sorted(rates)}")
        super().__init__(classes, sample_rate, clip_samples, crop, seed)
        self.pack_sample_rate = int(pack_sample_rate or (rates.pop() if rates else sample_rate))
        self.targets = (targets > 0).float()
        self.clip_ids = ids
        self.report = MissingReport(listed=len(ids))
        self._files: dict[int, object] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = {}  # never pickle open handles into workers
        return state

    def _file(self, pi: int):
        h5py = require("h5py", "hdf5", "reading HDF5 packs")
        f = self._files.get(pi)
        if f is None:
            f = self._files[pi] = h5py.File(self.packs[pi], "r")
        return f

    def __getitem__(self, key: int) -> WeakItem:
        index, epoch = self._split_key(key)

        def read() -> WeakItem:
            pi, row = self._where[index]
            data = self._file(pi)["waveform"][row]
            wave = torch.from_numpy(data.astype("float32"))
            if data.dtype.kind == "i":
                wave = wave / INT16_SCALE
            if self.pack_sample_rate != self.sample_rate:
                wave = audio.resample(wave, self.pack_sample_rate, self.sample_rate)
            return WeakItem(self._finish(wave, index, epoch), self.targets[index].clone(), self.clip_ids[index])

        return self._guarded(index, read)


# --------------------------------------------------------------------------------------------
# balanced sampling


class BalancedClassSampler(Sampler[int]):
    """Class-balanced sampling as HTS-AT / PANNs: each round visits every class once, in a
    shuffled order, and draws one random clip that carries that class.

    Args:
        targets: ``(N, classes)`` multi-hot targets (``dataset.targets``).
        num_samples: clips per epoch over all ranks (default ``N``, as the official queue).
        seed: base seed; epoch ``e`` uses ``torch.Generator().manual_seed(seed + e)``.
        rank, world_size: this process's share under DDP. Every rank draws the same global
            sequence and keeps every ``world_size``-th item from ``rank`` on, so the ranks see
            disjoint parts of one balanced sequence. Training code passes the trainer's
            ``global_rank`` / ``world_size`` and runs Lightning with ``use_distributed_sampler=False``
            (Lightning still calls :meth:`set_epoch` each epoch).

    Classes without any clip are skipped (see :attr:`empty_classes`).
    """

    def __init__(self, targets: torch.Tensor, num_samples: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1):
        if targets.dim() != 2:
            raise ValueError(f"targets must be (N, classes), got shape {tuple(targets.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        pos = targets > 0
        self.per_class = [torch.nonzero(pos[:, k]).flatten() for k in range(pos.shape[1])]
        self.active = torch.tensor([k for k, c in enumerate(self.per_class) if len(c)], dtype=torch.long)
        self.empty_classes = [k for k, c in enumerate(self.per_class) if not len(c)]
        if len(self.active) == 0:
            raise DatasetError("balanced sampler: no class has any clip")
        total = int(num_samples if num_samples is not None else targets.shape[0])
        if total <= 0:
            raise ValueError(f"num_samples must be positive, got {total}")
        self.world_size, self.rank, self.seed, self.epoch = int(world_size), int(rank), int(seed), 0
        self.per_rank = math.ceil(total / self.world_size)
        self.total = self.per_rank * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.per_rank

    def global_sequence(self) -> torch.Tensor:
        """``(total,)`` indices of the whole epoch (all ranks)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        out: list[torch.Tensor] = []
        n = 0
        while n < self.total:
            order = self.active[torch.randperm(len(self.active), generator=g)]
            picks = torch.stack([
                self.per_class[int(k)][torch.randint(len(self.per_class[int(k)]), (1,), generator=g)][0] for k in order
            ])
            out.append(picks)
            n += len(picks)
        return torch.cat(out)[: self.total]

    def __iter__(self) -> Iterator[int]:
        seq = self.global_sequence()[self.rank::self.world_size]
        return iter(seq.tolist())


# --------------------------------------------------------------------------------------------
# one entry point for the three layouts (training and mining)

#: the weak-label layouts :func:`open_weak_dataset` reads
DATA_FORMATS = ("manifest", "hdf5", "audioset")


def guess_format(source: str | os.PathLike | Sequence[str | os.PathLike], audio_dir: str | os.PathLike | None = None) -> str:
    """The layout of ``source``: ``"hdf5"`` for ``.h5`` / ``.hdf5`` packs, ``"audioset"`` when an audio
    folder is given (a segments CSV), else ``"manifest"`` (a ``path,labels`` CSV)."""
    first = source[0] if isinstance(source, (list, tuple)) and source else source
    if str(first).lower().endswith((".h5", ".hdf5")):
        return "hdf5"
    return "audioset" if audio_dir else "manifest"


def open_weak_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    format: str | None,
    classes: ClassList | None,
    sample_rate: int,
    clip_samples: int,
    crop: CropMode = "start",
    seed: int = 0,
    audio_dir: str | os.PathLike | None = None,
    pack_sample_rate: int | None = None,
) -> WeakLabelDataset:
    """The weak-label dataset at ``source`` in one of :data:`DATA_FORMATS`, yielding clips of
    ``clip_samples`` samples at ``sample_rate`` Hz.

    Args:
        source: a manifest CSV, one HDF5 pack or a list of packs, or an AudioSet segments CSV.
        format: one of :data:`DATA_FORMATS`; None: :func:`guess_format`.
        classes: the class list (None: from the manifest's labels / the pack's width; the
            ``audioset`` layout needs one).
        audio_dir: the clips of the ``audioset`` layout.
        pack_sample_rate: ``hdf5``: rate of the stored waveforms when the packs do not say it.

    Raises:
        DatasetError: an unknown format, an ``audioset`` source without ``audio_dir`` or ``classes``,
            or what the dataset itself raises (missing files, malformed CSV or pack).
    """
    fmt = format or guess_format(source, audio_dir)
    if fmt == "manifest":
        return ManifestDataset(source, classes, sample_rate, clip_samples, crop=crop, seed=seed)
    if fmt == "hdf5":
        return HDF5PackDataset(source, classes, sample_rate, clip_samples, crop=crop, seed=seed,
                               pack_sample_rate=pack_sample_rate)
    if fmt == "audioset":
        if not audio_dir or classes is None:
            raise DatasetError("the audioset format needs the folder of the clips (audio_dir) and a class list "
                               "(class_labels_indices.csv, or a detector with class names)")
        return AudioSetDataset(source, audio_dir, classes, sample_rate, clip_samples, crop=crop, seed=seed)
    raise DatasetError(f"unknown data format {fmt!r}; choose one of {list(DATA_FORMATS)}")
