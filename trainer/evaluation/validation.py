"""The validation split every choice of a run is made on, and the score it is made by.

A seeded share of the *training* interactions is held out once per run
(``Validation.carve``). Early stopping, the hyperparameter search, each
baseline's own settings and the popularity prior's weight are all chosen on it;
the test split is only ever used for the final report.

The score is ``lift``: the smallest, over the hit rates a model is judged on
(over all candidates and excluding seen, @10 and @100), of the ratio to a
reference level. Ratios weigh every metric the same whatever its scale (@100
rates are 2-8x the @10 ones), and the smallest is the binding one, so a gain on
one metric cannot buy a loss on another. For the model the references
(``Validation.references``) are the bars it is held to: excluding seen, the
best of EASE, iALS and item-item cosine; over all candidates, popularity, the
baseline a two-tower model most often loses to there. A score above 1 means
the model clears every bar.
"""

from __future__ import annotations

import dataclasses

from trainer.data import Interactions
from trainer.data.split import holdout
from trainer.evaluation.metrics import EvalSet, hit_rates, popularity_scores, prepare

EXCLUDING_SEEN_METRICS = ("hit_rate_excluding_seen@10", "hit_rate_excluding_seen@100")
TARGET_METRICS = ("hit_rate@10", "hit_rate@100") + EXCLUDING_SEEN_METRICS
TARGET_KS = (10, 100)
# A reference rate of 0 (a baseline that never hits) would make every ratio infinite.
_MIN_REFERENCE = 1e-6


@dataclasses.dataclass
class Validation:
    """``fit`` (what is trained on while choosing) and ``eval_set`` (the held-out
    interactions, indexed against the catalogue with ``fit`` as each customer's
    seen items). ``popularity`` holds the popularity baseline's rates on this
    split; ``references`` the model's bar per target metric: popularity's until
    the other baselines raise the excluding-seen ones (``note_reference``)."""

    fit: Interactions
    eval_set: EvalSet
    popularity: dict[str, float]
    references: dict[str, float]

    @classmethod
    def carve(cls, train: Interactions, fraction: float, seed: int, max_interactions: int) -> "Validation | None":
        """Holds out ``fraction`` of ``train`` (seeded); None when that is no interaction."""
        fit, held_out = holdout(train, fraction, seed)
        if len(held_out) == 0:
            return None
        es = prepare(fit, held_out, train.catalog, max_interactions, seed)
        popularity = hit_rates(popularity_scores(es), es, TARGET_KS)
        return cls(fit, es, popularity, dict(popularity))

    def note_reference(self, rates: dict[str, float]) -> None:
        """Raises each excluding-seen reference to a baseline's ``rates`` where higher."""
        for key in EXCLUDING_SEEN_METRICS:
            self.references[key] = max(self.references[key], float(rates[key]))


def lift(rates: dict[str, float], references: dict[str, float], keys: tuple[str, ...] = TARGET_METRICS) -> float:
    """The smallest over ``keys`` of ``rates[m] / references[m]``, leaving out a metric at which both hit every
    time (unless every one is so): at K no smaller than what there is to rank (a catalogue of at most 100
    candidates at @100) every model does, and its ratio of 1 would cap the lift of a model that beats every bar."""
    informative = [m for m in keys if not (rates[m] >= 1.0 and references[m] >= 1.0)] or keys
    return min(rates[m] / max(references[m], _MIN_REFERENCE) for m in informative)
