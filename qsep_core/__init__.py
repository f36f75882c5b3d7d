"""qsep's foundation: the mechanisms both domain packages (``sed``, ``separator``) build on.

Modules (each fact and each mechanism lives in exactly one of them):

* :mod:`qsep_core.constants`: the shared facts (model rate, STFT sizes, anchor length); torch-free.
* :mod:`qsep_core.audio`: every audio file read and write, ``(channels, time)`` float32.
* :mod:`qsep_core.dsp`: the one STFT, DFT kernels, chunked overlap-add.
* :mod:`qsep_core.config`: dataclass configs, YAML overlays, ``KEY=VALUE`` overrides.
* :mod:`qsep_core.checkpoint`: model files (``config.json`` + ``model.safetensors``).
* :mod:`qsep_core.metrics`: SDR, SI-SDR, MDX SDR (keyword-only arguments).
* :mod:`qsep_core.atomic`: atomic writes of files and folders.
* :mod:`qsep_core.manifest`: the mined-segment manifest (written by ``sed``, read by ``separator``).
* :mod:`qsep_core.extras`: optional dependencies, with errors that name the pip extra.

Import rule (enforced by ``tests/test_import_rules.py``): ``qsep_core`` imports neither ``sed``
nor ``separator`` nor typer; ``sed`` imports ``qsep_core`` and never ``separator``;
``separator`` may import ``sed`` (its audio query encoder is an HTS-AT). Only the CLI, the
API and ``recipes/`` wire everything together. Importing this package imports nothing heavy.
"""
