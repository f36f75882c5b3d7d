"""Pure signal-processing helpers (any leading dims, no hidden state): the one STFT, chunked overlap-add, band extension."""
from qsep_core.dsp.bandext import extend_band
from qsep_core.dsp.chunked import ChunkPlan, chunked_apply, chunked_apply_stream, plan_chunks, taper_window
from qsep_core.dsp.stft import StftConfig, dft_kernels, idft_kernels, istft, magnitude, magphase, stft, window

__all__ = [
    "extend_band",
    "ChunkPlan", "chunked_apply", "chunked_apply_stream", "plan_chunks", "taper_window",
    "StftConfig", "dft_kernels", "idft_kernels", "istft", "magnitude", "magphase", "stft", "window",
]
