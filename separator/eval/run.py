"""What ``qsep evaluate musdb|mixtures`` runs: a model folder (or oracles) wired to the evaluation drivers.

The drivers (:mod:`separator.eval.musdb`, :mod:`separator.eval.mixtures`) only know the
:class:`~separator.eval.estimators.Estimator` interface. This module turns a model folder into
one (:func:`load_model`: a query encoder and a separator), builds the stem or class queries,
keeps the mixture set and the conditions cached, names and writes the results. The CLI parses
options, calls :func:`run_musdb` / :func:`run_mixtures`, and reports.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from qsep_core.atomic import atomic_write_text
from separator.eval import estimators as est_mod
from separator.eval import mixtures as mx

__all__ = ["Encode", "Separate", "load_model", "check_classes", "resolve_stem_texts", "musdb_estimators", "run_musdb", "MixtureRun", "run_mixtures"]

#: ``encode(text=... | audio=[files] | label=...) -> condition (D,)``
Encode = Callable[..., torch.Tensor]
#: ``separate(waveform (C, T), sample_rate, condition) -> target (C, T)``
Separate = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[str, int, int], None]


def _model_facts(model: str | os.PathLike | None) -> tuple[Path, str]:
    """``(resolved folder, display name)`` of a model argument (None: the shipped default)."""
    from qsep_core.hub import model_display_name, resolve_model

    path = resolve_model(model)
    return path.resolve(), model_display_name(path)


def _difference(asked: dict[str, Any], stored: dict[str, Any]) -> str:
    return ", ".join(f"{k}: asked {asked[k]!r}, the folder has {stored.get(k)!r}" for k in asked if asked[k] != stored.get(k))


def check_classes(names: Sequence[str], known: Sequence[str], option: str) -> None:
    """Raise ValueError naming every entry of ``names`` that is not in ``known``, with close matches."""
    import difflib

    unknown = [n for n in names if n not in set(known)]
    if unknown:
        hints = "; ".join(f"{n!r}: did you mean {difflib.get_close_matches(n, known, n=3, cutoff=0.5) or 'none close'}"
                          for n in unknown)
        raise ValueError(f"{option}: {len(unknown)} name(s) are not labels of the corpus ({hints}); "
                         f"the corpus has {len(known)} labels: {sorted(known)}")


def load_model(model: str | os.PathLike | None = None, device: torch.device | str = "auto",
               full_band: bool = False) -> tuple[Encode, Separate]:
    """A model as two callables: :data:`Encode` (its query encoders) and :data:`Separate` (its separator).

    ``model`` is resolved like every model argument (:func:`qsep_core.hub.resolve_model`; None: the shipped one).

    Raises:
        separator.checkpoint.CheckpointError: the folder is missing, malformed or holds no separator.
    """
    from separator.api import Separator
    from separator.query.compose import Query, QueryEncoder

    sep = Separator.from_pretrained(model, device=device, full_band=full_band)
    encoder = QueryEncoder.from_model(sep.model_folder, device=sep.device)

    def encode(**query: Any) -> torch.Tensor:
        return encoder.encode(Query.build(**query)).condition

    def separate(wav: torch.Tensor, sample_rate: int, condition: torch.Tensor) -> torch.Tensor:
        return sep.separate_condition(wav, sample_rate, condition).target

    def separate_many(wav: torch.Tensor, sample_rate: int, conditions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [r.target for r in sep.separate_conditions(wav, sample_rate, list(conditions))]

    separate.many = separate_many  # every stem of a track in one pass (ConditionEstimator.estimate_many)
    return encode, separate


def resolve_stem_texts(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The text query of each MUSDB18 stem: :data:`separator.eval.queries.DEFAULT_STEM_TEXTS` with ``overrides``.

    Raises:
        ValueError: an override names a stem MUSDB18 does not have.
    """
    from separator.eval.queries import DEFAULT_STEM_TEXTS

    unknown = sorted(set(overrides or {}) - set(DEFAULT_STEM_TEXTS))
    if unknown:
        raise ValueError(f"--stem-text: unknown stem(s) {unknown}; MUSDB18 stems are {list(DEFAULT_STEM_TEXTS)}")
    return {**DEFAULT_STEM_TEXTS, **(overrides or {})}


