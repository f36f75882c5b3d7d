"""The query-conditioned U-Net family (one configurable class, presets as data)."""
from separator.models.config import DEFAULT_PRESET, PRESETS, QueryUNetConfig, preset
from separator.models.inference import fold_batchnorm, prepare_for_inference
from separator.models.unet import QueryUNet, build_from_config

__all__ = ["QueryUNet", "QueryUNetConfig", "PRESETS", "DEFAULT_PRESET", "preset", "build_from_config", "build_preset",
           "fold_batchnorm", "prepare_for_inference"]


def build_preset(name: str = DEFAULT_PRESET, **changes) -> QueryUNet:
    """A freshly initialised :class:`QueryUNet` of preset ``name`` (with optional field changes)."""
    return QueryUNet(preset(name, **changes))
