"""The latent embedding processor: text, audio and label queries -> condition vectors.

Submodules (imported lazily; importing this package loads no model and touches no network):

* :mod:`.audio` -- :class:`AudioQueryEncoder` (example recordings -> detector latent);
* :mod:`.text` -- text encoders (:func:`load_text_encoder`) and :class:`TextProjection`;
* :mod:`.labels` -- :class:`LabelBank`;
* :mod:`.compose` -- :class:`Query`, :class:`QueryEncoder` (items -> one condition, negatives);
* :mod:`.embedding` -- :func:`save_embedding` / :func:`load_embedding`;
* :mod:`.train` -- :func:`train_text_projection`.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioQueryEncoder": "audio",
    "AudioQueryResult": "audio",
    "TextEncoder": "text",
    "TextProjection": "text",
    "TextProjectionConfig": "text",
    "load_text_encoder": "text",
    "build_projection_from_config": "text",
    "LabelBank": "labels",
    "LabelBankConfig": "labels",
    "build_label_bank": "labels",
    "build_label_bank_from_config": "labels",
    "Query": "compose",
    "QueryItem": "compose",
    "QueryEncoder": "compose",
    "ConditionResult": "compose",
    "save_embedding": "embedding",
    "load_embedding": "embedding",
    "check_embedding_dim": "embedding",
    "train_text_projection": "train",
    "TextProjectionTrainConfig": "train",
    "QueryError": "errors",
    "NoUsableAudioError": "errors",
    "EmbeddingError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'separator.query' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
