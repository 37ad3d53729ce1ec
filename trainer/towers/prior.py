"""The popularity prior a version serves with, inside its index.

In-batch negatives are drawn in proportion to popularity, so a plain in-batch
softmax learns scores with popularity taken out (``log P(item | customer) - log
Q(item)``, Q the sampling probability). logQ correction (the default) subtracts
``log Q`` from the training logits, so the towers learn the full softmax's
scores, popularity in; L2 and early stopping still leave it off by some amount
either way. The version adds ``weight * log(1 + training count)`` to the logits
at serving time to set it right; without logQ correction a weight of 1 puts back
what the sampling took out. (Measured on ml-100k's id preset, docs/RESULTS.md:
the towers' mean score per candidate ranks candidates as their training counts do,
Spearman 0.95, with the correction, and not at all, -0.10, without; validation
chose weights 0.5 and 1.) To keep the services unchanged and ScaNN's inner product
exact, it rides in one extra dimension: every candidate vector gets
``log(1 + count)`` appended and every query vector the constant
``weight * temperature`` (logits are ``q . c / temperature``, so the constant
carries the temperature back to the index's raw dot products). The query tower
SavedModel appends the constant itself, so the query service, the customer
store precompute and the index see ordinary vectors one dimension longer.

The weight is chosen on the validation split (``choose_prior``); a weight of
0 adds no dimension at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from model_registry.ids import index_of
from trainer.data import Interactions
from trainer.evaluation.metrics import embedding_scores, hit_rates
from trainer.evaluation.validation import TARGET_KS, Validation, lift

# On the logit scale: 0 adds nothing; 1, without logQ correction, what in-batch sampling took out.
PRIOR_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


@dataclasses.dataclass(frozen=True)
class PopularityPrior:
    """``weight`` (logit scale) and the model's softmax ``temperature``."""

    weight: float = 0.0
    temperature: float = 1.0

    @property
    def query_constant(self) -> float:
        """What the query tower appends to every query vector."""
        return self.weight * self.temperature

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Query vectors as served: ``vectors`` plus the constant column (when the weight is not 0)."""
        if not self.weight:
            return vectors
        column = np.full((len(vectors), 1), self.query_constant, np.float32)
        return np.concatenate([vectors, column], axis=1).astype(np.float32, copy=False)

    def candidates(self, vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Candidate vectors as indexed: plus ``log(1 + count)``, ``counts`` being each
        candidate's training interactions (aligned with ``vectors``; ``EvalSet.train_counts``
        or ``training_counts``)."""
        if not self.weight:
            return vectors
        column = np.log1p(np.asarray(counts, np.float64))[:, None]
        return np.concatenate([vectors, column], axis=1).astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """The prior as recorded in the metrics and the manifest."""
        return {"weight": self.weight, "query_constant": self.query_constant,
                "extra_dimension": bool(self.weight)}


def training_counts(catalog: np.ndarray, train: Interactions) -> np.ndarray:
    """int64 [N]: the training interactions of each catalogue candidate."""
    cols = index_of(np.asarray(catalog), train.candidate_ids)
    return np.bincount(cols[cols >= 0], minlength=len(catalog))


def choose_prior(queries: np.ndarray, candidates: np.ndarray, temperature: float, validation: Validation,
                 weights: tuple[float, ...] = PRIOR_WEIGHTS
                 ) -> tuple[PopularityPrior, dict[str, float], list[dict[str, float]]]:
    """The weight of ``weights`` with the highest ``lift`` on ``validation``.

    ``queries`` are the validation customers' vectors (aligned with
    ``validation.eval_set.customers``), ``candidates`` the catalogue's, both
    without the prior. Returns (prior, its validation rates, the grid's lifts).
    """
    es = validation.eval_set
    grid = []
    best: tuple[float, PopularityPrior, dict[str, float]] | None = None
    for weight in weights:
        prior = PopularityPrior(weight, temperature)
        rates = hit_rates(embedding_scores(prior.queries(queries),
                                           prior.candidates(candidates, es.train_counts)), es, TARGET_KS)
        score = lift(rates, validation.references)
        grid.append({"weight": weight, "lift": round(score, 4)})
        if best is None or score > best[0]:
            best = (score, prior, rates)
    if best is None:
        raise ValueError("choose_prior needs at least one weight")
    return best[1], best[2], grid