def musdb_estimators(root: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
                     oracles: Sequence[str] = (), text_queries: bool = False,
                     stem_texts: dict[str, str] | None = None,
                     query_dir: str | os.PathLike | None = None,
                     device: torch.device | str = "auto", full_band: bool = False) -> list[est_mod.Estimator]:
    """The estimators of a MUSDB18 run: the oracles named, then the model (named as ``qsep models`` lists it,
    ``<name>-text`` with text queries).

    ``model`` None with no ``oracles`` evaluates the shipped default model; with oracles only, no model. The
    model's stem queries are text (:func:`resolve_stem_texts`) or embeddings of train-set stems
    (:func:`separator.eval.queries.build_stem_queries`, cached in ``query_dir``, default ``out/queries``).

    Raises:
        ValueError: an unknown oracle or stem; a folder without a train subset for audio queries.
        separator.checkpoint.CheckpointError: the model folder does not load.
        separator.eval.deps.FfmpegNotFoundError: train-set queries need musdb, which needs ffmpeg.
    """
    from separator.eval import musdb as ev
    from separator.eval.queries import build_stem_queries

    estimators = [est_mod.oracle(kind) for kind in oracles]
    if model is not None or not oracles:
        texts = resolve_stem_texts(stem_texts) if text_queries else None
        train = None
        if not text_queries:  # before loading the model: a test-only folder fails fast
            try:
                train = ev.select_tracks(ev.open_musdb(root, "train"))
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"{exc}. Audio queries are embeddings of train-set stems; with a test-only folder use "
                    "--text-queries (optionally --stem-text STEM=TEXT)"
                ) from None
        path, display = _model_facts(model)
        encode, separate = load_model(path, device=device, full_band=full_band)
        model_id = f"{path} full-band" if full_band else str(path)  # a resumed run redoes tracks of the other mode
        if texts is not None:
            queries = {stem: encode(text=text) for stem, text in texts.items()}
            name = f"{display}-text"
        else:
            queries = build_stem_queries(train, embed_files=lambda files: encode(audio=[str(f) for f in files]),
                                         query_dir=query_dir or Path(out) / "queries", embedder_id=model_id)
            name = display
        estimators.append(est_mod.ConditionEstimator(separate=separate, queries=queries, name=name, model_id=model_id,
                                                     separate_many=getattr(separate, "many", None)))
    return estimators


def run_musdb(root: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
              oracles: Sequence[str] = (), protocol: str = "sisec18", subset: str = "test",
              tracks: int | str | Sequence[str] | None = None, duration: float | None = None,
              text_queries: bool = False, stem_texts: dict[str, str] | None = None,
              query_dir: str | os.PathLike | None = None, jobs: int = 1,
              save_estimates: bool = False, progress: ProgressFn | None = None,
              device: torch.device | str = "auto", full_band: bool = False) -> dict[str, Any]:
    """Evaluate a model and/or oracles on MUSDB18 (:func:`separator.eval.musdb.evaluate_musdb`); returns the summary.

    The summary (``out/summary.json``) covers this run's settings only (earlier results in ``out`` with other
    settings are kept but not summarised) and records them: protocol, subset, duration, tracks, the model and
    the stem queries (the texts, with ``text_queries``).

    Raises:
        ValueError: nothing to evaluate, an unknown protocol, oracle or track name, bad options.
        FileNotFoundError: no MUSDB18 tracks under ``root``.
        separator.eval.deps.FfmpegNotFoundError: ffmpeg is missing (musdb and museval need it).
        separator.checkpoint.CheckpointError: the model folder does not load.
    """
    from separator.eval import musdb as ev

    proto = ev.protocol_from_name(protocol)
    estimators = musdb_estimators(root, out, model=model, oracles=oracles, text_queries=text_queries,
                                  stem_texts=stem_texts, query_dir=query_dir, device=device, full_band=full_band)
    model_est = [e for e in estimators if isinstance(e, est_mod.ConditionEstimator)]
    run_info = {
        "model": model_est[0].model_id if model_est else None,
        "oracles": list(oracles),
        "stem_queries": (resolve_stem_texts(stem_texts) if text_queries else "train-set audio") if model_est else None,
    }
    return ev.evaluate_musdb(root, estimators, out, protocol=proto, subset=subset, tracks=tracks, duration=duration,
                             jobs=jobs, save_estimates=save_estimates, progress=progress, run_info=run_info)


@dataclass
class MixtureRun:
    """What :func:`run_mixtures` did.

    Attributes:
        results: :func:`separator.eval.mixtures.evaluate_mixtures`'s dict.
        json_path, markdown_path: where the results were written (``results_<method>_<query>.json`` / ``.md``).
        reused_set: the mixture set was read from ``out/mixture_set.json`` (not drawn anew).
    """

    results: dict[str, Any]
    json_path: Path
    markdown_path: Path
    reused_set: bool


def _class_conditions(encode: Encode, separate: Separate) -> Callable[[torch.Tensor, int, mx.Query], torch.Tensor]:
    """``separate`` for :class:`~separator.eval.mixtures.Query` stems, encoding each (kind, class) query once."""
    conditions: dict[tuple[str, str], torch.Tensor] = {}

    def by_query(wav: torch.Tensor, sample_rate: int, q: mx.Query) -> torch.Tensor:
        key = (q.kind, q.label)
        if key not in conditions:
            value = {"text": q.text, "audio": list(q.audio), "label": q.label}[q.kind]
            conditions[key] = encode(**{q.kind: value})
        return separate(wav, sample_rate, conditions[key])

    return by_query


