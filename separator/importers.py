"""The official-checkpoint importers, as one table: what ``qsep import-official NAME`` runs.

Each entry names its converter as ``"module:function"`` (imported when used, so reading the
table imports nothing heavy; the CLI builds one command per entry from it) and says which
files it reads. :func:`import_official` is the Python entry point.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["Importer", "IMPORTERS", "importer", "import_official"]


@dataclass(frozen=True)
class Importer:
    """One official-checkpoint converter.

    Attributes:
        name: the command name (``qsep import-official NAME``).
        target: ``"module:function"``; the function is ``(ckpt, out_dir, trust_pickle=, overwrite=) -> Path``.
        checkpoint: which official files it reads.
        summary: one line on what it imports.
        components: the components of the model folder it writes.
    """

    name: str
    target: str
    checkpoint: str
    summary: str
    components: tuple[str, ...]

    def load(self) -> Callable[..., Path]:
        """The converter function."""
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


IMPORTERS: tuple[Importer, ...] = (
    Importer("htsat", "sed.official:import_htsat", "HTSAT_AudioSet_Saved_*.ckpt (Lightning checkpoint).",
             "Import an official HTS-AT AudioSet checkpoint (prefix `sed_model.`).", ("detector",)),
    Importer("zsass-sed", "sed.official:import_zsass_sed", "zeroshot_asp_*.ckpt or htsat_audioset_2048d.ckpt.",
             "Import the ST-SED query encoder inside a ZS-ASS checkpoint (prefix `at_model.sed_model.`).",
             ("detector",)),
    Importer("zsass", "separator.official:import_zsass",
             "zeroshot_asp_full.ckpt / zeroshot_asp_held_out.ckpt (Lightning checkpoint).",
             "Import an official ZS-ASS checkpoint (separator + 2048-d query encoder).", ("separator", "audio_encoder")),
)


def importer(name: str) -> Importer:
    """The entry of :data:`IMPORTERS` called ``name``.

    Raises:
        KeyError: no importer of that name (the message lists them).
    """
    for imp in IMPORTERS:
        if imp.name == name:
            return imp
    raise KeyError(f"no official importer {name!r}; choose one of {[i.name for i in IMPORTERS]}")


def import_official(name: str, ckpt: str | os.PathLike, out_dir: str | os.PathLike, *, trust_pickle: bool = False,
                    overwrite: bool = False) -> Path:
    """Convert the official checkpoint ``ckpt`` with importer ``name`` into the qsep model folder ``out_dir``.

    Args:
        trust_pickle: allow full unpickling (runs code from the file; only for files you trust).
        overwrite: replace an existing folder at ``out_dir``.

    Raises:
        KeyError: unknown importer name.
        qsep_core.checkpoint.CheckpointError: the file is unreadable, not the expected checkpoint, or its
            keys, kernels or buffers differ from what qsep builds (named in the message).
    """
    return importer(name).load()(ckpt, out_dir, trust_pickle=trust_pickle, overwrite=overwrite)
