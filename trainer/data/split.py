"""Train/test splits of interactions: ``make_split(data, method)`` with ``method`` in ``SPLITS``.

* ``random``: seeded uniformly random events (the TFRS MovieLens tutorial's split);
* ``temporal``: the last ``test_fraction`` of the events by time, overall (ties
  broken by position, so the split is deterministic);
* ``leave-last-out``: each customer's last event by time is the test event;
  customers with a single event stay wholly in train (``test_fraction`` is unused).

Train and test keep the original event order and share catalog and features.
"""

from __future__ import annotations

import numpy as np

from trainer.data.interactions import Interactions

SPLITS = ("random", "temporal", "leave-last-out")


def _check(data: Interactions, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if len(data) < 2:
        dropped = {key: n for key, n in data.info.items() if key.startswith("dropped_") and n}
        raise ValueError(f"need at least 2 interactions to split, and {data.name} has {len(data)}"
                         + (f" (its loader dropped rows: {dropped})" if dropped else ""))


def _num_test(n: int, test_fraction: float) -> int:
    return min(n - 1, max(1, int(round(n * test_fraction))))


def _by_mask(data: Interactions, test: np.ndarray) -> tuple[Interactions, Interactions]:
    return data.take(np.flatnonzero(~test)), data.take(np.flatnonzero(test))


def random_split(data: Interactions, test_fraction: float = 0.2, seed: int = 42) -> tuple[Interactions, Interactions]:
    """Seeded uniformly random split of the events into (train, test).

    Random rather than temporal to match the TFRS MovieLens tutorial and the
    reference figures; the same seed gives the same split.
    """
    _check(data, test_fraction)
    n = len(data)
    perm = np.random.default_rng(seed).permutation(n)
    num_test = _num_test(n, test_fraction)  # a tiny file rounds up to all-test otherwise
    return data.take(np.sort(perm[num_test:])), data.take(np.sort(perm[:num_test]))


def holdout(data: Interactions, fraction: float, seed: int) -> tuple[Interactions, Interactions]:
    """A seeded random ``fraction`` of the training events held out: (fit, held out).

    The one validation split of a run: early stopping, the hyperparameter search,
    the baselines' settings and the popularity prior are all chosen on it.
    """
    perm = np.random.default_rng(seed).permutation(len(data))
    num_held_out = int(len(data) * fraction)
    return data.take(np.sort(perm[num_held_out:])), data.take(np.sort(perm[:num_held_out]))


def temporal_split(data: Interactions, test_fraction: float = 0.2) -> tuple[Interactions, Interactions]:
    """The latest ``test_fraction`` of the events (by timestamp, then position) are the test set.

    Every test event is at least as late as every train event.
    """
    _check(data, test_fraction)
    n = len(data)
    order = np.argsort(data.timestamps, kind="stable")
    test = np.zeros(n, dtype=bool)
    test[order[n - _num_test(n, test_fraction):]] = True
    return _by_mask(data, test)


def leave_last_out_split(data: Interactions) -> tuple[Interactions, Interactions]:
    """Each customer's last event (latest timestamp; the later row on ties) is the test event.

    Customers with a single event are kept in train only, so every test customer
    has training history.
    """
    _check(data, 0.5)
    customers = data.customer_ids
    order = np.lexsort((np.arange(len(data)), data.timestamps, customers))  # by customer, time, position
    sorted_customers = customers[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_customers[1:] != sorted_customers[:-1]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_customers[1:] != sorted_customers[:-1]
    test = np.zeros(len(data), dtype=bool)
    test[order[last & ~first]] = True  # the last of a run longer than one
    if not test.any():
        raise ValueError("leave-last-out needs at least one customer with two or more interactions")
    return _by_mask(data, test)


def make_split(data: Interactions, method: str = "random", test_fraction: float = 0.2,
               seed: int = 42) -> tuple[Interactions, Interactions]:
    """(train, test) by ``method`` (one of ``SPLITS``); ``seed`` matters for ``random`` only."""
    if method == "random":
        return random_split(data, test_fraction, seed)
    if method == "temporal":
        return temporal_split(data, test_fraction)
    if method == "leave-last-out":
        _check(data, test_fraction)
        return leave_last_out_split(data)
    raise ValueError(f"unknown split {method!r}; choose one of {', '.join(SPLITS)}")
