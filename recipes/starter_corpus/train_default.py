"""Train, package and measure the default model ``qsep-starter`` on the starter corpus, with one command.

    python -m recipes.starter_corpus.train_default --data /work/data/starter --runs /work/data/starter_runs \
        --package --evaluate          # defaults: --sed-steps 900 --sed-ft-steps 450 --sep-steps 900
                                      #           --sep-sisdr-steps 1100 --proj-steps 300
    python -m recipes.starter_corpus.train_default --runs /work/data/starter_runs --summary   # the numbers

Steps (each is skipped when its output exists, and the long ones resume from their checkpoints, so a
killed run is continued by running the same command again):

1. ``sed``      ``qsep train sed`` (configs/sed_starter.yaml) on the event train split, validated on the eval split:
                ``--sed-steps`` with mixup, then ``--sed-ft-steps`` more without it (``RUNS/sed_ft``).
2. ``mine``     ``qsep mine`` (configs/mine_tiny.yaml) anchors on the event train clips.
3. ``music``    the music TRAIN tracks' stems, mono 32 kHz, cut into non-silent 2-s segments; their latents
                come from the trained detector; they join the mined segments as four more classes
                (:data:`STEM_CLASSES`) in one segment manifest (``RUNS/segments``). Test tracks and held-out
                event classes are never used. The held-out events (cut from the held-out clips with the
                corpus's strong labels) go to a second manifest used only to VALIDATE the text projection.
4. ``separator`` ``qsep train separator`` (configs/separator_starter.yaml) on two-source mixtures of that manifest:
                ``--sep-steps`` with the official L1 loss, then ``--sep-sisdr-steps`` with ``loss=sisdr``.
5. ``projection`` ``qsep train text-projection``: configs/text_projection_starter_heldout.yaml validates on the
                held-out classes (``RUNS/projection_heldout_val``); configs/text_projection_starter.yaml trains the
                same projection on the training classes and adds it + a label bank of the training classes
                (events + stems) to the model.
6. ``--package`` copies the model to ``qsep_core/pretrained/qsep-starter`` with provenance metadata.
7. ``--evaluate`` runs ``qsep evaluate mixtures`` (text / audio / label queries + mixture and IRM oracles) on
                the eval clips (training classes, unseen recordings) + held-out clips, and ``qsep evaluate musdb``
                (SiSEC18, audio and text queries + oracles) on the music TEST tracks, into ``RUNS/eval``
                (``QSEP_STARTER_MUSDB_DURATION=S`` evaluates only the first S seconds of each track).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from separator import audio
from separator.checkpoint import Component, ModelFolder, save_model

#: The music stems as classes of the separator: stem folder name -> (class name, AudioSet MID of the closest class).
#: Names hold the MUSDB stem word and an everyday phrasing, so both text and label queries find them.
STEM_CLASSES: dict[str, tuple[str, str]] = {
    "vocals": ("Vocals, singing voice", "/m/015lz1"),
    "drums": ("Drums, drum kit", "/m/02hnl"),
    "bass": ("Bass, bass guitar", "/m/018vs"),
    "other": ("Accompaniment, piano, guitar and synthesizer", "/m/04szw"),
}
SEGMENT_SECONDS = 2.0
#: a 2-s stem segment is used when its RMS is above this (dBFS); the stems sit at -20..-31 dBFS
MIN_SEGMENT_DBFS = -45.0
MODEL_NAME = "qsep-starter"
#: short runs that isolate one change each (name, anchors manifest, KEY=VALUE overrides of separator_starter.yaml);
#: each is compared by its validation SI-SDRi (eval recordings, label queries) in EXPERIMENTS.md
ABLATIONS: tuple[tuple[str, str, list[str]], ...] = (
    ("abl_oracle", "segments", []),
    ("abl_mined", "segments_mined", []),
)
#: the control query of the evaluation: one unrelated text for every class (issue 14's measurement)
UNRELATED_TEXT = "typing on a computer keyboard"
#: the last this many music TRAIN tracks are kept out of training, for validation (checkpoint selection)
MUSIC_VALID_TRACKS = 10
REPO = Path(__file__).resolve().parents[2]
QSEP = [sys.executable, "-m", "separator.cli"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list[str], logfile: Path) -> None:
    """Run a qsep command, its output appended to ``logfile``; raise on failure."""
    log(" ".join(cmd) + f"   (log: {logfile})")
    t0 = time.time()
    with logfile.open("a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc != 0:
        raise SystemExit(f"command failed (exit {rc}); see {logfile}")
    log(f"done in {time.time() - t0:.0f} s")


def _names(csv_path: Path) -> tuple[list[str], list[str]]:
    """(display names, MIDs) of a class_labels_indices CSV, in index order."""
    with csv_path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    return [r["display_name"] for r in rows], [r["mid"] for r in rows]


def _latents(detector: torch.nn.Module, crops: list[torch.Tensor], batch: int = 32) -> torch.Tensor:
    """``(n, D)`` detector latents of equal-length ``(samples,)`` crops."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            out.append(detector(torch.stack(crops[i : i + batch]))["latent"].float())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
