"""Weakly labeled datasets (AudioSet layout, HDF5 packs, CSV manifests) and the balanced sampler."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from qsep_core import audio
from sed.data import (
    AudioSetDataset,
    BalancedClassSampler,
    ClassList,
    DatasetError,
    HDF5PackDataset,
    ManifestDataset,
    fit_length,
    guess_format,
    open_weak_dataset,
    read_audioset_segments,
)

# ------------------------------------------------------------------------------------------
# synthetic weak-label corpus: one tone frequency per class (helpers also used by test_train)

TONE_CLASSES = (("low", "/m/t0", 300.0), ("mid", "/m/t1", 700.0), ("high", "/m/t2", 1500.0), ("top", "/m/t3", 3000.0))


def tone_clip(freqs: list[float], sample_rate: int, samples: int, g: torch.Generator) -> torch.Tensor:
    """``(1, samples)``: the tones at ``freqs`` with random phase/level, plus a little noise."""
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    x = torch.zeros(samples, dtype=torch.float64)
    for f in freqs:
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        amp = 0.2 + 0.2 * float(torch.rand(1, generator=g))
        x += amp * torch.sin(2 * math.pi * f * t + phase)
    x += 0.01 * torch.randn(samples, generator=g, dtype=torch.float64)
    return x.float()[None]


def write_class_csv(path: Path, classes=TONE_CLASSES) -> None:
    lines = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (name, mid, _) in enumerate(classes)]
    path.write_text("\n".join(lines) + "\n")


def write_tone_corpus(
    root: Path,
    sample_rate: int,
    samples: int,
    per_class: int,
    seed: int,
    prefix: str = "c",
    classes=TONE_CLASSES,
    pairs: int = 0,
) -> list[tuple[str, list[int]]]:
    """Write ``per_class`` single-tone clips per class (+ ``pairs`` two-tone clips) as wav files
    under ``root``; returns ``[(11-char clip id, [class indices])]``."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    items: list[tuple[str, list[int]]] = []
    for k in range(len(classes)):
        for j in range(per_class):
            items.append((f"{prefix}{k:02d}{j:08d}"[:11], [k]))
    for j in range(pairs):
        a, b = j % len(classes), (j + 1) % len(classes)
        items.append((f"{prefix}p{j:09d}"[:11], [a, b]))
    for cid, labels in items:
        wav = tone_clip([classes[k][2] for k in labels], sample_rate, samples, g)
        audio.save(root / f"{cid}.wav", wav, sample_rate)
    return items


def write_manifest(path: Path, items, audio_rel: str, classes=TONE_CLASSES) -> None:
    lines = ["path,labels,caption"]
    for cid, labels in items:
        names = ";".join(classes[k][0] for k in labels)
        lines.append(f'{audio_rel}/{cid}.wav,{names},"a tone, {names}"')
    path.write_text("\n".join(lines) + "\n")


def write_segments(path: Path, items, classes=TONE_CLASSES) -> None:
    lines = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        f"# num_ytids={len(items)}, num_segs={len(items)}, num_unique_labels={len(classes)}, num_positive_labels=0",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    for cid, labels in items:
        mids = ",".join(classes[k][1] for k in labels)
        lines.append(f'{cid}, 30.000, 40.000, "{mids}"')
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------
# class list


def test_class_list_from_audioset_csv_with_quoted_commas(tmp_path):
    p = tmp_path / "class_labels_indices.csv"
    p.write_text('index,mid,display_name\n1,/m/05zppz,"Male speech, man speaking"\n0,/m/09x0r,"Speech"\n')
    cl = ClassList.from_csv(p)
    assert cl.names == ("Speech", "Male speech, man speaking")
    assert cl.index("/m/05zppz") == 1
    assert cl.index("male speech, man speaking") == 1  # case-insensitive fallback
    assert cl.find("Dog") is None
    with pytest.raises(KeyError, match="Dog"):
        cl.index("Dog")
    assert torch.equal(cl.multi_hot(["Speech", "/m/05zppz"]), torch.ones(2))
    assert ClassList.from_dict(cl.to_dict()) == cl


