"""Lazy access to the optional evaluation dependencies (musdb, museval) and their ffmpeg need.

``musdb`` and ``museval`` import ``stempeg``, which refuses to import when the ``ffmpeg`` and
``ffprobe`` binaries are not on ``PATH``. They are therefore imported only here, only when an
evaluation runs, after a check that gives an actionable message.
"""
from __future__ import annotations

import shutil
from types import ModuleType

from qsep_core.extras import require

__all__ = ["FfmpegNotFoundError", "require_ffmpeg", "import_musdb", "import_museval", "FFMPEG_INSTALL_HINT"]

FFMPEG_INSTALL_HINT = (
    "install it with your system's package manager, e.g. `apt-get install ffmpeg` (Debian/Ubuntu), "
    "`conda install -c conda-forge ffmpeg` (conda) or `brew install ffmpeg` (macOS), "
    "then check that `ffmpeg -version` works in the same shell"
)


class FfmpegNotFoundError(RuntimeError):
    """The ``ffmpeg``/``ffprobe`` binaries that musdb/museval (via stempeg) need are missing."""


def require_ffmpeg() -> str:
    """Return the path of ``ffmpeg``.

    Raises:
        FfmpegNotFoundError: ``ffmpeg`` or ``ffprobe`` is not on PATH (the message says how to install it).
    """
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise FfmpegNotFoundError(
            f"MUSDB18 evaluation needs the {' and '.join(missing)} program(s) on PATH (musdb and museval read "
            f"audio through them), but they were not found: {FFMPEG_INSTALL_HINT}."
        )
    return shutil.which("ffmpeg")  # type: ignore[return-value]


def import_musdb() -> ModuleType:
    """``import musdb`` after checking for ffmpeg.

    Raises:
        FfmpegNotFoundError: ``ffmpeg`` or ``ffprobe`` is not on PATH.
        qsep_core.extras.MissingExtraError: musdb (the ``evaluation`` extra) is not installed.
    """
    require_ffmpeg()
    return require("musdb", "evaluation", "MUSDB18 evaluation")


def import_museval() -> ModuleType:
    """``import museval`` after checking for ffmpeg.

    Raises:
        FfmpegNotFoundError: ``ffmpeg`` or ``ffprobe`` is not on PATH.
        qsep_core.extras.MissingExtraError: museval (the ``evaluation`` extra) is not installed.
    """
    require_ffmpeg()
    return require("museval", "evaluation", "MUSDB18 evaluation")
