"""Food.com-style recipe ratings: ``RAW_interactions.csv`` (user_id, recipe_id,
date, rating, review) and the catalogue ``RAW_recipes.csv`` (name, id, minutes,
contributor_id, submitted, tags, n_steps, steps, description, ingredients,
n_ingredients), with tags, steps and ingredients written as Python list
literals ("['easy', 'italian']"), as in the Kaggle data set.

Taste clusters are a cuisine and a course; a recipe's tags and ingredients come
from its cluster's pools, so the catalogue's features carry the clusters.
Ratings are Food.com's: mostly 5, and 0 for a review without a rating (about
5%); a 0 is engagement, not dislike, so training keeps ratings of 4 and up and
the unrated (``--min-rating 4 --unrated-value 0``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from settings.flags import require
from trainer.data.generators.common import (GeneratedData, GeneratorConfig, TasteSpec, distinct_ints, graded,
                                            iso_times, pick, spread_times, subsets, unique_pairs, write_csv)

CUISINES = {  # cuisine -> its characteristic ingredients
    "italian": ("basil", "parmesan cheese", "mozzarella cheese", "tomatoes", "pasta", "oregano", "ricotta cheese"),
    "mexican": ("black beans", "corn tortillas", "jalapeno", "cumin", "cilantro", "salsa", "avocado"),
    "indian": ("garam masala", "turmeric", "ginger", "chickpeas", "basmati rice", "coconut milk", "curry powder"),
    "chinese": ("soy sauce", "sesame oil", "rice vinegar", "green onions", "hoisin sauce", "bok choy", "tofu"),
    "french": ("shallots", "dijon mustard", "heavy cream", "white wine", "thyme", "gruyere cheese", "leeks"),
    "greek": ("feta cheese", "kalamata olives", "lemon juice", "plain yogurt", "cucumber", "dill", "phyllo dough"),
    "southern-united-states": ("buttermilk", "cornmeal", "bacon", "pecans", "collard greens", "okra", "grits"),
    "thai": ("fish sauce", "lemongrass", "thai basil", "red curry paste", "lime juice", "peanuts", "rice noodles"),
    "middle-eastern": ("tahini", "sumac", "bulgur", "pomegranate molasses", "pita bread", "mint", "lentils"),
    "japanese": ("miso", "mirin", "nori", "sushi rice", "wasabi", "dashi", "edamame"),
    "caribbean": ("allspice", "scotch bonnet pepper", "plantains", "coconut", "rum", "mango", "kidney beans"),
    "german": ("sauerkraut", "caraway seed", "bratwurst", "potatoes", "red cabbage", "rye bread", "apples"),
}
COURSES = {  # course tag -> dish words for names
    "main-dish": ("casserole", "stir fry", "skillet dinner", "bake", "stew"),
    "desserts": ("cake", "cookies", "pie", "bars", "pudding"),
    "appetizers": ("dip", "bites", "skewers", "fritters", "spread"),
    "soups-stews": ("soup", "chowder", "bisque", "chili", "broth"),
}
PANTRY = ("salt", "butter", "sugar", "eggs", "flour", "garlic", "onion", "olive oil", "water", "milk",
          "black pepper", "brown sugar", "vegetable oil", "baking powder")
GENERIC_TAGS = ("easy", "dietary", "occasion", "inexpensive", "low-in-something", "beginner-cook", "holiday-event",
                "comfort-food", "kid-friendly", "low-sodium", "one-dish-meal", "taste-mood", "equipment")
NAME_WORDS = ("easy", "grandma's", "best ever", "quick", "spicy", "creamy", "simple", "crock pot", "healthy", "zesty")
STEPS = ("preheat oven to 350f", "combine all ingredients in a large bowl", "stir well", "bring to a boil",
         "reduce heat and simmer for 20 minutes", "season to taste", "bake until golden", "let cool before serving",
         "serve immediately", "chill for an hour", "whisk together the dry ingredients", "fold in gently")
REVIEWS = {  # by rating; 0: reviewed without rating
    0: ("I haven't made this yet but it looks wonderful.", "Question: can this be frozen?", "Made for a tag game."),
    1: ("Sorry, this did not work for us.", "Way too salty.", "Would not make again."),
    2: ("It was edible, but bland.", "Needed a lot of changes."),
    3: ("Good, not great.", "Okay as written; I added more spice."),
    4: ("Very good, will make again.", "Tasty and easy.", "My family enjoyed this."),
    5: ("Excellent recipe, thanks for posting!", "This is a keeper!", "Perfect just as written.",
        "Made this for company and everyone asked for the recipe."),
}
MINUTE_TAGS = ((15, "15-minutes-or-less"), (30, "30-minutes-or-less"), (60, "60-minutes-or-less"),
               (240, "4-hours-or-less"))


@dataclasses.dataclass(frozen=True)
class RecipesConfig(GeneratorConfig):
    """Food.com ratings: sizes, planted taste and the rating distribution."""

    # Clusters: cuisine x course (12 x 4 = 48 at most).
    taste: TasteSpec = TasteSpec(clusters=24, zipf_exponent=1.05, in_cluster_share=0.65, per_customer=10.0,
                                 activity_sigma=1.2, per_candidate=12.0)
    rating_shares: tuple[float, ...] = (0.013, 0.013, 0.038, 0.18, 0.756)  # 1..5 among the rated, as in Food.com
    unrated_share: float = 0.055  # reviews with rating 0 (no rating given)
    taste_lift: float = 1.5  # how much a recipe of one's own cluster lifts the rating (logistic scale)
    min_rating: float = 4.0  # what training keeps, besides the unrated (--min-rating)
    first_date: str = "2000-01-25"
    last_date: str = "2018-12-20"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.taste.clusters <= len(CUISINES) * len(COURSES), "taste.clusters",
                f"at most {len(CUISINES) * len(COURSES)} (cuisines x courses)")
        require(len(self.rating_shares) == 5 and min(self.rating_shares) > 0, "rating_shares",
                "needs five positive shares (ratings 1..5)")
        require(0 <= self.unrated_share < 1, "unrated_share", "must be in [0, 1)")


def _python_lists(rows: list[list[str]]) -> list[str]:
    """Cells as the Kaggle CSV holds them: ``str`` of a Python list of strings."""
    return [str(row) for row in rows]


def _catalogue(rng: np.random.Generator, cluster: np.ndarray, ids: np.ndarray,
               submitted: np.ndarray) -> dict[str, list | np.ndarray]:
    """RAW_recipes.csv's columns for recipes of the given clusters, submitted at the given epoch seconds."""
    n = len(cluster)
    cuisines, courses = list(CUISINES), list(COURSES)
    cuisine = (cluster % len(cuisines)).tolist()
    course = (cluster // len(cuisines) % len(courses)).tolist()
    minutes = np.maximum(1, rng.lognormal(np.log(35), 0.8, n)).astype(np.int64)
    minute_tag = np.array([t for _, t in MINUTE_TAGS] + [""])[
        np.searchsorted([m for m, _ in MINUTE_TAGS], minutes)].tolist()
    # Ingredients: some of the cuisine's own, then pantry staples.
    own = subsets(rng, len(CUISINES["italian"]), rng.integers(2, 6, n))
    pantry = subsets(rng, len(PANTRY), rng.integers(2, 8, n))
    ingredients = [[CUISINES[cuisines[cuisine[r]]][i] for i in own[r]] + [PANTRY[i] for i in pantry[r]]
                   for r in range(n)]
    generic = subsets(rng, len(GENERIC_TAGS), rng.integers(1, 6, n))
    tags = [[t for t in (minute_tag[r], "time-to-make", "course", "cuisine", "preparation", courses[course[r]],
                         cuisines[cuisine[r]]) if t] + [GENERIC_TAGS[i] for i in generic[r]] for r in range(n)]
    steps = [[STEPS[i] for i in s] for s in subsets(rng, len(STEPS), rng.integers(3, 12, n))]
    # "grandma's italian basil casserole": a word, the cuisine, its first own ingredient, a dish of the course.
    region = [c.replace("-united-states", "").replace("-", " ") for c in cuisines]
    dish = np.array(list(COURSES.values()))[course, rng.integers(0, len(COURSES["main-dish"]), n)].tolist()
    names = [f"{word} {region[cuisine[r]]} {ingredients[r][0]} {dish[r]}"
             for r, word in enumerate(pick(rng, NAME_WORDS, n).tolist())]
    return {
        "name": names,
        "id": ids,
        "minutes": minutes,
        "contributor_id": distinct_ints(rng, n, 2_000_000),
        "submitted": iso_times(submitted, unit="D"),
        "tags": _python_lists(tags),
        "n_steps": [len(s) for s in steps],
        "steps": _python_lists(steps),
        "description": [f"{courses[c].replace('-', ' ')} from my {region[k]} collection"
                        for c, k in zip(course, cuisine)],
        "ingredients": _python_lists(ingredients),
        "n_ingredients": [len(i) for i in ingredients],
    }


def generate(config: RecipesConfig, out: Path) -> GeneratedData:
    """Writes ``out/RAW_interactions.csv`` and ``out/RAW_recipes.csv``; returns the
    flags that train on ratings of ``min_rating`` and up plus the unrated, with
    the recipes file as the candidate catalogue."""
    rng = np.random.default_rng(config.seed)
    taste = config.taste.plant(rng, config.interactions)
    users, recipes, own = unique_pairs(rng, taste, config.interactions, config.taste.in_cluster_share)
    n = len(users)
    rating = 1 + graded(rng, config.taste_lift * own, config.rating_shares)
    rating[rng.random(n) < config.unrated_share] = 0  # a review without stars, whatever the taste
    recipe_ids = distinct_ints(rng, taste.num_candidates, 540_000)
    user_ids = distinct_ints(rng, taste.num_customers, 2_002_400_000)
    reviews = np.empty(n, dtype=object)
    for r, bank in REVIEWS.items():
        reviews[rating == r] = pick(rng, bank, int((rating == r).sum()))
    # Food.com's activity peaked around 2008 and faded: most recipes and reviews are early,
    # and a recipe is reviewed after it was submitted.
    submitted = spread_times(rng, taste.num_candidates, config.first_date, config.last_date, growth=0.5)
    reviewed = np.maximum(spread_times(rng, n, config.first_date, config.last_date, growth=0.6), submitted[recipes])
    interactions = write_csv(out / "RAW_interactions.csv", {
        "user_id": user_ids[users], "recipe_id": recipe_ids[recipes], "date": iso_times(reviewed, unit="D"),
        "rating": rating, "review": reviews.astype(str),
    })
    catalogue = write_csv(out / "RAW_recipes.csv", _catalogue(rng, taste.candidate_cluster, recipe_ids, submitted))
    flags = ("--data-path", str(interactions), "--customer-col", "user_id", "--candidate-col", "recipe_id",
             "--rating-col", "rating", "--min-rating", f"{config.min_rating:g}", "--unrated-value", "0",
             "--time-col", "date", "--catalog-path", str(catalogue), "--catalog-id-col", "id",
             "--catalog-feature-cols", "name,minutes,tags,ingredients,n_ingredients")
    return GeneratedData("recipes", (interactions, catalogue), "interactions-csv", flags, n)