def test_class_list_rejects_gaps_and_duplicates(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n")
    with pytest.raises(DatasetError, match="without gaps"):
        ClassList.from_csv(p)
    with pytest.raises(DatasetError, match="duplicate"):
        ClassList(("A", "A"))


# ------------------------------------------------------------------------------------------
# (a) AudioSet layout


def test_read_audioset_segments_quirks(tmp_path):
    p = tmp_path / "seg.csv"
    p.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '\n'
        '-0SdAVK79lg, 0.000, 10.000, "/m/0140xf"\n'
        "-0vPFx-wRRI, 5.000, 15.000, /m/a\n"
    )
    segs = read_audioset_segments(p)
    assert [s.ytid for s in segs] == ["--PJHxphWEs", "-0SdAVK79lg", "-0vPFx-wRRI"]
    assert segs[0].labels == ("/m/09x0r", "/t/dd00088")
    assert segs[0].start == 30.0 and segs[0].end == 40.0
    assert segs[2].labels == ("/m/a",)


def test_read_audioset_segments_bad_row(tmp_path):
    p = tmp_path / "seg.csv"
    p.write_text("abc, 1.0\n")
    with pytest.raises(DatasetError, match="fields"):
        read_audioset_segments(p)


def test_audioset_dataset_finds_files_reports_missing(tmp_path, caplog):
    sr, n = 8000, 4000
    items = write_tone_corpus(tmp_path / "raw", sr, n, per_class=1, seed=1)
    # store them the AudioSet ways: <id>.wav, Y<id>.flac in a sub-folder, and one missing
    adir = tmp_path / "audio"
    (adir / "shard1").mkdir(parents=True)
    kept = []
    for i, (cid, labels) in enumerate(items):
        wav, _ = audio.load(tmp_path / "raw" / f"{cid}.wav")
        if i == 0:
            continue  # missing on disk
        dest = [adir / f"{cid}_30.000_40.000.wav", adir / f"{cid}.wav", adir / "shard1" / f"Y{cid}.flac"][i % 3]
        audio.save(dest, wav, sr)
        kept.append((cid, labels, wav))
    seg = tmp_path / "seg.csv"
    write_segments(seg, items + [("unknownlab1", [0])])
    audio.save(adir / "unknownlab1.wav", kept[0][2], sr)
    # a label the class list lacks is counted, not fatal
    seg.write_text(seg.read_text().replace('unknownlab1, 30.000, 40.000, "/m/t0"', 'unknownlab1, 30.000, 40.000, "/m/t0,/m/zzz"'))
    cls_csv = tmp_path / "class_labels_indices.csv"
    write_class_csv(cls_csv)
    classes = ClassList.from_csv(cls_csv)

    with caplog.at_level("WARNING"):
        ds = AudioSetDataset(seg, adir, classes, sample_rate=sr, clip_samples=6000)
    assert ds.missing == [items[0][0]]
    assert ds.report.listed == len(items) + 1 and ds.report.found == len(items)
    assert ds.report.unknown_labels == {"/m/zzz": 1}
    assert "1 missing" in caplog.text and items[0][0] in caplog.text
    assert len(ds) == len(items)
    for cid, labels, wav in kept:
        i = ds.clip_ids.index(cid)
        w, t, got_id = ds[i]
        assert got_id == cid
        assert w.shape == (6000,) and w.dtype == torch.float32
        torch.testing.assert_close(w[:n], wav[0], atol=1e-4, rtol=0)  # 16-bit files
        assert torch.all(w[n:] == 0)  # padded at the end
        assert t.tolist() == [1.0 if k in labels else 0.0 for k in range(len(classes))]


def test_audioset_dataset_none_found_is_an_error(tmp_path):
    (tmp_path / "audio").mkdir()
    seg = tmp_path / "seg.csv"
    write_segments(seg, [("abcdefghijk", [0])])
    cls_csv = tmp_path / "cls.csv"
    write_class_csv(cls_csv)
    with pytest.raises(DatasetError, match="none of the 1 clips"):
        AudioSetDataset(seg, tmp_path / "audio", ClassList.from_csv(cls_csv), 8000, 4000)


def test_audioset_dataset_resamples_to_model_rate(tmp_path):
    adir = tmp_path / "audio"
    adir.mkdir()
    g = torch.Generator().manual_seed(0)
    audio.save(adir / "abcdefghijk.wav", tone_clip([440.0], 16000, 16000, g), 16000)
    seg = tmp_path / "seg.csv"
    write_segments(seg, [("abcdefghijk", [1])])
    cls_csv = tmp_path / "cls.csv"
    write_class_csv(cls_csv)
    ds = AudioSetDataset(seg, adir, ClassList.from_csv(cls_csv), sample_rate=8000, clip_samples=8000)
    w, t, _ = ds[0]
    assert w.shape == (8000,)
    spec = torch.fft.rfft(w).abs()
    assert abs(int(spec.argmax()) - 440) <= 1  # 1 s at 8 kHz: bin = Hz


