"""The AudioSet ontology: class names, descriptions and hierarchy, and walks through it.

The ontology ships as ``separator/query/data/audioset_ontology.json`` (Google, CC BY-SA 4.0; see
``data/NOTICE.md``): a JSON list of 632 classes, each with ``id`` (the MID, e.g. ``"/m/0bt9lr"``),
``name`` (display name, e.g. ``"Dog"``; comma-separated alternatives such as ``"Walk, footsteps"``),
``description``, ``child_ids`` and ``restrictions``. A class may have several parents (``Howl`` is a
child of both ``Dog`` and ``Canidae, dogs, wolves``); the seven classes without a parent are the roots
(``Animal``, ``Music``, ``Human sounds``, ...).

:func:`hierarchy_factors` measures how closely two classes are related: a path of up to ``max_hops``
parent/child steps, each step multiplying a factor (``up`` towards the more general class, ``down`` towards
the more specific one); a root may start or end a path but is never passed through (everything is an
``Animal`` sound or a ``Sound of things``: that relation says nothing).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import QueryError
from .labels import normalise_label

__all__ = [
    "OntologyClass",
    "Ontology",
    "load_ontology",
    "default_ontology",
    "hierarchy_factors",
    "bank_class_anchors",
]

ONTOLOGY_FILE = "audioset_ontology.json"
BANK_MAP_FILE = "bank_class_ontology.json"


@dataclass(frozen=True)
class OntologyClass:
    """One ontology class (row ``index`` of :class:`Ontology`)."""

    index: int
    mid: str
    name: str
    description: str
    parents: tuple[int, ...]
    children: tuple[int, ...]
    restrictions: tuple[str, ...]

    @property
    def name_parts(self) -> list[str]:
        """The comma-separated alternatives of the display name (``"Walk, footsteps"`` -> two parts)."""
        return [p.strip() for p in self.name.split(",") if p.strip()]


class Ontology:
    """The classes of an AudioSet-format ontology, indexed by MID and by normalised name.

    Args:
        rows: the parsed JSON list (dicts with ``id``, ``name``, ``description``, ``child_ids``, ``restrictions``).
        sha256: fingerprint of the source file (keys caches of things computed from it).

    Raises:
        QueryError: a row without ``id``/``name``, a duplicate MID, or a child id that is not a class.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], sha256: str = "") -> None:
        index: dict[str, int] = {}
        for i, r in enumerate(rows):
            if not r.get("id") or not r.get("name"):
                raise QueryError(f"ontology row {i} has no id or name: {dict(r)!r:.200}")
            if r["id"] in index:
                raise QueryError(f"duplicate ontology id {r['id']!r}")
            index[r["id"]] = i
        parents: list[list[int]] = [[] for _ in rows]
        for i, r in enumerate(rows):
            for c in r.get("child_ids", []):
                if c not in index:
                    raise QueryError(f"ontology class {r['name']!r} lists an unknown child id {c!r}")
                parents[index[c]].append(i)
        self.classes = [
            OntologyClass(
                index=i,
                mid=r["id"],
                name=r["name"],
                description=r.get("description", "") or "",
                parents=tuple(parents[i]),
                children=tuple(index[c] for c in r.get("child_ids", [])),
                restrictions=tuple(r.get("restrictions", [])),
            )
            for i, r in enumerate(rows)
        ]
        self.sha256 = sha256
        self._by_mid = index
        self._by_name: dict[str, int] = {}
        for c in self.classes:
            self._by_name.setdefault(normalise_label(c.name), c.index)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def by_mid(self, mid: str) -> OntologyClass | None:
        i = self._by_mid.get(mid)
        return None if i is None else self.classes[i]

    def by_name(self, name: str) -> OntologyClass | None:
        """The class whose display name equals ``name`` after :func:`normalise_label` (case, ``_``/``-``)."""
        i = self._by_name.get(normalise_label(name))
        return None if i is None else self.classes[i]

    def is_root(self, i: int) -> bool:
        return not self.classes[i].parents


