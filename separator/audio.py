"""Audio file I/O, as ``from separator.audio import load`` (the README's spelling): re-exports :mod:`qsep_core.audio`."""
from qsep_core.audio import *  # noqa: F401,F403 - the public names of qsep_core.audio
from qsep_core.audio import __all__  # noqa: F401
