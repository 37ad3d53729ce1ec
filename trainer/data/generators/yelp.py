"""Yelp-style reviews: ``review.json``, JSON lines as in the Yelp Open Dataset's
review file (review_id, user_id, business_id, stars, useful, funny, cool, text,
date "2019-05-03 14:22:11").

Customers and businesses share taste clusters (a cuisine in a neighbourhood);
a review of a business of the customer's own cluster tends to get more stars,
as does a better business. Stars follow Yelp's skew to 4-5, and training keeps
reviews of 4 stars and up (``--min-rating 4``): what a customer liked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from settings.flags import require
from trainer.data.generators.common import (GeneratedData, GeneratorConfig, TasteSpec, base64_ids, graded,
                                            iso_times, pick, sentences, spread_times, unique_pairs, write_jsonl)

OPENERS = {  # by star
    1: ("Terrible experience.", "Never again.", "Really disappointed."),
    2: ("Not great.", "Meh.", "Expected more."),
    3: ("It was okay.", "Decent enough.", "Average spot."),
    4: ("Really good!", "Solid choice.", "Would come back."),
    5: ("Absolutely loved it!", "Best in town!", "Five stars, no question."),
}
DETAILS = ("The service was slow but friendly.", "Portions were generous.", "Parking was a pain.",
           "Staff remembered our order.", "Prices are a bit high for what you get.", "Great patio in summer.",
           "The wait was long on a Friday night.", "Clean and bright inside.", "Came here for a birthday.")


@dataclasses.dataclass(frozen=True)
class YelpConfig(GeneratorConfig):
    """Yelp reviews: sizes, planted taste and the star distribution."""

    # Yelp's real density is ~3 reviews per user; 8 keeps enough per customer to learn at 100k reviews.
    taste: TasteSpec = TasteSpec(clusters=20, zipf_exponent=1.0, in_cluster_share=0.6, per_customer=8.0,
                                 activity_sigma=1.2, per_candidate=15.0)
    star_shares: tuple[float, ...] = (0.14, 0.08, 0.10, 0.22, 0.46)  # 1..5 stars, as in the Yelp Open Dataset
    taste_lift: float = 1.5  # how much a business of one's own cluster lifts the stars (logistic scale)
    quality_sd: float = 0.7  # spread of the businesses' own quality (logistic scale)
    min_rating: float = 4.0  # what training keeps (--min-rating)
    first_date: str = "2005-03-01"
    last_date: str = "2022-01-19"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.star_shares) == 5 and min(self.star_shares) > 0, "star_shares",
                "needs five positive shares (1..5 stars)")
        require(1 <= self.min_rating <= 5, "min_rating", "must be in [1, 5]")


def generate(config: YelpConfig, out: Path) -> GeneratedData:
    """Writes ``out/review.json``; returns the flags that train on reviews of ``min_rating`` stars and up."""
    rng = np.random.default_rng(config.seed)
    taste = config.taste.plant(rng, config.interactions)
    users, businesses, own = unique_pairs(rng, taste, config.interactions, config.taste.in_cluster_share)
    quality = rng.normal(0.0, config.quality_sd, taste.num_candidates)
    stars = 1 + graded(rng, config.taste_lift * own + quality[businesses], config.star_shares)
    n = len(users)
    # Yelp grew for years: more reviews late in the period.
    dates = iso_times(np.sort(spread_times(rng, n, config.first_date, config.last_date, growth=2.0)), sep=" ")
    openers = np.empty(n, dtype=object)
    for s, bank in OPENERS.items():
        openers[stars == s] = pick(rng, bank, int((stars == s).sum()))
    path = write_jsonl(out / "review.json", {
        "review_id": base64_ids(rng, n),
        "user_id": base64_ids(rng, taste.num_customers)[users],
        "business_id": base64_ids(rng, taste.num_candidates)[businesses],
        "stars": stars.astype(np.float64),  # the dataset writes 4.0
        "useful": rng.geometric(0.5, n) - 1,
        "funny": rng.geometric(0.8, n) - 1,
        "cool": rng.geometric(0.7, n) - 1,
        "text": sentences(openers.astype(str), pick(rng, DETAILS, n), pick(rng, DETAILS, n)),
        "date": dates,
    })
    flags = ("--data-path", str(path), "--customer-col", "user_id", "--candidate-col", "business_id",
             "--rating-col", "stars", "--min-rating", f"{config.min_rating:g}", "--time-col", "date")
    return GeneratedData("yelp", (path,), "interactions-csv", flags, n)
