"""The two loaders: an interactions file (filtered by rating, event type and catalogue) and session click streams."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.data.files.catalogue import load_catalog
from trainer.data.files.ids import (BadId, IdEncoder, bad_id_error, drop_duplicates, narrowest, refuse_odd_ids,
                                   usable_ids)
from trainer.data.files.reading import file_format, read_columns
from trainer.data.files.values import check_epoch_span, epoch_unit, parse_numbers, parse_times, time_error
from trainer.data.interactions import Interactions

if TYPE_CHECKING:
    from trainer.data.datasets import DatasetOptions


def _encode(encoder: IdEncoder, values: list[Any], path: Path, col: str, first_row: int) -> np.ndarray:
    """``encoder.encode(values)``; a JSON value that names no id is refused naming the column and the data row."""
    try:
        return encoder.encode(values)
    except BadId as e:
        raise bad_id_error(path, col, first_row + e.position + 1, e) from None


def _load_columns(path: Path, fmt: str, options: DatasetOptions, customer_col: str, candidate_col: str,
                  rating_col: str | None, time_col: str | None) -> dict[str, Any]:
    event_col = options.event_col
    wanted = [customer_col, candidate_col] + [c for c in (rating_col, time_col, event_col) if c]
    customers, candidates, events = IdEncoder(), IdEncoder(), IdEncoder()
    cust_codes, cand_codes, ratings, times, event_codes = [], [], [], [], []
    rows, time_kind, dropped = 0, None, Counter()
    for chunk in read_columns(path, fmt, wanted, options.delimiter, options.header, counts=dropped, id_columns=2):
        if rows == 0 and not options.header:
            _refuse_header_read_as_data(path, chunk[0][0], chunk[1][0])
        first_row = rows
        rows += len(chunk[0])
        cust_codes.append(_encode(customers, chunk[0], path, customer_col, first_row))
        cand_codes.append(_encode(candidates, chunk[1], path, candidate_col, first_row))
        k = 2
        if rating_col:
            ratings.append(parse_numbers(chunk[k], path, rating_col).astype(np.float32))
            k += 1
        if time_col:
            chunk_times, kind = parse_times(chunk[k], path, time_col, first_row)
            if time_kind not in (None, kind):
                raise time_error(path, time_col, first_row + 1, chunk[k][0], "mixes epoch numbers and dates")
            times.append(chunk_times)
            time_kind = kind
            k += 1
        if event_col:
            event_codes.append(_encode(events, chunk[k], path, event_col, first_row))
    if rows == 0:
        raise ValueError(f"{path} has no data rows")
    for col, encoder, codes in ((customer_col, customers, cust_codes), (candidate_col, candidates, cand_codes)):
        refuse_odd_ids(path, col, encoder, codes)
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    # Kept as given to order events within a second (RetailRocket's milliseconds, YooChoose's dates, decimal
    # seconds: float64 where any chunk has a decimal point).
    exact_times = cat(times, np.int64) if time_col else np.arange(rows, dtype=np.int64)
    time_unit, scale = epoch_unit(exact_times, time_kind, path, time_col) if time_col else (None, 1)
    time_range = check_epoch_span(exact_times, time_unit, scale, path, time_col) if time_col else None
    return {
        "customers": customers, "candidates": candidates,
        "customer_codes": cat(cust_codes, np.int64), "candidate_codes": cat(cand_codes, np.int64),
        "ratings": cat(ratings, np.float32) if rating_col else None,
        "exact_times": exact_times, "time_unit": time_unit, "time_range": time_range, "scale": scale,
        "events": events, "event_codes": cat(event_codes, np.int64),
        "rows": rows, "dropped": dropped,
    }


_ID_OPTIONS = ("customer_col", "candidate_col", "session_col", "item_col")


def _id_names(*named: str) -> frozenset[str]:
    """What a header line's id cell holds: the id columns' default names (user_id, item_id; SessionId, ItemId) and
    those ``named`` on the command line (a column's number, read without a header, is none)."""
    from trainer.data import datasets  # at run time: datasets imports this module

    defaults = {f.default for f in dataclasses.fields(datasets.DatasetOptions) if f.name in _ID_OPTIONS}
    return frozenset(defaults | {name for name in named if not name.isdigit()})


def _refuse_header_read_as_data(path: Path, customer: Any, candidate: Any) -> None:
    """Refuses a first row, read without a header, whose ids are the id columns' default names: a header read as
    one more interaction, of a customer and candidate named so."""
    names = _id_names()
    if isinstance(customer, str) and isinstance(candidate, str) and {customer.strip(), candidate.strip()} <= names:
        raise ValueError(f"{path}: read with --no-header, but its first line names id columns ({customer.strip()}, "
                         f"{candidate.strip()}): a header, which would be read as an interaction; leave out "
                         f"--no-header and name the id columns by their header names")


def _read_info(path: Path, fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    """The start of ``Interactions.info``: what was read (repeated header lines included, and counted), in which
    time unit and over which span (``time_range``, UTC)."""
    info: dict[str, Any] = {"source": str(path), "format": fmt, "rows_read": c["rows"] + c["dropped"].total(),
                            **c["dropped"]}
    if c["time_unit"]:
        info["time_unit"], info["time_range"] = c["time_unit"], c["time_range"]
    return info


def _event_filter(c: dict[str, Any], options: DatasetOptions, path: Path, info: dict[str, Any]) -> np.ndarray:
    """Rows whose event type is one of ``options.events`` (all rows without that
    filter); counts each type in ``info["event_counts"]``."""
    keep = np.ones(c["rows"], dtype=bool)
    if options.event_col is None:
        return keep
    types, codes = c["events"].finish(c["event_codes"])
    info["event_counts"] = {str(t): int(n) for t, n in zip(types, np.bincount(codes, minlength=len(types)))}
    if options.events:
        absent = [e for e in options.events if e not in info["event_counts"]]
        if absent:
            raise ValueError(f"{path}: event type{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))} "
                             f"not in column {options.event_col!r}; found: {', '.join(info['event_counts'])}")
        keep = np.isin(types, options.events)[codes]
        info["dropped_other_events"] = int((~keep).sum())
    return keep

def load_interactions_file(options: DatasetOptions) -> Interactions:
    """A generic interactions file (see the module docstring); ``info`` reports counts and speed."""
    start = time.perf_counter()
    path = Path(options.data_path)
    fmt = file_format(path, options.format)
    c = _load_columns(path, fmt, options, options.customer_col, options.candidate_col,
                      options.rating_col, options.time_col)
    read_seconds = time.perf_counter() - start
    info = _read_info(path, fmt, c)
    keep = _event_filter(c, options, path, info)
    if options.min_rating is not None:
        below = ~(c["ratings"] >= options.min_rating) & keep  # NaN ratings count as below
        if options.unrated_value is not None:
            unrated = c["ratings"] == options.unrated_value
            info["kept_unrated"] = int((unrated & keep).sum())
            below &= ~unrated
        info["dropped_below_min_rating"] = int(below.sum())
        keep &= ~below

    (customer_vocab, customer_codes), (candidate_vocab, candidate_codes) = usable_ids(
        keep, info, (c["customers"], c["customer_codes"]), (c["candidates"], c["candidate_codes"]))
    catalog, candidate_features = None, None
    if options.catalog_path is not None:
        catalog, candidate_features, dropped_rows = load_catalog(
            options.catalog_path, options.catalog_format,
            options.catalog_id_col or options.candidate_col, options.catalog_feature_cols,
            options.catalog_delimiter, options.catalog_header, _id_names(options.candidate_col))
        info.update(dropped_rows)
        known = np.isin(candidate_vocab, catalog)  # over the (small) vocabulary, not the rows
        missing = ~known[candidate_codes] & keep
        info["dropped_not_in_catalog"] = int(missing.sum())
        info["catalog_size"] = len(catalog)
        keep &= ~missing
    timestamps = np.floor_divide(c["exact_times"], c["scale"]).astype(np.int64)
    drop_duplicates(keep, info, customer_codes, candidate_codes, timestamps if options.time_col else None)
    if not keep.any():
        raise ValueError(f"{path}: no interactions left after filtering ({info})")
    index = np.flatnonzero(keep) if not keep.all() else slice(None)
    data = Interactions(
        customer_ids=narrowest(customer_vocab[customer_codes[index]]),
        candidate_ids=narrowest(candidate_vocab[candidate_codes[index]]),
        timestamps=timestamps[index],
        catalog=catalog,
        candidate_features=candidate_features,
        name=path.stem.split(".")[0],
    )
    seconds = time.perf_counter() - start
    info.update({"interactions": len(data), "read_seconds": round(read_seconds, 3),
                 "load_seconds": round(seconds, 3), "rows_per_second": round(c["rows"] / max(seconds, 1e-9))})
    data.info = info
    return data


def load_sessions(options: DatasetOptions) -> Interactions:
    """Click streams: one "customer" per session, events sorted by (session, time, file order).

    Times are float64 epoch seconds, what the services' request_time is (a time tower trained on RetailRocket's
    milliseconds read every served time as its first moment), keeping the file's fractions of a second (to a
    microsecond): unlike ``load_interactions_file``'s whole seconds, they still order a view before the cart of
    the same second where later steps sort by time. ``info["time_unit"]`` names the unit read.

    Repeats of an event (the same session, item and time; without a time column the same session and item) are
    dropped (``info["dropped_duplicates"]``), then sessions with a single event
    (``info["dropped_single_event_sessions"]``).
    """
    start = time.perf_counter()
    path = Path(options.data_path)
    fmt = file_format(path, options.format)
    c = _load_columns(path, fmt, options, options.session_col, options.item_col, None, options.time_col)
    info = _read_info(path, fmt, c)
    # Not whole seconds: RetailRocket's view and cart of one item within a second would be one event.
    times = c["exact_times"] / c["scale"]
    kept_event = _event_filter(c, options, path, info)
    (session_vocab, session_codes), (item_vocab, item_codes) = usable_ids(
        kept_event, info, (c["customers"], c["customer_codes"]), (c["candidates"], c["candidate_codes"]))
    # Before the lengths: a session whose rows are copies of one event is a single-event session.
    drop_duplicates(kept_event, info, session_codes, item_codes, times if options.time_col else None)
    lengths = np.bincount(session_codes[kept_event], minlength=len(session_vocab))
    keep_session = lengths >= 2
    keep = keep_session[session_codes] & kept_event
    if not keep.any():
        raise ValueError(f"{path}: every session has a single event; nothing to learn from")
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((rows, c["exact_times"][rows], session_codes[rows]))]
    data = Interactions(
        customer_ids=narrowest(session_vocab[session_codes[order]]),
        candidate_ids=narrowest(item_vocab[item_codes[order]]),
        timestamps=times[order],
        name=path.stem.split(".")[0],
    )
    seconds = time.perf_counter() - start
    info.update({
        "interactions": len(data), "sessions": int(keep_session.sum()),
        "dropped_single_event_sessions": int((lengths == 1).sum()),
        "load_seconds": round(seconds, 3), "rows_per_second": round(c["rows"] / max(seconds, 1e-9)),
    })
    data.info = info
    return data

