"""Query composition: texts, example recordings, labels and saved conditions -> one condition vector.

A :class:`Query` holds positive items (what to separate) and negative items
(what not to). Each item becomes a vector in the detector's latent space:

* ``text``: routed to the classes of the model's label bank through the AudioSet
  ontology (:mod:`separator.query.routing`): the weighted sum of their centroids,
  at the norm of training latents (:meth:`~separator.query.labels.LabelBank.mix`).
  Text that matches no class well (or a model without a bank) goes through the
  learned :class:`~separator.query.text.TextProjection` instead, and ``notes`` say so;
* ``audio``: one or more files -> :class:`~separator.query.audio.AudioQueryEncoder`
  (segment means per file, then the mean over files);
* ``label``: the bank class the label names (:meth:`LabelBank.mix` of that one
  class); a label the bank does not know is routed like text, then falls back to
  the projection; ``notes`` say which;
* ``embedding``: a condition file written by :func:`save_embedding`.

Positives combine as a weighted mean ``c_pos = sum(w_i v_i) / sum(w_i)``
(weights > 0; the official audio query is the plain mean of latents, so means
keep conditions at the scale the separator was trained on).

Negatives ("speech but not laughter") use condition arithmetic around an origin
``mu`` (the mean training latent stored with the text projection or label bank;
zero if the model has neither). With ``p = c_pos - mu`` and ``n = c_neg - mu``:

* ``"subtract"`` (default): ``r = p - beta * n``;
* ``"reject"``: ``r = p - beta * (p . n_hat) n_hat`` (removes only the part of
  ``p`` along ``n``, ``n_hat = n / |n|``);

then ``c = mu + r * |p| / |r|`` (the result keeps the norm of the positive, so
it stays at the scale of real latents). ``beta`` is ``negative_strength``
(default 0.25). ``benchmarks/negative_queries.py`` measures the effect on
separation; on a toy set (5 synthetic classes, tiny separator, audio queries,
two training runs) beta 0.25-0.5 raised the mean SI-SDRi by +2.4 / +10 dB over
no negative, improving 55-83 % of the mixtures, and beta 1 wrecked the
separation (-9 to -14 dB): keep beta small. Not measured on a real model.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .audio import AudioQueryEncoder, AudioQueryResult
from .embedding import check_embedding_dim, load_embedding
from .errors import QueryError
from .labels import LabelBank, LabelMatch
from .routing import RoutingConfig, RoutingResult, TextRouter
from .text import DEFAULT_TEXT_ENCODER, TextEncoder, TextProjection, load_text_encoder

__all__ = [
    "QUERY_KINDS",
    "NEGATIVE_METHODS",
    "QueryItem",
    "Query",
    "PartResult",
    "ConditionResult",
    "QueryEncoder",
    "combine",
    "apply_negative",
    "save_condition",
]

QUERY_KINDS = ("text", "audio", "label", "embedding")
NEGATIVE_METHODS = ("subtract", "reject")
#: beta of the negative arithmetic (see the module docstring for what was measured)
DEFAULT_NEGATIVE_STRENGTH = 0.25
#: component kinds the query encoder looks for in a model folder, and the preferred component name of each
AUDIO_ENCODER_KIND = "htsat"
#: names an audio query encoder component may have, preferred first ("audio_encoder" is what sed.load_detector uses)
PREFERRED_AUDIO_COMPONENTS = ("audio_encoder", "query_encoder", "detector")
TEXT_PROJECTION_KIND = "text_projection"
LABEL_BANK_KIND = "label_bank"
SEPARATOR_KIND = "query_unet"
PREFERRED_SEPARATOR_COMPONENT = "separator"


@dataclass
class QueryItem:
    """One part of a query.

    Attributes:
        kind: ``"text"``, ``"audio"``, ``"label"`` or ``"embedding"``.
        value: the text / label / condition-file path; for ``"audio"`` a list of files (averaged as one example set).
        weight: relative weight among the items on the same side (positive or negative); must be > 0.
    """

    kind: str
    value: Any
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in QUERY_KINDS:
            raise QueryError(f"unknown query kind {self.kind!r}; known: {list(QUERY_KINDS)}")
        if not self.weight > 0:
            raise QueryError(f"query weights must be > 0, got {self.weight} for {self.kind} {self.value!r}")
        if self.kind == "audio":
            files = [self.value] if isinstance(self.value, (str, os.PathLike)) else list(self.value)
            if not files:
                raise QueryError("an audio query needs at least one file")
            self.value = [str(f) for f in files]
        else:
            if isinstance(self.value, os.PathLike):
                self.value = str(self.value)
            if not isinstance(self.value, str) or not self.value.strip():
                raise QueryError(f"empty {self.kind} query: {self.value!r}")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "weight": self.weight}


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [x]
    return list(x)


@dataclass
class Query:
    """What to separate (positives) and what not to (negatives)."""

    positives: list[QueryItem]
    negatives: list[QueryItem] = field(default_factory=list)
    negative_strength: float = DEFAULT_NEGATIVE_STRENGTH
    negative_method: str = "subtract"

    def __post_init__(self) -> None:
        if not self.positives:
            raise QueryError("empty query: give a text, audio file(s), a label or an embedding file")
        if self.negative_method not in NEGATIVE_METHODS:
            raise QueryError(f"unknown negative method {self.negative_method!r}; known: {list(NEGATIVE_METHODS)}")
        if not 0 <= self.negative_strength:
            raise QueryError(f"negative_strength must be >= 0, got {self.negative_strength}")

    @classmethod
    def build(
        cls,
        text: str | Sequence[str] | None = None,
        audio: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        label: str | Sequence[str] | None = None,
        embedding: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        weights: Sequence[float] | None = None,
        negative: str | Sequence[str] | None = None,
        negative_audio: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        negative_label: str | Sequence[str] | None = None,
        negative_strength: float = DEFAULT_NEGATIVE_STRENGTH,
        negative_method: str = "subtract",
    ) -> "Query":
        """Build a query from plain arguments.

        Positives are, in this order: each text, the audio files (ONE item: files are averaged), each label, each
        embedding file. ``weights`` (optional) gives one weight per positive item in that order. ``negative`` is
        text; ``negative_audio`` / ``negative_label`` are the other negative kinds.
        """
        pos = [QueryItem("text", t) for t in _as_list(text)]
        if _as_list(audio):
            pos.append(QueryItem("audio", _as_list(audio)))
        pos += [QueryItem("label", lab) for lab in _as_list(label)]
        pos += [QueryItem("embedding", e) for e in _as_list(embedding)]
        if weights is not None:
            weights = list(weights)
            if len(weights) != len(pos):
                raise QueryError(f"{len(weights)} weights given for {len(pos)} positive query items")
            for item, w in zip(pos, weights):
                if not w > 0:
                    raise QueryError(f"query weights must be > 0, got {w} for {item.kind} {item.value!r}")
                item.weight = float(w)
        neg = [QueryItem("text", t) for t in _as_list(negative)]
        if _as_list(negative_audio):
            neg.append(QueryItem("audio", _as_list(negative_audio)))
        neg += [QueryItem("label", lab) for lab in _as_list(negative_label)]
        return cls(pos, neg, negative_strength=negative_strength, negative_method=negative_method)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"positives": [i.describe() for i in self.positives]}
        if self.negatives:
            d["negatives"] = [i.describe() for i in self.negatives]
            d["negative_strength"] = self.negative_strength
            d["negative_method"] = self.negative_method
        return d

    def short_name(self) -> str:
        """A short human-readable name (e.g. for output file names)."""
        parts = []
        for i in self.positives:
            if i.kind == "audio":
                parts.append("+".join(Path(f).stem for f in i.value))
            elif i.kind == "embedding":
                parts.append(Path(i.value).stem)
            else:
                parts.append(i.value)
        name = "+".join(parts)
        if self.negatives:
            name += "-not-" + "+".join(
                "+".join(Path(f).stem for f in i.value) if i.kind == "audio" else str(i.value) for i in self.negatives
            )
        return name


#: how a query item became a vector (PartResult.source)
SOURCES = (
    "text -> classes",  # routed to label-bank classes
    "text -> projection",  # learned text projection (no bank, or no class matched well)
    "audio",
    "label",  # a class of the bank, by name / synonym
    "label -> classes",  # a label the bank does not know, routed like text
    "label -> projection",  # ... that matched no class well either
    "embedding",
)


@dataclass
class PartResult:
    """How one query item became a vector.

    Attributes:
        vector: ``(latent_dim,)``.
        source: one of :data:`SOURCES`.
        audio: segments used (audio queries).
        match: the bank's name lookup (label queries).
        routing: the bank classes and weights a text (or unknown label) became, or why none (see
            :class:`~separator.query.routing.RoutingResult`); None when no routing was tried (no label bank).
    """

    item: QueryItem
    vector: torch.Tensor  # (latent_dim,)
    source: str
    audio: AudioQueryResult | None = None
    match: LabelMatch | None = None
    routing: RoutingResult | None = None

    def report_line(self, side: str = "+") -> str:
        """``+ text 'dog barking' (weight 1) -> Canidae, dogs, wolves 1.00`` (one line)."""
        head = f"{side} {self.item.kind} {self.item.value!r} (weight {self.item.weight:g})"
        if self.routing is not None and self.routing.matched:
            return f"{head} -> {self.routing.summary()}"
        extra = f" -> {self.match.name} ({self.match.how})" if self.match and self.match.name else ""
        return f"{head} via {self.source}{extra}"


@dataclass
class ConditionResult:
    """The condition vector and a record of how it was made.

    Attributes:
        condition: ``(latent_dim,)``.
        positives / negatives: one :class:`PartResult` per item.
        notes: things the user should know (label fallbacks, ...).
    """

    condition: torch.Tensor
    query: Query
    positives: list[PartResult]
    negatives: list[PartResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What was asked, how each part was encoded, the routing of text parts, and the notes (JSON-friendly)."""
        d = self.query.describe()
        d["sources"] = [p.source for p in self.positives] + [f"negative {p.source}" for p in self.negatives]
        routes = [
            {"side": side, "kind": p.item.kind, **p.routing.describe()}
            for side, parts in (("positive", self.positives), ("negative", self.negatives))
            for p in parts
            if p.routing is not None
        ]
        if routes:
            d["routing"] = routes
        if self.notes:
            d["notes"] = list(self.notes)
        return d

    def report_lines(self, verbose: bool = False) -> list[str]:
        """Notes (always), and with ``verbose`` one line per part: the classes a text became with their weights,
        how each class matched, the audio segments used."""
        lines = list(self.notes)
        if verbose:
            for side, parts in (("+", self.positives), ("-", self.negatives)):
                for p in parts:
                    lines.append(p.report_line(side))
                    if p.routing is not None and p.routing.matched:
                        lines += ["    " + c.explain() for c in p.routing.classes]
                    if p.audio is not None:
                        lines += ["    " + s for s in p.audio.report_lines()]
        return lines


