"""What evaluation separates with: a small callable interface plus oracle baselines.

The evaluation code never imports a model. It calls an :class:`Estimator`; the CLI wraps a
trained :class:`separator.api.Separator` into one, and the oracles below need nothing but the
true stems, so every protocol can be run (and tested) without a model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from qsep_core.dsp import StftConfig, istft, stft

__all__ = ["Estimator", "MixtureOracle", "IdealRatioMask", "IRMConfig", "ConditionEstimator", "oracle", "ORACLES", "estimate_stems"]


@runtime_checkable
class Estimator(Protocol):
    """Something that returns an estimate of one named source.

    Attributes:
        name: short identifier used for output folders and table rows (``"model"``, ``"oracle-irm"``).
        needs_references: True for oracles; the evaluation then passes the true stems.
    """

    name: str
    needs_references: bool

    def estimate(
        self,
        mixture: torch.Tensor,
        sample_rate: int,
        stem: str,
        references: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Estimate ``stem`` from ``mixture``.

        Args:
            mixture: ``(channels, time)`` float32. Channels are independent signals to the
                estimator: stereo channels in the SiSEC18 protocol, a batch of mono 2-s
                segments in the ZS-ASS protocol.
            sample_rate: rate of ``mixture`` in Hz.
            stem: the source to estimate (``"vocals"``, ... or a class name).
            references: true sources, each ``(channels, time)`` like ``mixture`` (oracles only).

        Returns:
            ``(channels, time)`` float32, same shape as ``mixture``.
        """
        ...


@dataclass
class MixtureOracle:
    """Baseline that returns the mixture itself for every source (the "do nothing" floor)."""

    name: str = "oracle-mixture"
    needs_references: bool = False

    def estimate(self, mixture, sample_rate, stem, references=None):  # noqa: D102 — see Estimator
        return mixture.clone()


@dataclass(frozen=True)
class IRMConfig:
    """Ideal ratio mask settings.

    Attributes:
        stft: STFT used for the masks (4096 / 1024 as the SigSep oracle baselines at 44.1 kHz).
        power: mask exponent ``alpha`` in ``|S_j|^alpha / sum_k |S_k|^alpha`` (2: Wiener-like "IRM2").
        eps: added to the denominator.
    """

    stft: StftConfig = field(default_factory=lambda: StftConfig(n_fft=4096, hop_length=1024))
    power: float = 2.0
    eps: float = 1e-10


@dataclass
class IdealRatioMask:
    """Oracle ideal ratio mask: mask the mixture with ``|S_j|^a / sum_k |S_k|^a`` of the true stems.

    ``references`` must hold every source of the mixture (all four MUSDB stems, or target and
    interferer of a two-source mixture); the mask is applied to the mixture's STFT and the
    mixture's phase is kept.
    """

    config: IRMConfig = field(default_factory=IRMConfig)
    name: str = "oracle-irm"
    needs_references: bool = True

    def estimate(self, mixture, sample_rate, stem, references=None):  # noqa: D102 — see Estimator
        if not references:
            raise ValueError("the ideal ratio mask needs the true sources (references=...)")
        if stem not in references:
            raise ValueError(f"no reference for stem {stem!r}; have {list(references)}")
        cfg = self.config
        length = mixture.shape[-1]
        mags = {k: stft(v.float(), cfg.stft).abs() ** cfg.power for k, v in references.items()}  # (ch, freq, frames)
        total = torch.stack(list(mags.values())).sum(0) + cfg.eps
        mask = mags[stem] / total
        out = istft(stft(mixture.float(), cfg.stft) * mask, cfg.stft, length)
        return out.to(mixture.dtype)


@dataclass
class ConditionEstimator:
    """A query-based separator as an :class:`Estimator`: one fixed query per stem.

    Attributes:
        separate: ``separate(mixture (channels, time), sample_rate, query) -> (channels, time)``,
            e.g. a wrapper of ``Separator.separate_condition(...).target``.
        queries: stem -> query (an embedding tensor, a text, ...) passed to ``separate``; None
            passes the ``stem`` argument itself (a :class:`~separator.eval.mixtures.Query`).
        model_id: identifies the model (e.g. its folder); with a hash of the queries it makes the
            :attr:`fingerprint` stored with results, so a resumed MUSDB run recomputes the tracks
            when the model or the queries changed.
    """

    separate: Callable[[torch.Tensor, int, Any], torch.Tensor]
    queries: Mapping[str, Any] | None = None
    name: str = "model"
    needs_references: bool = False
    model_id: str = ""
    #: ``separate_many(mixture, sample_rate, [query, ...]) -> [estimate, ...]``: several stems in one pass
    #: (:meth:`separator.api.Separator.separate_conditions`); None runs ``separate`` once per stem
    separate_many: Callable[[torch.Tensor, int, list[Any]], list[torch.Tensor]] | None = None

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.queries or {}):
            value = self.queries[key]
            data = value.detach().cpu().float().numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode()
            digest.update(key.encode() + b"\0" + data)
        return f"{self.name} {self.model_id} {digest.hexdigest()[:16]}"

    def estimate(self, mixture, sample_rate, stem, references=None):  # noqa: D102 — see Estimator
        if self.queries is None:
            return self.separate(mixture, sample_rate, stem)
        if stem not in self.queries:
            raise ValueError(f"no query for stem {stem!r}; have {sorted(self.queries)}")
        return self.separate(mixture, sample_rate, self.queries[stem])

    def estimate_many(self, mixture, sample_rate, stems, references=None) -> dict[str, torch.Tensor]:
        """``{stem: estimate}`` for every stem, in one pass when :attr:`separate_many` is set (see :func:`estimate_stems`)."""
        if self.separate_many is None or self.queries is None:
            return {s: self.estimate(mixture, sample_rate, s, references) for s in stems}
        missing = [s for s in stems if s not in self.queries]
        if missing:
            raise ValueError(f"no query for stem {missing[0]!r}; have {sorted(self.queries)}")
        return dict(zip(stems, self.separate_many(mixture, sample_rate, [self.queries[s] for s in stems])))


def estimate_stems(estimator: Estimator, mixture: torch.Tensor, sample_rate: int, stems: Sequence[str],
                   references: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{stem: (channels, time) estimate}``: through the estimator's ``estimate_many`` when it has one (all
    stems in one pass), else one :meth:`Estimator.estimate` per stem."""
    many = getattr(estimator, "estimate_many", None)
    if many is not None:
        return many(mixture, sample_rate, list(stems), references)
    return {s: estimator.estimate(mixture, sample_rate, s, references=references) for s in stems}


#: Oracle baselines by the name the CLI uses (``--oracle mixture|irm``).
ORACLES = {"mixture": MixtureOracle, "irm": IdealRatioMask}


def oracle(kind: str) -> Estimator:
    """Build an oracle estimator by name (``"mixture"`` or ``"irm"``)."""
    try:
        return ORACLES[kind]()
    except KeyError:
        raise ValueError(f"unknown oracle {kind!r}; choose one of {sorted(ORACLES)}") from None
