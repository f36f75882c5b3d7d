"""Model resolution lives in :mod:`qsep_core.hub` (one resolver for every command); re-exported here."""
from qsep_core.hub import (  # noqa: F401
    DEFAULT_MODEL,
    PRETRAINED_DIR,
    ModelEntry,
    describe_model,
    list_models,
    model_display_name,
    resolve_model,
    search_path,
)

__all__ = ["DEFAULT_MODEL", "PRETRAINED_DIR", "search_path", "resolve_model", "ModelEntry", "list_models", "describe_model",
           "model_display_name"]