def combine(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of ``(latent_dim,)`` vectors."""
    if not vectors:
        raise QueryError("nothing to combine")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if not bool((w > 0).all()):
        raise QueryError(f"query weights must be > 0, got {w.tolist()}")
    v = torch.stack([x.float() for x in vectors])  # (n_items, latent_dim)
    return (w[:, None] * v).sum(dim=0) / w.sum()


def apply_negative(
    positive: torch.Tensor, negative: torch.Tensor, origin: torch.Tensor, strength: float, method: str = "subtract"
) -> torch.Tensor:
    """Condition arithmetic for negative queries (see the module docstring). All shapes ``(latent_dim,)``."""
    p = positive.float() - origin
    n = negative.float() - origin
    if method == "subtract":
        r = p - strength * n
    elif method == "reject":
        n_hat = n / n.norm().clamp(min=1e-12)
        r = p - strength * (p @ n_hat) * n_hat
    else:
        raise QueryError(f"unknown negative method {method!r}; known: {list(NEGATIVE_METHODS)}")
    r_norm = r.norm()
    if float(r_norm) < 1e-8 * max(float(p.norm()), 1e-12):
        raise QueryError("the negative query cancels the positive one entirely; lower negative_strength")
    return origin + r * (p.norm() / r_norm)


def _config_sha256(folder: Any) -> str:
    """Fingerprint of a model's config (architecture + preprocessing of every component), for saved conditions."""
    return hashlib.sha256(json.dumps(folder.config, sort_keys=True).encode()).hexdigest()


class QueryEncoder:
    """Turns :class:`Query` objects into conditions.

    Every part is optional and, when built :meth:`from_model`, loaded only the first time a query needs it (so a
    query made only of an embedding file loads no encoder at all).

    Args:
        audio: encoder for audio queries.
        text_encoder: text encoder; None loads ``projection.config.text_encoder`` when a text query comes.
        projection: text -> latent projection.
        label_bank: label centroids.
        origin: ``(latent_dim,)`` origin for negatives; default the projection's ``latent_mean``, else the bank's
            ``global_mean``, else zeros.
        model_info: facts about the model, recorded in saved conditions.
        device: device for the text encoder and projection.
        routing: parameters of text -> class routing (:class:`~separator.query.routing.RoutingConfig`).
        routing_cache: user cache folder for the routing's class-text embeddings (None: default; False: none).
    """

    def __init__(
        self,
        audio: AudioQueryEncoder | None = None,
        text_encoder: TextEncoder | None = None,
        projection: TextProjection | None = None,
        label_bank: LabelBank | None = None,
        origin: torch.Tensor | None = None,
        model_info: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        routing: RoutingConfig | None = None,
        routing_cache: str | os.PathLike | None | bool = None,
    ) -> None:
        self._audio = audio
        self._text_encoder = text_encoder
        self._projection = projection
        self._label_bank = label_bank
        self._origin = origin
        self.model_info = model_info
        self.device = torch.device(device)
        self._folder: Any = None
        self._audio_kwargs: dict[str, Any] = {}
        self._text_encoder_spec: str | None = None
        self.routing_config = routing or RoutingConfig()
        self._routing_cache = routing_cache
        self._router: TextRouter | None = None

    # ------------------------------------------------------------ construction from a model folder
    @classmethod
    def from_model(
        cls, model: Any, device: str | torch.device = "cpu", text_encoder: str | TextEncoder | None = None, **audio_kwargs: Any
    ) -> "QueryEncoder":
        """Query encoder over the components of a model (a :class:`~separator.checkpoint.ModelFolder`, or anything
        :func:`qsep_core.hub.resolve_model` takes: a folder, a name from ``qsep models``, None for the shipped model).

        Components are found by kind: ``htsat`` (the query encoder; by name ``audio_encoder``, ``query_encoder``,
        ``detector`` first if there are several), ``text_projection``, ``label_bank``, ``query_unet`` (its
        ``cond_dim`` is checked against every query part). ``text_encoder`` overrides the spec the projection was
        trained with (a different encoder only makes sense if it gives the same embedding space).
        ``audio_kwargs`` go to :class:`AudioQueryEncoder` (``relative_db``, ``floor_dbfs``, ...).
        """
        from qsep_core.hub import model_display_name, resolve_model
        from separator.checkpoint import ModelFolder

        folder = model if isinstance(model, ModelFolder) else ModelFolder(resolve_model(model))
        enc = cls(device=device, model_info={"path": str(folder.path), "name": model_display_name(folder.path), "config_sha256": _config_sha256(folder)})
        enc._folder = folder
        enc._audio_kwargs = dict(audio_kwargs)
        if isinstance(text_encoder, TextEncoder):
            enc._text_encoder = text_encoder
        elif isinstance(text_encoder, str):
            enc._text_encoder_spec = text_encoder
        return enc

    def _component(self, kind: str, preferred: str | Sequence[str] = ()) -> str | None:
        if self._folder is None:
            return None
        names = [n for n, spec in self._folder.components.items() if spec.get("kind") == kind]
        if not names:
            return None
        for p in [preferred] if isinstance(preferred, str) else preferred:
            if p in names:
                return p
        return sorted(names)[0]

    @property
    def audio(self) -> AudioQueryEncoder | None:
        if self._audio is None:
            name = self._component(AUDIO_ENCODER_KIND, PREFERRED_AUDIO_COMPONENTS)
            if name is not None:
                detector = self._folder.build(name, self.device)
                self._audio = AudioQueryEncoder(detector, **self._audio_kwargs)
        return self._audio

    @property
    def projection(self) -> TextProjection | None:
        if self._projection is None:
            name = self._component(TEXT_PROJECTION_KIND)
            if name is not None:
                self._projection = self._folder.build(name, self.device)
        return self._projection

    @property
    def label_bank(self) -> LabelBank | None:
        if self._label_bank is None:
            name = self._component(LABEL_BANK_KIND)
            if name is not None:
                self._label_bank = self._folder.build(name, "cpu")
        return self._label_bank

    @property
    def text_encoder(self) -> TextEncoder:
        """The text encoder: the override, else the one the projection was trained on, else (routing to a label
        bank only) the default MiniLM."""
        if self._text_encoder is None:
            proj = self.projection
            spec = self._text_encoder_spec or (proj.config.text_encoder if proj is not None else None)
            if spec is None and self.label_bank is not None:
                spec = DEFAULT_TEXT_ENCODER
            if spec is None:
                raise QueryError(self._no_text_message())
            self._text_encoder = load_text_encoder(spec, device=self.device)
        return self._text_encoder

    @property
    def router(self) -> TextRouter | None:
        """Text -> label-bank classes (None without a label bank); built on the first text query."""
        if self._router is None and self.label_bank is not None:
            self._router = TextRouter.from_bank(
                self.label_bank, self.text_encoder, config=self.routing_config, cache_dir=self._routing_cache
            )
        return self._router

    def _no_text_message(self) -> str:
        where = f"the model {self._folder.path}" if self._folder is not None else "this query encoder"
        return (
            f"{where} has no label bank and no text projection, so text queries cannot be used; train a projection "
            "with `qsep train text-projection --config ... --model DIR`, or query with --query-audio / --label / --embedding"
        )

    @property
    def model_cond_dim(self) -> int | None:
        """Condition size of the model folder's separator (``cond_dim`` of its ``query_unet``), if it has one."""
        name = self._component(SEPARATOR_KIND, PREFERRED_SEPARATOR_COMPONENT)
        if name is None:
            return None
        dim = self._folder.component_config(name).get("cond_dim")
        return int(dim) if dim is not None else None

    def origin(self, dim: int) -> torch.Tensor:
        """Origin for negative arithmetic ``(dim,)``."""
        if self._origin is not None:
            return self._origin.float().cpu()
        if self._folder is None or self._component(TEXT_PROJECTION_KIND) or self._component(LABEL_BANK_KIND):
            proj = self.projection
            if proj is not None and proj.config.latent_dim == dim:
                return proj.latent_mean.detach().float().cpu()
            bank = self.label_bank
            if bank is not None and bank.latent_dim == dim:
                return bank.global_mean.detach().float().cpu()
        return torch.zeros(dim)

    # ------------------------------------------------------------ encoding
    def route(self, text: str) -> RoutingResult | None:
        """The label-bank classes ``text`` is routed to (None: the model has no label bank)."""
        router = self.router
        return router.route(text) if router is not None else None

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Conditions for texts ``(len(texts), latent_dim)``, encoded as text query items are (routing, else the
        projection)."""
        notes: list[str] = []
        return torch.stack([self._encode_text_item(QueryItem("text", t), notes).vector for t in texts])

    def _projection_vector(self, text: str) -> torch.Tensor:
        proj = self.projection
        if proj is None:
            raise QueryError(self._no_text_message())
        return proj.encode_texts(self.text_encoder, [text])[0]

    def _encode_text_item(self, item: QueryItem, notes: list[str], match: LabelMatch | None = None) -> PartResult:
        """A text item, or a label the bank does not know (``match`` given): routed, else the projection."""
        what = "label" if match is not None else "text"
        bank = self.label_bank
        if bank is None:
            if self.projection is None:
                if match is not None:
                    raise QueryError(
                        f"label {item.value!r} cannot be looked up (the model has no label bank), "
                        "and the model has no text projection to fall back on"
                    )
                raise QueryError(self._no_text_message())
            if match is not None:
                notes.append(f"label {item.value!r} cannot be looked up (no label bank in the model); using it as a text query")
            return PartResult(item, self._projection_vector(item.value), f"{what} -> projection", match=match)
        routing = self.route(item.value)
        from .routing import english_only_warning

        hint = ""
        if match is not None:  # a label the bank lacks: most often a typo
            sugg = bank.suggestions(item.value, n=3)
            hint = f" (did you mean {', '.join(repr(x) for x in sugg)}? `qsep models --labels` lists them)" if sugg else ""
        else:
            language = english_only_warning(item.value)
            if language is not None and not any(c.hops == 0 and c.score >= 1.0 for c in routing.classes):
                notes.append(f"warning: {language}")
        if routing.matched:
            if match is not None:
                notes.append(f"label {item.value!r} is not in the label bank{hint}; routed as text to {routing.summary()}")
            return PartResult(item, bank.mix(routing.weights), f"{what} -> classes", match=match, routing=routing)
        head = f"{what} {item.value!r}" + (f" is not in the label bank{hint} and" if match is not None else "")
        if self.projection is None:
            sugg = bank.suggestions(item.value) or [n for n, _ in routing.closest]
            raise QueryError(
                f"{head} {routing.summary()}, and the model has no text projection to fall back on; "
                f"similar labels: {sugg}; the bank has {len(bank.names)} classes: {bank.names}"
            )
        notes.append(f"{head} {routing.summary()}; using the learned text projection instead (much less reliable)")
        return PartResult(item, self._projection_vector(item.value), f"{what} -> projection", match=match, routing=routing)

    def _encode_item(self, item: QueryItem, notes: list[str]) -> PartResult:
        if item.kind == "text":
            return self._encode_text_item(item, notes)
        if item.kind == "audio":
            audio = self.audio
            if audio is None:
                raise QueryError("this model has no audio query encoder (no component of kind 'htsat'); use --embedding")
            res = audio.encode_files(item.value)
            return PartResult(item, res.condition, "audio", audio=res)
        if item.kind == "embedding":
            vec, _ = load_embedding(item.value)
            return PartResult(item, vec, "embedding")
        # label
        bank = self.label_bank
        match = bank.match(item.value) if bank is not None else LabelMatch(item.value, None, "unknown")
        if match.name is not None:
            return PartResult(item, bank.mix({match.name: 1.0}), "label", match=match)
        return self._encode_text_item(item, notes, match=match)

    def encode(self, query: Query) -> ConditionResult:
        """The condition of ``query`` and a record of how it was made."""
        notes: list[str] = []
        pos = [self._encode_item(i, notes) for i in query.positives]
        neg = [self._encode_item(i, notes) for i in query.negatives]
        dims = {(p.item.kind, str(p.item.value)): int(p.vector.numel()) for p in pos + neg}
        if len(set(dims.values())) > 1:
            detail = ", ".join(f"{k} {v!r}: {d}-d" for (k, v), d in dims.items())
            raise QueryError(f"query parts have different dimensions ({detail}); they must come from the same model")
        model_dim = self.model_cond_dim
        if model_dim is not None:
            for p in pos + neg:
                self.check_dim(p.vector, model_dim, source=f"{p.item.kind} query {p.item.value!r}")
        c = combine([p.vector for p in pos], [p.item.weight for p in pos])
        if neg and query.negative_strength > 0:
            n = combine([p.vector for p in neg], [p.item.weight for p in neg])
            c = apply_negative(c, n, self.origin(c.numel()), query.negative_strength, query.negative_method)
        return ConditionResult(condition=c, query=query, positives=pos, negatives=neg, notes=notes)

    def check_dim(self, vec: torch.Tensor, model_dim: int, source: str = "condition") -> None:
        """Dimension check of a condition against the model's condition size (error names both)."""
        name = self.model_info.get("path") if self.model_info else "the model"
        check_embedding_dim(vec, model_dim, model=str(name), source=source)


def save_condition(
    path: str | os.PathLike, result: ConditionResult, encoder: QueryEncoder | None = None, overwrite: bool = False
) -> Path:
    """Save the condition of ``result`` with what was asked and the model it was made with (see :mod:`.embedding`)."""
    from .embedding import save_embedding

    meta = {"query": result.describe(), "model": encoder.model_info if encoder is not None else None}
    return save_embedding(path, result.condition, meta, overwrite=overwrite)