def run_mixtures(corpus: str | os.PathLike, out: str | os.PathLike, *, held_out: Sequence[str] = (),
                 model: str | os.PathLike | None = None, oracle: str | None = None,
                 classes: Sequence[str] | None = None, query: str = "text", unrelated_text: str | None = None,
                 per_class: int = 10, seed: int = 0, progress: ProgressFn | None = None,
                 device: torch.device | str = "auto") -> MixtureRun:
    """Evaluate a model (or an oracle) on seeded two-source mixtures of a weak-label corpus and write the results.

    The mixture set is drawn once and kept in ``out/mixture_set.json``: a later run in the same ``out``
    (another model, query kind or an oracle) evaluates exactly the same mixtures, and must ask for the same
    set (corpus classes, ``per_class``, ``seed``) or it is refused. Results go to
    ``results_<model name>_<query>.json`` / ``results_oracle-<kind>.json`` and record every setting.

    Args:
        corpus: a CSV manifest (``path,labels``) or an AudioSet-style folder.
        held_out: classes never seen in training (reported separately); each must be a corpus label.
        model, oracle: a model (anything :func:`qsep_core.hub.resolve_model` takes) or ``"mixture"`` / ``"irm"``;
            neither: the shipped default model.
        classes: the classes to evaluate (default: every label in the corpus).
        query: ``"text"``, ``"audio"`` or ``"label"`` (models only).
        unrelated_text: a control (text queries of a model): every class is queried with this one text;
            the results are named ``results_<method>_text_unrelated`` and record it as ``query_text``.

    Raises:
        ValueError: both a model and an oracle, an unknown query kind or oracle, a held-out or evaluated class
            that is not a corpus label (with close matches), a class without clips, a mixture set in ``out`` that
            differs from the one asked for, or ``unrelated_text`` without a model and text queries.
        FileNotFoundError: the corpus is missing.
        separator.checkpoint.CheckpointError: the model folder does not load.
    """
    if model is not None and oracle is not None:
        raise ValueError("give one of --model or --oracle mixture|irm, not both")
    if oracle is None and query not in mx.QUERY_KINDS:
        raise ValueError(f"unknown query kind {query!r}; choose one of {list(mx.QUERY_KINDS)}")
    if unrelated_text is not None and (query != "text" or oracle is not None):
        raise ValueError("--unrelated-text is a control for --query text with a --model")
    out = Path(out)
    items = mx.read_corpus(corpus)
    labels = sorted({lab for it in items for lab in it.labels})
    check_classes(held_out, labels, "--held-out")
    if classes:
        check_classes(classes, labels, "--classes")
    wanted = list(classes) if classes else labels
    set_path = out / "mixture_set.json"
    reused = set_path.is_file()
    config = mx.MixtureSetConfig(mixtures_per_class=per_class, seed=seed)
    if reused:
        specs, query_audio, stored = mx.load_mixture_set(set_path)
        asked = {"mixtures_per_class": per_class, "seed": seed, "classes": sorted(wanted)}
        have = {"mixtures_per_class": stored.mixtures_per_class, "seed": stored.seed,
                "classes": sorted({s.target_class for s in specs})}
        if asked != have:
            raise ValueError(f"{out} holds a different mixture set ({_difference(asked, have)}); use another --out "
                             "or ask for the same set")
        config = stored
    else:
        specs, query_audio = mx.build_mixture_set(items, wanted, config)
    if query == "audio" and oracle is None and not any(query_audio.values()):
        raise ValueError(f"--query audio needs an example clip per class besides its {per_class} mixture targets, and "
                         "no class of this corpus has a spare clip; lower --per-class, add clips, or use --query text/label")
    name, model_path = f"oracle-{oracle}", None
    if oracle is not None:
        estimator: est_mod.Estimator = est_mod.oracle(oracle)
    else:
        model_path, name = _model_facts(model)
        estimator = est_mod.ConditionEstimator(separate=_class_conditions(*load_model(model_path, device=device)),
                                               name=name)
    if not reused:
        mx.save_mixture_set(set_path, specs, query_audio, config)
    texts = {c: unrelated_text for c in wanted} if unrelated_text else None
    results = mx.evaluate_mixtures(specs, estimator, held_out, query_kind=query, query_audio=query_audio,
                                   config=config, texts=texts, progress=progress)
    if unrelated_text:
        results["query_text"] = unrelated_text
    results["settings"] = {
        "corpus": str(Path(corpus).resolve()), "model": None if model_path is None else str(model_path),
        "oracle": oracle, "query": None if oracle else query, "held_out": list(held_out), "classes": wanted,
        "mixtures_per_class": config.mixtures_per_class, "seed": config.seed, "unrelated_text": unrelated_text,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = f"results_{name}" + ("" if oracle else f"_{query}") + ("_unrelated" if unrelated_text else "")
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(results, indent=2))
    atomic_write_text(md_path, mx.results_markdown(results))
    return MixtureRun(results, json_path, md_path, reused)
