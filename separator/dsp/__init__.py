"""Pure signal-processing helpers (any leading dims, no hidden state)."""
from separator.dsp.chunked import ChunkPlan, chunked_apply, chunked_apply_stream, plan_chunks, taper_window
from separator.dsp.stft import StftConfig, istft, magnitude, magphase, stft, window

__all__ = [
    "ChunkPlan", "chunked_apply", "chunked_apply_stream", "plan_chunks", "taper_window",
    "StftConfig", "istft", "magnitude", "magphase", "stft", "window",
]
