"""Label queries: a bank of class centroids (class name -> mean latent of that class's mined segments).

Name matching (:meth:`LabelBank.match`) is case-insensitive and ignores ``_``/``-``
and repeated spaces. A query matches, in this order of preference:

1. a class name (``"dog"`` -> ``Dog``);
2. a comma-separated part of an AudioSet display name (``"man speaking"`` ->
   ``Male speech, man speaking``);
3. the bank's own ``synonyms`` (config: alias -> class name);
4. the built-in everyday phrasings of ``audioset_synonyms.json`` (``"dog bark"`` ->
   ``Bark``, else ``Dog``), only for candidates present in the bank;
5. the same with a final ``s`` removed or added (``"dogs"`` -> ``Dog``).

An unknown name returns ``None``; the query composer then routes it as text
through the AudioSet ontology (:mod:`separator.query.routing`) and says so.

:class:`NameMatcher` holds these rules for any list of names (the bank uses
one; so does the text router). :meth:`LabelBank.mix` turns class weights into a
condition at the norm of the latents the separator was trained on.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from qsep_core.config import from_dict, to_dict

from .errors import QueryError

__all__ = [
    "LabelBankConfig",
    "LabelBank",
    "LabelMatch",
    "NameMatcher",
    "normalise_label",
    "builtin_synonyms",
    "build_label_bank",
    "build_label_bank_from_config",
    "label_bank_table",
]


def normalise_label(name: str) -> str:
    """Matching key of a label: casefolded, ``_``/``-`` as spaces, no surrounding punctuation, single spaces."""
    s = name.casefold().replace("_", " ").replace("-", " ")
    s = re.sub(r"\s+", " ", s).strip(" .;:!?\"'")
    return s


@lru_cache(maxsize=1)
def builtin_synonyms() -> dict[str, tuple[str, ...]]:
    """Everyday phrasing -> AudioSet display names (preferred first), from ``audioset_synonyms.json``."""
    text = resources.files(__package__).joinpath("audioset_synonyms.json").read_text()
    data = json.loads(text)["aliases"]
    return {normalise_label(k): tuple(v) for k, v in data.items()}


@dataclass
class LabelBankConfig:
    """Config of a :class:`LabelBank` component.

    Attributes:
        names: class names, row order of the centroids.
        latent_dim: latent size.
        synonyms: extra alias -> class name.
        counts: segments averaged per class (information only).
        use_builtin_synonyms: also use the AudioSet everyday phrasings shipped with qsep.
        latent_norm: mean L2 norm of the single-segment latents the bank was built from (the scale of the
            conditions the separator was trained with); conditions mixed from centroids are rescaled to it.
            None (banks saved before this field existed): the mean norm of the centroids is used instead.
    """

    names: tuple[str, ...]
    latent_dim: int
    synonyms: dict[str, str] = field(default_factory=dict)
    counts: tuple[int, ...] = ()
    use_builtin_synonyms: bool = True
    latent_norm: float | None = None


@dataclass
class LabelMatch:
    """Result of looking a label up: which class matched and how (``None`` when unknown)."""

    query: str
    name: str | None
    how: str  # "name", "name part", "synonym", "builtin synonym", "plural", "unknown"


class NameMatcher:
    """Finds which of ``names`` a label query means (the rules of the module docstring).

    Args:
        names: class names (display names, e.g. AudioSet's ``"Male speech, man speaking"``).
        synonyms: extra alias -> class name (each target must be one of ``names``; else :class:`QueryError`).
        use_builtin_synonyms: also use ``audioset_synonyms.json`` (only candidates present in ``names``).
    """

    def __init__(self, names: Sequence[str], synonyms: Mapping[str, str] | None = None, use_builtin_synonyms: bool = True):
        self.names = list(names)
        exact = {normalise_label(n): n for n in self.names}
        parts: dict[str, str] = {}
        for n in self.names:
            for p in n.split(","):
                parts.setdefault(normalise_label(p), n)
        own: dict[str, str] = {}
        for alias, target in (synonyms or {}).items():
            if target not in exact.values():
                raise QueryError(f"label bank synonym {alias!r} points to {target!r}, which is not a class of the bank")
            own[normalise_label(alias)] = target
        builtin: dict[str, str] = {}
        if use_builtin_synonyms:
            present = set(self.names)
            for alias, candidates in builtin_synonyms().items():
                for c in candidates:
                    if c in present:
                        builtin[alias] = c
                        break
        #: lookup tables in order of preference: (how, key -> class name)
        self.tables: list[tuple[str, dict[str, str]]] = [
            ("name", exact), ("name part", parts), ("synonym", own), ("builtin synonym", builtin)
        ]

    def match(self, query: str) -> LabelMatch:
        """Find the class ``query`` names, or ``LabelMatch(query, None, "unknown")``."""
        key = normalise_label(query)
        for how, table in self.tables:
            if key in table:
                return LabelMatch(query, table[key], how)
        variants = [key[:-1]] if key.endswith("s") else []
        variants.append(key + "s")
        for v in variants:
            for _, table in self.tables:
                if v in table:
                    return LabelMatch(query, table[v], "plural")
        return LabelMatch(query, None, "unknown")

    def suggestions(self, query: str, n: int = 5) -> list[str]:
        """Class names a mistyped or partial ``query`` may mean (for "did you mean" messages): close spellings
        of a name, a name part or a synonym first (``"Dgo"`` -> ``Dog``), then names sharing a word with it."""
        import difflib

        key = normalise_label(query)
        keys: dict[str, str] = {}
        for _, table in self.tables:
            for k, name in table.items():
                keys.setdefault(k, name)
        out: list[str] = []
        for k in difflib.get_close_matches(key, list(keys), n=3 * n, cutoff=0.6):
            if keys[k] not in out:
                out.append(keys[k])
        words = set(key.split())
        scored = [(len(words & set(normalise_label(c).replace(",", " ").split())), c) for c in self.names]
        out += [c for s, c in sorted(scored, key=lambda x: -x[0]) if s > 0 and c not in out]
        return out[:n]

    def aliases(self) -> dict[str, list[str]]:
        """Class name -> the synonyms that reach it (the bank's own, then the built-in ones present)."""
        out: dict[str, list[str]] = {n: [] for n in self.names}
        for how, table in self.tables:
            if how in ("synonym", "builtin synonym"):
                for alias, name in table.items():
                    # only aliases that really reach this class (a name part of another class wins first)
                    if alias != normalise_label(name) and alias not in out[name] and self.match(alias).name == name:
                        out[name].append(alias)
        return out


class LabelBank(nn.Module):
    """Class name -> centroid latent.

    Buffers: ``centroids (n_classes, latent_dim)`` and ``global_mean (latent_dim,)`` (mean of every segment the
    bank was built from; used as the origin for negative queries).
    """

    def __init__(self, config: LabelBankConfig) -> None:
        super().__init__()
        names = list(config.names)
        if not names:
            raise QueryError("a label bank needs at least one class name")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise QueryError(f"duplicate class names in label bank: {dup}")
        if config.latent_norm is not None and not config.latent_norm > 0:
            raise QueryError(f"label bank latent_norm must be > 0 (or None), got {config.latent_norm}")
        self.config = config
        self.names = names
        self.register_buffer("centroids", torch.zeros(len(names), config.latent_dim))
        self.register_buffer("global_mean", torch.zeros(config.latent_dim))
        self.matcher = NameMatcher(names, config.synonyms, config.use_builtin_synonyms)

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    def match(self, query: str) -> LabelMatch:
        """Find the class a label query names (see the module docstring for the rules)."""
        return self.matcher.match(query)

    def vector(self, name: str) -> torch.Tensor:
        """Centroid ``(latent_dim,)`` of the exact class ``name``."""
        try:
            i = self.names.index(name)
        except ValueError:
            raise QueryError(f"{name!r} is not a class of this label bank") from None
        return self.centroids[i].detach().clone()

    def lookup(self, query: str) -> tuple[LabelMatch, torch.Tensor | None]:
        """``(match, centroid or None)`` for a label query."""
        m = self.match(query)
        return m, (self.vector(m.name) if m.name is not None else None)

    def suggestions(self, query: str, n: int = 5) -> list[str]:
        """Class names that share a word with ``query`` (for an 'unknown label' message)."""
        return self.matcher.suggestions(query, n)

    @property
    def target_norm(self) -> float:
        """L2 norm of the conditions :meth:`mix` makes: ``config.latent_norm``, else the mean centroid norm."""
        if self.config.latent_norm is not None:
            return float(self.config.latent_norm)
        return float(self.centroids.detach().float().norm(dim=-1).mean())

    def mix(self, weights: Mapping[str, float]) -> torch.Tensor:
        """Condition ``(latent_dim,)`` from class weights: ``sum_i w_i * centroid_i``, rescaled to :attr:`target_norm`.

        Args:
            weights: class name -> weight (> 0; normalised to sum 1 here).

        Raises:
            QueryError: no weights, a weight <= 0, an unknown class, or a mixture of (near) zero norm.
        """
        if not weights:
            raise QueryError("no classes to mix")
        w = torch.tensor([float(v) for v in weights.values()], dtype=torch.float32)  # (n_classes_used,)
        if not bool((w > 0).all()):
            raise QueryError(f"class weights must be > 0, got {dict(weights)}")
        rows = torch.stack([self.vector(n).float() for n in weights])  # (n_classes_used, latent_dim)
        mixed = ((w / w.sum())[:, None] * rows).sum(dim=0)  # (latent_dim,)
        norm = float(mixed.norm())
        if norm < 1e-12:
            raise QueryError(f"the centroids of {list(weights)} cancel out; query one class at a time")
        return mixed * (self.target_norm / norm)


def build_label_bank_from_config(config: Mapping[str, Any]) -> LabelBank:
    """Checkpoint builder of kind ``"label_bank"``: config dict -> empty :class:`LabelBank` (weights loaded after)."""
    return LabelBank(from_dict(LabelBankConfig, config))


def build_label_bank(
    latents: torch.Tensor,
    labels: Sequence[Sequence[str]],
    names: Sequence[str] | None = None,
    synonyms: Mapping[str, str] | None = None,
    min_count: int = 1,
) -> LabelBank:
    """Average latents per class; record the mean single-latent norm as ``latent_norm``.

    Args:
        latents: ``(n_segments, latent_dim)`` latents of mined segments.
        labels: per segment, the class names it carries.
        names: classes to include (default: every label seen, sorted); a class with fewer than ``min_count``
            segments is left out.
        synonyms: extra alias -> class name.
        min_count: minimum segments per class.
    """
    if latents.ndim != 2 or latents.shape[0] != len(labels):
        raise QueryError(f"latents {tuple(latents.shape)} do not match {len(labels)} label rows")
    if names is None:
        names = sorted({lab for row in labels for lab in row})
    rows, kept, counts = [], [], []
    for name in names:
        idx = [i for i, row in enumerate(labels) if name in row]
        if len(idx) < min_count:
            continue
        rows.append(latents[idx].float().mean(dim=0))
        kept.append(name)
        counts.append(len(idx))
    if not kept:
        raise QueryError("no class has enough segments to build a label bank")
    syn = {a: t for a, t in (synonyms or {}).items() if t in kept}
    latent_norm = float(latents.float().norm(dim=-1).mean())
    cfg = LabelBankConfig(
        names=tuple(kept), latent_dim=int(latents.shape[1]), synonyms=syn, counts=tuple(counts), latent_norm=latent_norm
    )
    bank = LabelBank(cfg)
    with torch.no_grad():
        bank.centroids.copy_(torch.stack(rows))
        bank.global_mean.copy_(latents.float().mean(dim=0))
    return bank


def label_bank_table(model: Any = None) -> list[dict[str, Any]]:
    """The labels of a model: ``[{"label", "synonyms": [...], "count"}]`` in bank order (``count``: training
    anchors averaged into the class centroid, None when unknown). ``model`` is resolved like every model
    argument (:func:`qsep_core.hub.resolve_model`; None: the shipped model).

    Raises:
        qsep_core.checkpoint.CheckpointError: the model is not found, or has no label bank.
    """
    from qsep_core.checkpoint import CheckpointError, ModelFolder
    from qsep_core.hub import resolve_model

    folder = ModelFolder(resolve_model(model))
    names = [n for n, spec in folder.components.items() if spec.get("kind") == "label_bank"]
    if not names:
        raise CheckpointError(f"{folder.path} has no label bank (components: {sorted(folder.components)}); "
                              "label queries need one (`qsep train text-projection` adds it)")
    cfg = from_dict(LabelBankConfig, folder.component_config(names[0]))
    aliases = NameMatcher(cfg.names, cfg.synonyms, cfg.use_builtin_synonyms).aliases()
    counts = list(cfg.counts) if cfg.counts else [None] * len(cfg.names)
    return [{"label": n, "synonyms": aliases[n], "count": None if c is None else int(c)} for n, c in zip(cfg.names, counts)]


def label_bank_config_dict(bank: LabelBank) -> dict[str, Any]:
    """JSON-friendly config of a bank (input of :func:`build_label_bank_from_config`)."""
    return to_dict(bank.config)
