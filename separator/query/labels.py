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

An unknown name returns ``None``; the query composer then falls back to the
text path and says so.
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
    "normalise_label",
    "builtin_synonyms",
    "build_label_bank",
    "build_label_bank_from_config",
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
    """

    names: tuple[str, ...]
    latent_dim: int
    synonyms: dict[str, str] = field(default_factory=dict)
    counts: tuple[int, ...] = ()
    use_builtin_synonyms: bool = True


@dataclass
class LabelMatch:
    """Result of looking a label up: which class matched and how (``None`` when unknown)."""

    query: str
    name: str | None
    how: str  # "name", "name part", "synonym", "builtin synonym", "plural", "unknown"


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
        self.config = config
        self.names = names
        self.register_buffer("centroids", torch.zeros(len(names), config.latent_dim))
        self.register_buffer("global_mean", torch.zeros(config.latent_dim))
        self._index = self._build_index()

    def _build_index(self) -> list[tuple[str, dict[str, str]]]:
        """Lookup tables in order of preference: (how, key -> class name)."""
        exact = {normalise_label(n): n for n in self.names}
        parts: dict[str, str] = {}
        for n in self.names:
            for p in n.split(","):
                parts.setdefault(normalise_label(p), n)
        own: dict[str, str] = {}
        for alias, target in self.config.synonyms.items():
            if target not in exact.values():
                raise QueryError(f"label bank synonym {alias!r} points to {target!r}, which is not a class of the bank")
            own[normalise_label(alias)] = target
        builtin: dict[str, str] = {}
        if self.config.use_builtin_synonyms:
            present = set(self.names)
            for alias, candidates in builtin_synonyms().items():
                for c in candidates:
                    if c in present:
                        builtin[alias] = c
                        break
        return [("name", exact), ("name part", parts), ("synonym", own), ("builtin synonym", builtin)]

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    def match(self, query: str) -> LabelMatch:
        """Find the class a label query names (see the module docstring for the rules)."""
        key = normalise_label(query)
        for how, table in self._index:
            if key in table:
                return LabelMatch(query, table[key], how)
        variants = [key[:-1]] if key.endswith("s") else []
        variants.append(key + "s")
        for v in variants:
            for _, table in self._index:
                if v in table:
                    return LabelMatch(query, table[v], "plural")
        return LabelMatch(query, None, "unknown")

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
        words = set(normalise_label(query).split())
        scored = [(len(words & set(normalise_label(c).replace(",", " ").split())), c) for c in self.names]
        return [c for s, c in sorted(scored, key=lambda x: -x[0]) if s > 0][:n]


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
    """Average latents per class.

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
    cfg = LabelBankConfig(names=tuple(kept), latent_dim=int(latents.shape[1]), synonyms=syn, counts=tuple(counts))
    bank = LabelBank(cfg)
    with torch.no_grad():
        bank.centroids.copy_(torch.stack(rows))
        bank.global_mean.copy_(latents.float().mean(dim=0))
    return bank


def label_bank_config_dict(bank: LabelBank) -> dict[str, Any]:
    """JSON-friendly config of a bank (input of :func:`build_label_bank_from_config`)."""
    return to_dict(bank.config)
