"""The softmax temperature past the training context, fitted as the DroPE paper does (its Appendix C.2, after
Wang et al. 2024): every attention logit times beta(s) = 1 + c ln(s) at s x the context, with one c per model,
the one that minimises perplexity on held-out text at the evaluated lengths above 1x. The text is the held-out
split's tuning part (``pipeline.Corpus.held_out``), never the text the report scores.

The objective, the mean over those lengths of the mean next-token NLL, is minimised over c in [0, C_MAX] by
golden-section search. Every candidate reuses the compiled forward passes of its length: the logit scale is
data to them (``positions.as_data``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from drope_jax.data import pipeline
from drope_jax.eval import perplexity
from drope_jax.model.positions import NOPE, PosEncoding, temperature_beta

C_MAX = 1.5  # the paper's fits were 0.103 and 0.412; beta(8) = 4.1 at C_MAX
C_TOLERANCE = 0.01  # the search stops once c is bracketed this tightly
GOLDEN = (math.sqrt(5) - 1) / 2


def encoding(c: float, factor: float, base: PosEncoding = NOPE) -> PosEncoding:
    """``base`` (NoPE by default) with the temperature of ``c`` at ``factor`` x the context."""
    return dataclasses.replace(base, logit_scale=temperature_beta(c, factor))


@dataclasses.dataclass(frozen=True)
class Temperature:
    """One model's temperature and how it was chosen."""

    c: float
    how: str  # "fitted", "set" (by hand) or "off"
    tuning_nll: dict[int, float] = dataclasses.field(default_factory=dict)  # {multiple: mean NLL} at c
    tuning_nll_raw: dict[int, float] = dataclasses.field(default_factory=dict)  # the same at c = 0
    tried: tuple[tuple[float, float], ...] = ()  # (c, objective) in the order the search tried them
    tuning_documents: int = 0

    def beta(self, factor: float) -> float:
        return temperature_beta(self.c, factor)

    @property
    def at_bound(self) -> bool:
        """A fit that ended at the top of the search range: the best c may lie beyond it."""
        return self.how == "fitted" and self.c >= C_MAX - C_TOLERANCE

    def to_json(self, lengths) -> dict:
        return {"c": self.c, "how": self.how, "at_bound": self.at_bound,
                "beta": {str(m): self.beta(m) for m in lengths},
                "tuning_ppl": {str(m): math.exp(v) for m, v in self.tuning_nll.items()},
                "tuning_ppl_raw": {str(m): math.exp(v) for m, v in self.tuning_nll_raw.items()},
                "tuning_documents": self.tuning_documents, "tried": [list(t) for t in self.tried]}


def fit(nll_at: Callable[[float], dict[int, float]], *, tuning_documents: int = 0) -> Temperature:
    """The c in [0, C_MAX] that minimises the mean over lengths of ``nll_at(c)`` ({multiple: mean NLL}),
    by golden-section search (the objective is taken to be unimodal in c); c = 0 is always tried, so the
    result is never worse than no temperature on the tuning text."""
    seen: dict[float, dict[int, float]] = {}

    def objective(c: float) -> float:
        if c not in seen:
            seen[c] = nll_at(c)
        return float(np.mean(list(seen[c].values())))

    lo, hi = 0.0, C_MAX
    a, b = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    while hi - lo > C_TOLERANCE:
        if objective(a) < objective(b):
            hi, b = b, a
            a = hi - GOLDEN * (hi - lo)
        else:
            lo, a = a, b
            b = lo + GOLDEN * (hi - lo)
    best = min([0.0, (lo + hi) / 2], key=objective)
    return Temperature(c=best, how="fitted", tuning_nll=seen[best], tuning_nll_raw=seen[0.0],
                       tried=tuple((c, objective(c)) for c in seen), tuning_documents=tuning_documents)


def tuning_rows(corpus, context: int, lengths, num_rows: int) -> tuple[dict[int, np.ndarray], int]:
    """The fit's text: ``num_rows`` rows of the held-out split's tuning part at the longest of ``lengths``, cut
    for each multiple above 1 (``pipeline.same_text_rows``), and the documents they hold; ({}, 0) when no length
    is above 1x (there is nothing to fit)."""
    above = [m for m in lengths if m > 1]
    return pipeline.same_text_rows(corpus, context, above, num_rows, part="tuning") if above else ({}, 0)


def fit_on(spec, params, tuning_rows: dict[int, np.ndarray], *, use_qk_norm: bool, rows_per_batch: dict[int, int],
           query_chunk: int | None = None, mesh=None, tuning_documents: int = 0) -> Temperature:
    """``fit`` for a NoPE model on ``tuning_rows`` ({multiple above 1: rows}, from ``tuning_rows``)."""
    def nll_at(c: float) -> dict[int, float]:
        return {m: float(np.mean(perplexity.row_nll(spec, params, rows, encoding(c, m), use_qk_norm=use_qk_norm,
                                                    batch_size=rows_per_batch[m], query_chunk=query_chunk,
                                                    mesh=mesh)))
                for m, rows in tuning_rows.items()}

    return fit(nll_at, tuning_documents=tuning_documents)
