"""A candidate catalogue file: the candidates' ids and their feature columns, numbers or strings (list literals
joined with "|")."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np

from model_registry.attributes import LIST_SEPARATOR
from trainer.data.files.ids import BadId, bad_id_error, first_bad_id, id_str, long_ids, narrowest, refuse_marked_ids
from trainer.data.files.reading import file_format, read_columns
from trainer.data.files.values import is_number
from trainer.data.interactions import align_features


# A Python list literal of plain quoted strings (no escapes), as Python prints a list of str.
_PLAIN_LIST = re.compile(r"""\[\s*(?:(?:'[^'\\]*'|"[^"\\]*")\s*(?:,\s*|(?=\])))*\]""")
_PLAIN_ITEM = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _list_cell(text: str) -> str | None:
    """The items of a list literal cell joined with "|"; None if it is not one."""
    if _PLAIN_LIST.fullmatch(text):  # the common case, ~4x faster than literal_eval
        return LIST_SEPARATOR.join(a or b for a, b in _PLAIN_ITEM.findall(text))
    try:
        items = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return LIST_SEPARATOR.join(map(str, items)) if isinstance(items, (list, tuple)) else None


def _string_feature(values: list[Any]) -> np.ndarray:
    """A string feature column; a column of list literals (every non-empty cell
    "[...]") becomes "|"-joined items, as a JSON list does."""
    text = ["" if v is None else str(v).strip() for v in values]
    filled = [t for t in text if t]
    if filled and all(t[0] == "[" and t[-1] == "]" for t in filled):
        joined = [_list_cell(t) if t else "" for t in text]
        if all(j is not None for j in joined):
            return np.array(joined, dtype=str)
    return np.array(["" if v is None else str(v) for v in values], dtype=str)


def load_catalog(path: Path, fmt: str | None, id_col: str, feature_cols: tuple[str, ...] = (),
                 delimiter: str | None = None, header: bool = True, header_ids: frozenset[str] = frozenset()
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """(sorted unique candidate ids, {feature: array aligned with them}, {what was dropped: rows}).

    A feature column whose values all parse as numbers becomes float32 (NaN when
    empty), any other a string column. Rows without an id the services can use
    (blank, holding a NUL, over ``MAX_ID_BYTES``) are left out and counted
    (``dropped_catalog_unusable_ids``); an id listed again takes its last row's
    features, the earlier rows counted (``dropped_catalog_repeated_ids``). Read
    without a header, a first row whose id is one of ``header_ids`` (names of
    the id column) is refused: a header, which would become a candidate.
    """
    path = Path(path)
    fmt = file_format(path, fmt)
    cols = [id_col] + list(feature_cols)
    parts: list[list[list[Any]]] = [[] for _ in cols]
    for chunk in read_columns(path, fmt, cols, delimiter, header):
        for i, values in enumerate(chunk):
            parts[i].extend(values)
    try:
        texts = [v if isinstance(v, str) else id_str(v) for v in parts[0]]
    except BadId as e:
        raise bad_id_error(path, id_col, first_bad_id(parts[0]) + 1, e) from None
    refuse_marked_ids(path, id_col, texts)
    if not header and texts and texts[0].strip() in header_ids:
        raise ValueError(f"{path}: read with --no-catalog-header, but its first line names the id column "
                         f"({texts[0].strip()}): a header, which would be published as a candidate; leave out "
                         f"--no-catalog-header and name the columns by their header names")
    # An id holding a NUL reads as a blank one (numpy would make "a\x00" the candidate "a"), and is left out with it.
    raw_ids = np.char.strip(np.array(["" if "\x00" in v else v for v in texts], dtype=str))
    usable = (raw_ids != "") & ~long_ids(raw_ids)  # no candidate the services could not use
    ids = narrowest(np.unique(raw_ids[usable]))
    dropped = {"dropped_catalog_unusable_ids": int((~usable).sum()),
               "dropped_catalog_repeated_ids": int(usable.sum()) - len(ids)}
    features: dict[str, np.ndarray] = {}
    for name, values in zip(feature_cols, parts[1:]):
        if all(is_number(v) and not isinstance(v, bool) for v in values) and any(v not in (None, "") for v in values):
            numbers = np.array([np.nan if v in (None, "") else float(v) for v in values], dtype=np.float64)
            # inf, or past float32's range: the towers' inputs would be inf and training NaN (NaN is a blank cell).
            bad = np.flatnonzero(~(np.abs(numbers) <= np.finfo(np.float32).max) & ~np.isnan(numbers))
            if len(bad):
                raise ValueError(f"{path}: column {name!r} of data row {bad[0] + 1} holds {values[bad[0]]!r}, not "
                                 "a finite number float32 holds: fix it, or leave the cell empty (missing)")
            features[name] = numbers.astype(np.float32)
        else:
            features[name] = _string_feature(values)
    return ids, align_features(raw_ids, features, ids), {key: n for key, n in dropped.items() if n}