# ------------------------------------------------------------------------------------------
# (c) manifest


def test_manifest_dataset_labels_captions_missing(tmp_path):
    sr = 8000
    items = write_tone_corpus(tmp_path / "wav", sr, 2000, per_class=1, seed=2, pairs=1)
    man = tmp_path / "train.csv"
    write_manifest(man, items, "wav")
    with man.open("a") as f:
        f.write("wav/not_there.wav,low,\n")
        f.write(f"wav/{items[0][0]}.wav,low;barking,\n")
    ds = ManifestDataset(man, None, sr, 3000)
    assert ds.classes.names == ("barking", "high", "low", "mid", "top")  # sorted union of the labels
    assert ds.missing == ["wav/not_there.wav"]
    assert ds.report.unknown_labels == {} and len(ds) == len(items) + 1
    pair_idx = ds.clip_ids.index(f"wav/{items[-1][0]}.wav")
    w, t, cid = ds[pair_idx]
    want = {TONE_CLASSES[k][0] for k in items[-1][1]}
    assert {ds.classes.name(k) for k in torch.nonzero(t).flatten().tolist()} == want
    assert w.shape == (3000,)
    assert ds.captions[pair_idx].startswith("a tone, ")
    # with a fixed class list, labels outside it are counted
    fixed = ClassList(tuple(name for name, _, _ in TONE_CLASSES))
    ds2 = ManifestDataset(man, fixed, sr, 3000)
    assert ds2.report.unknown_labels == {"barking": 1}


def test_one_opener_for_the_three_layouts(tmp_path):
    assert guess_format("a/b.csv") == "manifest" and guess_format("a/b.csv", audio_dir="clips") == "audioset"
    assert guess_format("packs/x.H5") == "hdf5" and guess_format(["p1.hdf5", "p2.hdf5"]) == "hdf5"
    sr = 8000
    items = write_tone_corpus(tmp_path / "wav", sr, 2000, per_class=1, seed=2, pairs=0)
    man = tmp_path / "train.csv"
    write_manifest(man, items, "wav")
    ds = open_weak_dataset(man, format=None, classes=None, sample_rate=sr, clip_samples=3000)
    assert isinstance(ds, ManifestDataset) and len(ds) == len(items)
    with pytest.raises(DatasetError, match="audio_dir"):
        open_weak_dataset(man, format="audioset", classes=None, sample_rate=sr, clip_samples=3000)
    with pytest.raises(DatasetError, match="unknown data format 'wav'"):
        open_weak_dataset(man, format="wav", classes=None, sample_rate=sr, clip_samples=3000)


