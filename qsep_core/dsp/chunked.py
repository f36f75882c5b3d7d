"""Model-agnostic chunked processing with weighted overlap-add.

A long signal is cut into overlapping chunks of ``segment`` samples, ``fn`` runs
on batches of chunks, and the outputs are overlap-added with a taper window,
normalised by the sum of the window weights at every sample. Nothing is
dropped: the last chunk is zero-padded past the end of the signal and the
output is cropped back, so the output is exactly as long as the input for any
length (1 sample included).

:func:`chunked_apply` works on a tensor in memory; :func:`chunked_apply_stream`
pulls chunks from a reader and pushes finished samples to a writer, holding
only about ``batch_size * hop + segment`` samples at a time. Both share one
engine, so they produce the same samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["ChunkPlan", "plan_chunks", "taper_window", "chunked_apply", "chunked_apply_stream", "TAPERS"]

TAPERS = ("hann", "linear", "triangle", "rect")

ChunkFn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ChunkPlan:
    """Where the chunks of a signal start.

    Attributes:
        length: signal length in samples.
        segment: chunk length in samples.
        overlap: samples shared by neighbouring chunks.
        starts: start sample of each chunk, increasing; the last chunk reaches the end.
    """

    length: int
    segment: int
    overlap: int
    starts: tuple[int, ...]

    @property
    def hop(self) -> int:
        return self.segment - self.overlap

    def __len__(self) -> int:
        return len(self.starts)


def plan_chunks(length: int, segment: int, overlap: float = 0.25) -> ChunkPlan:
    """Chunk starts for a signal of ``length`` samples.

    Args:
        segment: chunk length in samples (> 0).
        overlap: fraction of ``segment`` shared with the next chunk, in ``[0, 1)``.
    """
    if length <= 0:
        raise ValueError(f"cannot chunk an empty signal (length {length})")
    if segment <= 0:
        raise ValueError(f"segment must be > 0 samples, got {segment}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap is a fraction of the segment in [0, 1), got {overlap}")
    ov = min(int(round(overlap * segment)), segment - 1)
    hop = segment - ov
    n_chunks = 1 if length <= segment else 1 + math.ceil((length - segment) / hop)
    return ChunkPlan(length, segment, ov, tuple(i * hop for i in range(n_chunks)))


def taper_window(segment: int, overlap: int, kind: str = "hann") -> torch.Tensor:
    """Overlap-add weights for one chunk, shape ``(segment,)``, all strictly positive.

    ``hann`` and ``linear`` are flat-top cross-fades: weight 1 in the middle and
    complementary ramps over the ``overlap`` samples at each end, so two
    neighbouring ramps sum to 1. ``triangle`` spans the whole chunk (as Demucs
    does); ``rect`` is all ones.
    """
    if kind not in TAPERS:
        raise ValueError(f"unknown taper {kind!r}; choose one of {TAPERS}")
    w = torch.ones(segment, dtype=torch.float64)
    if kind == "triangle":
        half = segment // 2
        w = torch.cat([torch.arange(1, half + 1), torch.arange(segment - half, 0, -1)]).to(torch.float64)
        w = w / w.max()
    elif kind in ("hann", "linear") and overlap > 0:
        pos = torch.arange(1, overlap + 1, dtype=torch.float64) / (overlap + 1)  # (0, 1) exclusive
        ramp = pos if kind == "linear" else 0.5 - 0.5 * torch.cos(math.pi * pos)
        w[:overlap] = ramp
        w[segment - overlap:] = torch.minimum(w[segment - overlap:], ramp.flip(0))
    return w.to(torch.float32)


class _OverlapAdd:
    """Accumulates weighted chunk outputs and releases samples once no later chunk touches them."""

    def __init__(self, length: int, emit: Callable[[torch.Tensor], None]):
        self.length = length
        self.emit = emit
        self.flushed = 0  # first sample not yet emitted
        self.acc: torch.Tensor | None = None  # (*out_lead, n): samples [flushed, flushed + n)
        self.wsum: torch.Tensor | None = None  # (n,)

    def add(self, start: int, y: torch.Tensor, w: torch.Tensor) -> None:
        valid = min(y.shape[-1], self.length - start)
        end = start + valid - self.flushed
        if self.acc is None:
            self.acc = y.new_zeros(*y.shape[:-1], 0)
            self.wsum = w.new_zeros(0).to(y.device)
        grow = end - self.acc.shape[-1]
        if grow > 0:
            self.acc = torch.cat([self.acc, self.acc.new_zeros(*self.acc.shape[:-1], grow)], dim=-1)
            self.wsum = torch.cat([self.wsum, self.wsum.new_zeros(grow)])
        a = start - self.flushed
        wv = w[:valid].to(device=y.device, dtype=y.dtype)
        self.acc[..., a:a + valid] += y[..., :valid] * wv
        self.wsum[a:a + valid] += wv

    def flush(self, until: int) -> None:
        """Emit samples ``[flushed, until)``; no chunk added later may touch them."""
        n = until - self.flushed
        if n <= 0 or self.acc is None:
            return
        self.emit(self.acc[..., :n] / self.wsum[:n])
        self.acc = self.acc[..., n:].clone()
        self.wsum = self.wsum[n:].clone()
        self.flushed = until


def _run(
    fn: ChunkFn,
    read: Callable[[int, int], torch.Tensor],
    emit: Callable[[torch.Tensor], None],
    plan: ChunkPlan,
    batch_size: int,
    taper: str,
    progress: Progress | None,
) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    w = taper_window(plan.segment, plan.overlap, taper)
    ola = _OverlapAdd(plan.length, emit)
    starts = plan.starts
    for b in range(0, len(starts), batch_size):
        batch_starts = starts[b:b + batch_size]
        chunks = []
        for s in batch_starts:
            c = read(s, plan.segment)  # (*lead, <= segment)
            if c.shape[-1] < plan.segment:
                c = torch.nn.functional.pad(c, (0, plan.segment - c.shape[-1]))
            chunks.append(c)
        x = torch.stack(chunks)  # (n, *lead, segment)
        y = fn(x)  # (n, *out_lead, segment)
        if y.shape[0] != x.shape[0] or y.shape[-1] != plan.segment:
            raise ValueError(
                f"chunk function must keep the chunk count and length: got {tuple(x.shape)} -> {tuple(y.shape)}"
            )
        for i, s in enumerate(batch_starts):
            ola.add(s, y[i], w)
        nxt = b + batch_size
        ola.flush(starts[nxt] if nxt < len(starts) else plan.length)
        if progress is not None:
            progress(min(nxt, len(starts)), len(starts))


def chunked_apply(
    fn: ChunkFn,
    x: torch.Tensor,
    segment: int,
    overlap: float = 0.25,
    batch_size: int = 1,
    taper: str = "hann",
    progress: Progress | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping chunks of ``x`` and overlap-add the results.

    Args:
        fn: maps a chunk batch ``(n, *lead, segment)`` to ``(n, *out_lead, segment)``.
        x: ``(*lead, time)`` signal.
        segment: chunk length in samples.
        overlap: fraction of ``segment`` shared by neighbouring chunks, in ``[0, 1)``.
        batch_size: chunks per call of ``fn``.
        taper: overlap-add window (see :func:`taper_window`).
        progress: called as ``progress(chunks_done, chunks_total)`` after each batch.

    Returns:
        ``(*out_lead, time)``, exactly as long as ``x``.
    """
    plan = plan_chunks(x.shape[-1], segment, overlap)
    pieces: list[torch.Tensor] = []
    _run(fn, lambda s, n: x[..., s:s + n], pieces.append, plan, batch_size, taper, progress)
    return torch.cat(pieces, dim=-1)


def chunked_apply_stream(
    fn: ChunkFn,
    read: Callable[[int, int], torch.Tensor],
    write: Callable[[torch.Tensor], None],
    length: int,
    segment: int,
    overlap: float = 0.25,
    batch_size: int = 1,
    taper: str = "hann",
    progress: Progress | None = None,
) -> None:
    """Streaming :func:`chunked_apply`: memory does not grow with ``length``.

    Args:
        read: ``read(start, n)`` returns ``(*lead, <= n)`` samples from ``start``
            (e.g. :meth:`qsep_core.audio.AudioReader.read`).
        write: receives consecutive ``(*out_lead, m)`` blocks of finished output,
            in order, ``length`` samples in all (e.g. :meth:`qsep_core.audio.AudioWriter.write`).
        length: total input length in samples.

    The other arguments are those of :func:`chunked_apply`, which gives the same samples.
    """
    plan = plan_chunks(length, segment, overlap)
    _run(fn, read, write, plan, batch_size, taper, progress)