def step_sed(data: Path, runs: Path, steps: int, ft_steps: int) -> Path:
    """Two stages: ``steps`` with mixup + SpecAugment (the HTS-AT recipe), then ``ft_steps`` without mixup
    from the exported model (in a short CPU budget the official un-mixed-target mixup keeps the loss high)."""
    ev = data / "events"
    data_args = [f"data.train={ev / 'balanced_train_segments.csv'}", f"data.train_audio_dir={ev / 'audio' / 'train'}",
                 f"data.val={ev / 'eval_segments.csv'}", f"data.val_audio_dir={ev / 'audio' / 'eval'}",
                 f"data.class_labels={ev / 'class_labels_indices.csv'}"]
    out, ft = runs / "sed", runs / "sed_ft"
    if not (out / "model" / "config.json").is_file():
        run(QSEP + ["train", "sed", "--config", "configs/sed_starter.yaml", "--out", str(out), "--max-steps", str(steps)]
            + data_args, runs / "sed.log")
    if ft_steps <= 0:
        return out / "model"
    if not (ft / "model" / "config.json").is_file():
        run(QSEP + ["train", "sed", "--config", "configs/sed_starter.yaml", "--out", str(ft), "--max-steps", str(ft_steps),
                    f"init_from={out / 'model'}", "mixup_alpha=0", "lr=0.001", "warmup_steps=20",
                    f"val_every_n_steps={max(1, ft_steps // 2)}"] + data_args, runs / "sed_ft.log")
    return ft / "model"


def step_mine(data: Path, runs: Path, detector: Path) -> Path:
    ev = data / "events"
    out = runs / "mined"
    if (out / "mining.json").is_file():
        return out
    run(QSEP + ["mine", "--config", "configs/mine_tiny.yaml", "--detector", str(detector),
                "--data", str(ev / "balanced_train_segments.csv"), "--format", "audioset",
                "--audio-dir", str(ev / "audio" / "train"), "--class-labels", str(ev / "class_labels_indices.csv"),
                "--num-workers", "0", "--out", str(out)], runs / "mine.log")
    return out


def _windows(mono: torch.Tensor, seg: int, hop: int, min_dbfs: float) -> list[tuple[int, torch.Tensor]]:
    """(start sample, crop) of the ``seg``-long windows of ``mono (samples,)`` every ``hop`` above ``min_dbfs`` RMS."""
    out = []
    for start in range(0, mono.shape[-1] - seg + 1, hop):
        x = mono[start : start + seg]
        if 20 * torch.log10(x.pow(2).mean().sqrt().clamp(min=1e-12)) >= min_dbfs:
            out.append((start, x))
    return out


def _stem_crops(path: Path, seg: int) -> list[tuple[int, torch.Tensor]]:
    """Non-overlapping non-silent 2-s windows of a 32 kHz mono stem file."""
    return _windows(audio.load(path)[0][0], seg, seg, MIN_SEGMENT_DBFS)