def load_ontology(path: str | os.PathLike | None = None) -> Ontology:
    """Read an ontology JSON file (default: the copy shipped with qsep)."""
    if path is None:
        data = resources.files(__package__).joinpath("data", ONTOLOGY_FILE).read_bytes()
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise QueryError(f"cannot read the ontology file {path}: {exc}") from exc
    try:
        rows = json.loads(data)
    except json.JSONDecodeError as exc:
        raise QueryError(f"the ontology file {path or ONTOLOGY_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(rows, list):
        raise QueryError(f"the ontology file {path or ONTOLOGY_FILE} must hold a JSON list of classes")
    return Ontology(rows, sha256=hashlib.sha256(data).hexdigest())


@lru_cache(maxsize=1)
def default_ontology() -> Ontology:
    """The shipped ontology, parsed once per process."""
    return load_ontology()


def hierarchy_factors(
    ontology: Ontology, start: Sequence[int], up: float, down: float, max_hops: int
) -> dict[int, tuple[float, int]]:
    """How closely every class is related to the classes ``start``: ``{class index: (factor, hops)}``.

    The factor of a class ``q`` is the best product over paths ``q -> ... -> s`` (``s`` in ``start``) of ``up``
    for each step from a class to its parent and ``down`` for each step to a child, with at most ``max_hops``
    steps and no root in the middle of the path. ``start`` classes have factor 1 (0 hops); classes that no path
    reaches are absent. With ``up=0.85, down=0.75`` a class's parent gets 0.85 relative to it, a child 0.75, a
    sibling 0.64.

    The direction is that of a QUERY class ``q`` walking to a bank class ``s``: ``q`` a child of ``s`` (the bank
    class is more general) is one ``up`` step.
    """
    if not (0 < up <= 1 and 0 < down <= 1):
        raise QueryError(f"hierarchy decays must be in (0, 1], got up={up}, down={down}")
    best: dict[int, tuple[float, int]] = {s: (1.0, 0) for s in start}
    frontier = dict(best)
    for hop in range(1, max_hops + 1):
        nxt: dict[int, tuple[float, int]] = {}
        for node, (f, _) in frontier.items():
            if hop > 1 and ontology.is_root(node):
                continue  # a root ends a path; it never joins two classes
            c = ontology.classes[node]
            # walking outwards from the bank class: to its child = the query is more specific = one "up" step
            for nb, step in [(ch, up) for ch in c.children] + [(p, down) for p in c.parents]:
                g = f * step
                if g > best.get(nb, (0.0, 0))[0] and g > nxt.get(nb, (0.0, 0))[0]:
                    nxt[nb] = (g, hop)
        for nb, v in nxt.items():
            best[nb] = v
        frontier = nxt
        if not frontier:
            break
    return best


@lru_cache(maxsize=1)
def _builtin_bank_map() -> dict[str, tuple[str, ...]]:
    text = resources.files(__package__).joinpath("data", BANK_MAP_FILE).read_text()
    return {normalise_label(k): tuple(v["mids"]) for k, v in json.loads(text)["classes"].items()}


def bank_class_anchors(
    names: Sequence[str], ontology: Ontology, extra: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[int]]:
    """Ontology classes each bank class stands for: ``{bank name: [ontology index, ...]}`` (empty list: none).

    ``extra`` (bank name -> MIDs) or, for names it lacks, the shipped ``data/bank_class_ontology.json`` (the
    music-stem classes, e.g. ``"Vocals, singing voice"`` -> ``Singing``) give the anchors explicitly. Otherwise
    the anchors are the ontology classes named like the bank class or like one of its comma-separated parts
    (case-insensitive, also with a final ``s`` added or removed): ``"Canidae, dogs, wolves"`` -> Canidae and Dog.

    Raises:
        QueryError: a MID in ``extra`` or in the shipped map that the ontology does not have.
    """
    table = dict(_builtin_bank_map())
    table.update({normalise_label(k): tuple(v) for k, v in (extra or {}).items()})
    out: dict[str, list[int]] = {}
    for name in names:
        key = normalise_label(name)
        if key in table:
            idx = []
            for mid in table[key]:
                c = ontology.by_mid(mid)
                if c is None:
                    raise QueryError(f"bank class {name!r} is mapped to {mid!r}, which is not an ontology class")
                idx.append(c.index)
            out[name] = idx
            continue
        idx = []
        for part in [name] + (name.split(",") if "," in name else []):
            k = normalise_label(part)
            variants = [k] + ([k[:-1]] if k.endswith("s") else []) + [k + "s"]
            hit = next((c for c in (ontology.by_name(v) for v in variants) if c is not None), None)
            if hit is not None and hit.index not in idx:
                idx.append(hit.index)
        out[name] = idx
    return out