def test_manifest_requires_columns(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("file,label\na.wav,x\n")
    with pytest.raises(DatasetError, match="'path' and 'labels'"):
        ManifestDataset(man, None, 8000, 100)


def test_random_crop_is_seeded_per_item_and_epoch(tmp_path):
    sr = 8000
    ramp = torch.linspace(-0.5, 0.5, 4 * sr)[None]  # every sample value unique: a crop shows its offset
    audio.save(tmp_path / "long.wav", ramp, sr, bit_depth="32f")
    man = tmp_path / "m.csv"
    man.write_text("path,labels\nlong.wav,a\n")
    ds = ManifestDataset(man, None, sr, sr // 2, crop="random", seed=3)
    a, b = ds[0][0], ds[0][0]
    assert torch.equal(a, b)
    starts = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        c = ds[0][0]
        start = int(torch.argmin((ramp[0] - c[0]).abs()))
        assert torch.equal(c, ramp[0, start:start + sr // 2])  # a contiguous piece of the file
        starts.add(start)
    assert len(starts) == 4  # another epoch, another crop


def test_fit_length():
    x = torch.arange(10.0)
    assert fit_length(x, 4).tolist() == [0, 1, 2, 3]
    assert fit_length(x, 4, "center").tolist() == [3, 4, 5, 6]
    assert fit_length(x, 12).tolist() == list(range(10)) + [0, 0]


# ------------------------------------------------------------------------------------------
# (b) HDF5 pack


def _write_pack(path: Path, n: int, samples: int, k: int, seed: int, rate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    wave = rng.integers(-20000, 20000, size=(n, samples), dtype=np.int16)
    target = (rng.random((n, k)) > 0.5).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([f"Y{i:011d}.wav".encode() for i in range(n)]))
        f.create_dataset("waveform", data=wave)
        f.create_dataset("target", data=target)
        if rate:
            f.attrs["sample_rate"] = rate
    return wave, target


def test_hdf5_pack_scaling_targets_and_names(tmp_path):
    w1, t1 = _write_pack(tmp_path / "a.h5", 3, 500, 4, seed=0)
    w2, t2 = _write_pack(tmp_path / "b.h5", 2, 500, 4, seed=1)
    ds = HDF5PackDataset([tmp_path / "a.h5", tmp_path / "b.h5"], None, 8000, 400)
    assert len(ds) == 5 and ds.classes.names[0] == "class_0"
    wave, target, cid = ds[4]
    assert cid == "Y00000000001.wav"
    np.testing.assert_allclose(wave.numpy(), w2[1, :400] / 32767.0, rtol=0, atol=1e-7)
    assert target.tolist() == t2[1].tolist()
    assert torch.equal(ds.targets, torch.from_numpy(np.concatenate([t1, t2])))
    # the dataset pickles without open handles (DataLoader workers)
    import pickle

    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[0][0], ds[0][0])


def test_hdf5_pack_resamples_and_checks_classes(tmp_path):
    _write_pack(tmp_path / "a.h5", 2, 1600, 3, seed=0, rate=16000)
    ds = HDF5PackDataset(tmp_path / "a.h5", ClassList(("x", "y", "z")), 8000, 800)
    assert ds.pack_sample_rate == 16000 and ds[0][0].shape == (800,)
    with pytest.raises(DatasetError, match="3 classes"):
        HDF5PackDataset(tmp_path / "a.h5", ClassList(("x", "y")), 8000, 800)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("waveform", data=np.zeros((2, 10), np.int16))
    with pytest.raises(DatasetError, match="'target'"):
        HDF5PackDataset(tmp_path / "bad.h5", None, 8000, 10)


# ------------------------------------------------------------------------------------------
# balanced sampler


def _imbalanced_targets() -> torch.Tensor:
    # class 0: 20 clips, class 1: 2 clips, class 2: 5 clips, class 3: none
    labels = [0] * 20 + [1] * 2 + [2] * 5
    t = torch.zeros(len(labels), 4)
    t[torch.arange(len(labels)), torch.tensor(labels)] = 1
    return t


def test_balanced_sampler_each_class_equally_often():
    t = _imbalanced_targets()
    s = BalancedClassSampler(t, num_samples=3 * 50, seed=7)
    assert s.empty_classes == [3]
    idx = list(s)
    assert len(idx) == 150 == len(s)
    cls = t[idx].argmax(1)
    assert torch.bincount(cls, minlength=4).tolist() == [50, 50, 50, 0]
    # every round of 3 holds each class exactly once
    for r in range(50):
        assert sorted(cls[3 * r:3 * r + 3].tolist()) == [0, 1, 2]
    # seeded: same epoch -> same order; another epoch -> another order
    assert list(BalancedClassSampler(t, 150, seed=7)) == idx
    s.set_epoch(1)
    assert list(s) != idx


def test_balanced_sampler_shards_across_ranks():
    t = _imbalanced_targets()
    whole = BalancedClassSampler(t, num_samples=31, seed=1).global_sequence()
    shards = [list(BalancedClassSampler(t, num_samples=31, seed=1, rank=r, world_size=4)) for r in range(4)]
    assert all(len(s) == 8 for s in shards)  # ceil(31 / 4), padded to an equal share per rank
    total = BalancedClassSampler(t, 31, seed=1, rank=0, world_size=4).global_sequence()
    for r in range(4):
        assert shards[r] == total[r::4].tolist()
    assert total[:31].tolist() != [] and len(total) == 32
    assert whole.tolist() == total[:31].tolist()  # the same balanced sequence, split by position


def test_balanced_sampler_rejects_no_positive():
    with pytest.raises(DatasetError, match="no class"):
        BalancedClassSampler(torch.zeros(3, 2))