def _source_crops(path: Path, seg: int) -> list[tuple[int, torch.Tensor]]:
    """Crops of one clean event source: half-overlapping non-silent 2-s windows (a short recording still gives
    a few distinct targets), or the whole source zero-padded to 2 s when it is shorter."""
    mono = audio.load(path)[0][0]
    if mono.shape[-1] <= seg:
        return [(0, torch.nn.functional.pad(mono, (0, seg - mono.shape[-1])))]
    return _windows(mono, seg, seg // 2, MIN_SEGMENT_DBFS) or [(0, mono[:seg])]


def _music_tracks(data: Path, split: str) -> list[Path]:
    """Music tracks of a corpus split; the last :data:`MUSIC_VALID_TRACKS` TRAIN tracks are kept for validation."""
    train = sorted(p for p in (data / "music" / "train").iterdir() if p.is_dir())
    if split == "train":
        return train[:-MUSIC_VALID_TRACKS] if len(train) > 2 * MUSIC_VALID_TRACKS else train
    if split == "valid":
        return train[-MUSIC_VALID_TRACKS:] if len(train) > 2 * MUSIC_VALID_TRACKS else []
    raise ValueError(split)


def _oracle_rows(data: Path, runs: Path, split: str, names: list[str], rate: int) -> tuple[list[dict], list[torch.Tensor]]:
    """Segment rows and crops of the clean sources of an event split (``train`` / ``eval`` / ``heldout``) and,
    for ``train`` / ``eval``, of the music stems (train tracks / validation tracks)."""
    ev = data / "events"
    seg = int(round(SEGMENT_SECONDS * rate))
    rows, crops = [], []
    with (ev / "sources.csv").open(newline="") as f:
        sources = [r for r in csv.DictReader(f) if r["split"] == split]
    for r in sources:
        k = names.index(r["display_name"])
        path = ev / r["path"]
        for start, x in _source_crops(path, seg):
            crops.append(x)
            rows.append({"clip_id": f"source/{r['source_id']}", "clip_index": -1, "audio_path": str(path), "label": k,
                         "label_name": r["display_name"], "clip_labels": (k,), "start": start / rate,
                         "end": start / rate + SEGMENT_SECONDS, "confidence": 1.0})
    if split == "heldout":
        return rows, crops
    stem_dir = runs / "music32k"
    for t in _music_tracks(data, "train" if split == "train" else "valid"):
        for stem, (cls, _) in STEM_CLASSES.items():
            k = names.index(cls)
            path = stem_dir / t.name / f"{stem}.wav"
            if not path.is_file():
                wav, _ = audio.load(t / f"{stem}.wav", sample_rate=rate, channels=1)
                path.parent.mkdir(parents=True, exist_ok=True)
                audio.save(path, wav, rate, bit_depth="32f")
            for start, x in _stem_crops(path, seg):
                crops.append(x)
                rows.append({"clip_id": f"{t.name}/{stem}", "clip_index": -1, "audio_path": str(path), "label": k,
                             "label_name": cls, "clip_labels": (k,), "start": start / rate,
                             "end": start / rate + SEGMENT_SECONDS, "confidence": 1.0})
    return rows, crops


def step_segments(data: Path, runs: Path, detector_dir: Path, mined: Path) -> dict[str, Path]:
    """Segment manifests (latents from the trained detector), all with one class list (events + 4 stems):

    * ``segments`` (ORACLE anchors, the default targets): 2-s windows of the clean train-split event sources
      (the corpus knows where it placed each event, so no detector is needed to find it) + music train stems;
    * ``segments_val``: the same from the EVAL-split sources (recordings never in a train clip) + the music
      validation tracks: validation and checkpoint selection only;
    * ``segments_mined``: the SED-mined anchors of the train clips + music train stems (the paper's method;
      the ablation "mined vs oracle anchors");
    * ``segments_heldout``: ``segments`` + the held-out classes' sources, only to VALIDATE the text projection.
    """
    from sed.mining import load_manifest, write_manifest

    out = {k: runs / k for k in ("segments", "segments_val", "segments_mined", "segments_heldout")}
    if all((p / "mining.json").is_file() for p in out.values()):
        return out
    m = load_manifest(mined)
    rate = m.sample_rate
    names = list(m.class_names) + [v[0] for v in STEM_CLASSES.values()]
    mids = list(m.class_mids or [""] * len(m.class_names)) + [v[1] for v in STEM_CLASSES.values()]
    held_names, held_mids = _names(data / "events" / "heldout_classes.csv")
    detector = ModelFolder(detector_dir).build("detector").eval()
    kw = dict(segment_seconds=SEGMENT_SECONDS)

    train_rows, train_crops = _oracle_rows(data, runs, "train", names, rate)
    train_lat = _latents(detector, train_crops)
    write_manifest(out["segments"], train_rows, train_lat, rate, class_names=names, class_mids=mids, **kw)
    log(f"oracle train segments: {len(train_rows)}")
    val_rows, val_crops = _oracle_rows(data, runs, "eval", names, rate)
    write_manifest(out["segments_val"], val_rows, _latents(detector, val_crops), rate, class_names=names, class_mids=mids, **kw)
    log(f"oracle validation segments (eval recordings + music validation tracks): {len(val_rows)}")
    music = [i for i, r in enumerate(train_rows) if r["clip_id"].startswith("starter_")]
    mined_rows = [dict(r) for r in m.segments.to_dict("records")] + [train_rows[i] for i in music]
    write_manifest(out["segments_mined"], mined_rows, torch.cat([m.latents.float(), train_lat[music]]), rate,
                   class_names=names, class_mids=mids, **kw)
    log(f"mined segments (ablation): {len(m.segments)} events + {len(music)} music")
    h_rows, h_crops = _oracle_rows(data, runs, "heldout", names + held_names, rate)
    write_manifest(out["segments_heldout"], train_rows + h_rows, torch.cat([train_lat, _latents(detector, h_crops)]), rate,
                   class_names=names + held_names, class_mids=mids + held_mids, **kw)
    log(f"held-out event segments {len(h_rows)} of {held_names} (projection validation only)")
    return out


def step_separator(runs: Path, segs: dict[str, Path], detector: Path, steps: int, name: str = "separator",
                   anchors: str = "segments", extra: list[str] | None = None) -> Path:
    """``qsep train separator`` (configs/separator_starter.yaml) on ``segs[anchors]`` for ``steps`` steps, validated on
    ``segs["segments_val"]`` (eval-split recordings queried by label centroids); the export is the best checkpoint
    by that validation SI-SDRi. ``name`` / ``anchors`` / ``extra`` (KEY=VALUE overrides) make ablation runs."""
    out = runs / name
    done = out / f"done-{steps}"
    if done.is_file():
        return out / "model"
    cmd = QSEP + ["train", "separator", "--config", "configs/separator_starter.yaml", "--manifest", str(segs[anchors]),
                  "--detector", str(detector), "--out", str(out), "--max-steps", str(steps),
                  "--set", f"mixing.val_manifest={segs['segments_val']}"]
    for kv in extra or []:
        cmd += ["--set", kv]
    run(cmd, runs / f"{name}.log")
    done.write_text("")
    return out / "model"


def step_projection(data: Path, runs: Path, segs: dict[str, Path], model: Path, steps: int) -> Path:
    """Validate on held-out classes (standalone output), then add the training-classes-only version to the model."""
    val_out = runs / "projection_heldout_val"
    if not (val_out / "config.json").is_file():
        # held_out_classes are listed in this config (the corpus's heldout_classes.csv)
        run(QSEP + ["train", "text-projection", "--config", "configs/text_projection_starter_heldout.yaml",
                    "--manifest", str(segs["segments_heldout"]), "--steps", str(steps), "--out", str(val_out), "--overwrite"],
            runs / "projection_heldout_val.log")
    if "text_projection" not in ModelFolder(model).components:
        # the same training split (held-out segments come last and never enter it), so the same projection;
        # this run's label bank holds training classes only
        run(QSEP + ["train", "text-projection", "--config", "configs/text_projection_starter.yaml",
                    "--manifest", str(segs["segments"]), "--steps", str(steps), "--model", str(model)], runs / "projection.log")
    return model


def step_package(data: Path, runs: Path, model: Path, argv: list[str], timings: dict[str, float]) -> Path:
    dest = REPO / "qsep_core" / "pretrained" / MODEL_NAME
    folder = ModelFolder(model)
    comps = {n: Component(folder.kind(n), folder.component_config(n), folder.state_dict(n)) for n in folder.components}
    report = json.loads((data / "report.json").read_text())
    meta = dict(folder.metadata)
    meta["qsep_starter"] = {
        "name": MODEL_NAME,
        "corpus": {"builder": "python -m recipes.starter_corpus.build --seed 0", "seed": report["config"]["seed"],
                   "event_classes": _names(data / "events" / "class_labels_indices.csv")[0],
                   "held_out_classes": _names(data / "events" / "heldout_classes.csv")[0],
                   "music_stem_classes": {k: v[0] for k, v in STEM_CLASSES.items()},
                   "music_train_tracks": sorted(p.name for p in (data / "music" / "train").iterdir() if p.is_dir())},
        "command": "python -m recipes.starter_corpus.train_default " + " ".join(argv),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "wall_seconds": timings,
        "note": "in-domain model of a small synthetic/real starter corpus; not an AudioSet/MUSDB18 model",
    }
    save_model(dest, comps, metadata=json.loads(json.dumps(meta, default=str)), overwrite=True)
    for p in dest.iterdir():
        log(f"{p}: {p.stat().st_size / 1e6:.2f} MB")
    return dest


def step_evaluate(data: Path, runs: Path, model: Path | None) -> None:
    """Baselines (mixture, IRM), then the model (``None``: baselines only)."""
    ev = data / "events"
    out = runs / "eval"
    out.mkdir(parents=True, exist_ok=True)
    # one corpus of CLEAN isolated recordings: the eval-split sources (training classes, recordings never in a
    # training step) + the held-out classes' sources; each mixture is one target recording + one interferer
    # recording of another class, so the reference holds exactly one sound (clips hold 1-3 events)
    corpus = out / "eval_corpus.csv"
    with corpus.open("w", newline="") as f, (ev / "sources.csv").open(newline="") as src:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        for r in csv.DictReader(src):
            if r["split"] in ("eval", "heldout"):
                w.writerow([str(ev / r["path"]), r["display_name"]])
    held = ";".join(_names(ev / "heldout_classes.csv")[0])
    musdb_dur = os.environ.get("QSEP_STARTER_MUSDB_DURATION")
    extra = ["--duration", musdb_dur] if musdb_dur else []
    # baselines first (no model needed)
    for o in ("mixture", "irm"):
        if not any((out / f"mixtures_oracle_{o}").glob("results*.json")):
            run(QSEP + ["evaluate", "mixtures", str(corpus), "--held-out", held, "--oracle", o,
                        "--out", str(out / f"mixtures_oracle_{o}")], runs / "eval.log")
    if not (out / "musdb_oracles").exists():
        run(QSEP + ["evaluate", "musdb", str(data / "music"), "--oracle", "mixture", "--oracle", "irm", "-j", "2",
                    "--out", str(out / "musdb_oracles")] + extra, runs / "eval.log")
    if model is None:
        return
    for q, control in (("text", []), ("audio", []), ("label", []), ("text_unrelated", ["--unrelated-text", UNRELATED_TEXT])):
        if not any((out / f"mixtures_{q}").glob("results*.json")):
            run(QSEP + ["evaluate", "mixtures", str(corpus), "--held-out", held, "--model", str(model),
                        "--query", q.split("_")[0], "--out", str(out / f"mixtures_{q}")] + control, runs / "eval.log")
    if not (out / "musdb_audio").exists():
        run(QSEP + ["evaluate", "musdb", str(data / "music"), "--model", str(model), "-j", "2",
                    "--out", str(out / "musdb_audio")] + extra, runs / "eval.log")
    if not (out / "musdb_text").exists():
        run(QSEP + ["evaluate", "musdb", str(data / "music"), "--model", str(model), "--text-queries", "-j", "2",
                    "--out", str(out / "musdb_text")] + extra, runs / "eval.log")


def summarize(runs: Path) -> str:
    """Markdown tables of the headline numbers in ``RUNS/eval``: mixtures (mean over classes and median over
    mixtures, seen / held-out classes; the target-text minus unrelated-text gap) and MUSDB-style SDR per stem."""
    out = runs / "eval"
    lines = ["| method | query | seen SDRi | seen SI-SDRi | seen SI-SDRi median | held-out SDRi | held-out SI-SDRi | held-out SI-SDRi median |",
             "|---|---|---|---|---|---|---|---|"]
    got: dict[str, dict] = {}
    for name in ("mixtures_text", "mixtures_label", "mixtures_audio", "mixtures_text_unrelated", "mixtures_oracle_mixture", "mixtures_oracle_irm"):
        for f in sorted((out / name).glob("results*.json")):
            d = json.loads(f.read_text())
            got[name] = d
            s, h = d["seen"], d["held_out"]
            q = "-" if "oracle" in name else (f"text {UNRELATED_TEXT!r} (control)" if "unrelated" in name else d["query_kind"])
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {d['method']} | {q} | {fmt(s['sdri'])} | {fmt(s['si_sdri'])} | {fmt(s.get('si_sdri_median'))} | "
                         f"{fmt(h['sdri'])} | {fmt(h['si_sdri'])} | {fmt(h.get('si_sdri_median'))} |")
    if "mixtures_text" in got and "mixtures_text_unrelated" in got:
        gap = [a["si_sdri"] - b["si_sdri"] for a, b in zip(got["mixtures_text"]["mixtures"], got["mixtures_text_unrelated"]["mixtures"])]
        seen = [g for g, r in zip(gap, got["mixtures_text"]["mixtures"]) if not r["held_out"]]
        held = [g for g, r in zip(gap, got["mixtures_text"]["mixtures"]) if r["held_out"]]
        med = lambda v: f"{statistics.median(v):.2f}" if v else "-"  # noqa: E731 (as evaluate_mixtures' medians)
        lines += ["", f"Target text minus unrelated text, SI-SDRi per mixture, median: seen {med(seen)} dB, held-out {med(held)} dB."]
    lines += ["", "| method | queries | vocals | drums | bass | other | mean |", "|---|---|---|---|---|---|---|"]
    for name, q in (("musdb_audio", "audio (train stems)"), ("musdb_text", "text"), ("musdb_oracles", "-")):
        f = out / name / "summary.json"
        if not f.is_file():
            continue
        for row in json.loads(f.read_text())["rows"]:
            if row["protocol"] != "sisec18":
                continue
            v = [row["sdr"][k] for k in ("vocals", "drums", "bass", "other")]
            lines.append(f"| {row['method']} | {q} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {sum(v) / 4:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data/starter"), help="starter corpus (build.py --out)")
    ap.add_argument("--runs", type=Path, default=Path("/work/data/starter_runs"), help="run folder")
    ap.add_argument("--sed-steps", type=int, default=900)
    ap.add_argument("--sed-ft-steps", type=int, default=450, help="fine-tuning steps without mixup (0: none)")
    ap.add_argument("--sep-steps", type=int, default=3000, help="separator steps (SI-SDR loss, warm-up + cosine)")
    ap.add_argument("--ablations", action="store_true", help=f"first the short ablation runs {[a[0] for a in ABLATIONS]}")
    ap.add_argument("--ablation-steps", type=int, default=400)
    ap.add_argument("--proj-steps", type=int, default=300)
    ap.add_argument("--package", action="store_true", help="copy the model to qsep_core/pretrained/qsep-starter")
    ap.add_argument("--evaluate", action="store_true", help="run the evaluations into RUNS/eval")
    ap.add_argument("--summary", action="store_true", help="only print the table of RUNS/eval's numbers")
    ap.add_argument("--stop-after", choices=["sed", "mine", "segments", "ablations", "separator", "projection"], default=None)
    args = ap.parse_args(argv)
    if args.summary:
        print(summarize(args.runs))
        return
    args.runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    timings_path = args.runs / "timings.json"
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(name: str, fn, *a):
        t0 = time.time()
        out = fn(*a)
        if name not in timings:
            timings[name] = round(time.time() - t0, 1)
            timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        return out

    det = timed("sed", step_sed, args.data, args.runs, args.sed_steps, args.sed_ft_steps)
    if args.stop_after == "sed":
        return
    mined = timed("mine", step_mine, args.data, args.runs, det)
    if args.stop_after == "mine":
        return
    segs = timed("segments", step_segments, args.data, args.runs, det, mined)
    if args.stop_after == "segments":
        return
    for name, anchors, extra in ABLATIONS if args.ablations else ():
        timed(name, step_separator, args.runs, segs, det, args.ablation_steps, name, anchors, extra)
    if args.stop_after == "ablations":
        return
    model = timed("separator", step_separator, args.runs, segs, det, args.sep_steps)
    if args.stop_after == "separator":
        return
    timed("projection", step_projection, args.data, args.runs, segs, model, args.proj_steps)
    if args.package:
        model = step_package(args.data, args.runs, model, argv, timings)
    if args.evaluate:
        timed("evaluate", step_evaluate, args.data, args.runs, model)


if __name__ == "__main__":
    main()
