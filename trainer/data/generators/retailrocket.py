"""RetailRocket-style e-commerce events: ``events.csv`` (timestamp in ms,
visitorid, event, itemid, transactionid) as in the Kaggle data set.

Visitors browse items of their taste cluster (a store category) or popular
ones; they view an item again now and then, put some in the cart (more often
an item of their own taste) and buy some of those: a funnel where views are
~96% of the events, carts ~3% and transactions ~1%. A transaction's id is
shared by the items a visitor buys in the same hour; other events leave it
empty. Events past the log's end share its last instant, so some rows repeat
an event (one visitor, item and time). Training reads it as the ``sessions``
data set keyed by visitor (repeats of an event, then visitors with a single
event, are dropped) and counts the event types.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from settings.flags import require
from trainer.data.generators.common import GeneratedData, GeneratorConfig, TasteSpec, distinct_ints, write_csv

EVENTS = ("view", "addtocart", "transaction")
_MS = 1000


@dataclasses.dataclass(frozen=True)
class RetailRocketConfig(GeneratorConfig):
    """RetailRocket events: sizes, planted taste and the funnel."""

    # Most real visitors have one or two events; the log-normal activity keeps that long tail.
    taste: TasteSpec = TasteSpec(clusters=20, zipf_exponent=1.1, in_cluster_share=0.5, per_customer=7.0,
                                 activity_sigma=1.3, per_candidate=10.0)
    repeat_views: float = 0.3  # mean extra views of an item a visitor looked at
    cart_share: float = 0.03  # of all events
    transaction_share: float = 0.01  # of all events
    cart_taste_ratio: float = 3.0  # an item of one's own cluster goes to the cart this much more often
    first_ms: int = 1_430_622_004_384  # 2015-05-03, the Kaggle set's first event
    last_ms: int = 1_442_545_187_788  # 2015-09-18

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.repeat_views >= 0, "repeat_views", "must be >= 0")
        require(0 < self.transaction_share <= self.cart_share and self.cart_share + self.transaction_share < 0.5,
                "cart_share", "needs 0 < transaction_share <= cart_share, both small")
        require(self.cart_taste_ratio >= 1, "cart_taste_ratio", "must be >= 1")
        require(self.first_ms < self.last_ms, "last_ms", "must be after first_ms")


def _funnel_rates(config: RetailRocketConfig, own: np.ndarray) -> tuple[np.ndarray, float]:
    """(P(cart) per browsed item, P(transaction | cart)) that give the configured event shares."""
    view_share = 1.0 - config.cart_share - config.transaction_share
    per_item = config.cart_share / view_share * (1.0 + config.repeat_views)  # carts per browsed item
    weight = np.where(own, config.cart_taste_ratio, 1.0)
    return np.minimum(1.0, per_item * weight / weight.mean()), config.transaction_share / config.cart_share


def generate(config: RetailRocketConfig, out: Path) -> GeneratedData:
    """Writes ``out/events.csv``; returns the flags that train on all events by visitor."""
    rng = np.random.default_rng(config.seed)
    taste = config.taste.plant(rng, config.interactions)
    view_share = 1.0 - config.cart_share - config.transaction_share
    browsed = int(config.interactions * view_share / (1.0 + config.repeat_views))
    visitor = taste.draw_customers(rng, browsed)
    item, own = taste.draw_candidates(rng, visitor, config.taste.in_cluster_share)
    # A visitor comes back over days; each browsed item gets its first view then.
    span = config.last_ms - config.first_ms
    arrival = rng.random(taste.num_customers) * span
    first_view = arrival[visitor] + rng.exponential(3 * 86_400 * _MS, browsed)
    p_cart, p_buy = _funnel_rates(config, own)
    carted = rng.random(browsed) < p_cart
    bought = carted & (rng.random(browsed) < p_buy)
    repeats = rng.poisson(config.repeat_views, browsed)

    view_of = np.repeat(np.arange(browsed), 1 + repeats)  # browsed item of each view
    nth = np.arange(len(view_of)) - np.repeat(np.cumsum(1 + repeats) - (1 + repeats), 1 + repeats)
    view_time = first_view[view_of] + nth * rng.exponential(10 * 60 * _MS, len(view_of))
    cart_time = first_view + rng.exponential(3 * 60 * _MS, browsed)
    buy_time = cart_time + rng.exponential(20 * 60 * _MS, browsed)
    source = np.concatenate([view_of, np.flatnonzero(carted), np.flatnonzero(bought)])
    kind = np.repeat(np.arange(3), [len(view_of), carted.sum(), bought.sum()])
    times = np.concatenate([view_time, cart_time[carted], buy_time[bought]])
    times = config.first_ms + np.minimum(times, span).astype(np.int64)  # the log ends when the data set does

    # One transaction: what a visitor bought within one clock hour.
    sold = kind == 2
    basket = visitor[source[sold]] * (span // (3600 * _MS) + 1) + (times[sold] - config.first_ms) // (3600 * _MS)
    _, basket_index = np.unique(basket, return_inverse=True)
    transaction = np.full(len(kind), "", dtype=object)
    transaction[sold] = rng.permutation(basket_index.max() + 1)[basket_index].astype(str)

    order = np.argsort(times, kind="stable")
    visitor_ids = distinct_ints(rng, taste.num_customers, 1_407_580)
    item_ids = distinct_ints(rng, taste.num_candidates, 466_868)
    path = write_csv(out / "events.csv", {
        "timestamp": times[order],
        "visitorid": visitor_ids[visitor[source[order]]],
        "event": np.array(EVENTS)[kind[order]],
        "itemid": item_ids[item[source[order]]],
        "transactionid": transaction[order],
    })
    flags = ("--data-path", str(path), "--session-col", "visitorid", "--item-col", "itemid",
             "--time-col", "timestamp", "--event-col", "event")
    return GeneratedData("retailrocket", (path,), "sessions", flags, len(order))
