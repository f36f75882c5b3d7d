"""qsep's separator package: audio I/O, DSP, query-conditioned separators and the Python API.

``from separator import Separator`` is resolved lazily so that importing the
package stays cheap and free of side effects.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Separator", "SeparationResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from separator import api

        return getattr(api, name)
    raise AttributeError(f"module 'separator' has no attribute {name!r}")
