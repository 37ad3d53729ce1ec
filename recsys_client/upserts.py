"""What recsys-catalogue reads from an upserts file (``read_upserts``: JSON lines, each a candidate's id, its vector
or its catalogue values for the version's candidate tower, and its filter attributes), checked against the version:
dimensions, namespaces, ids the services can name (``check_id``), finite values, and vectors on the trained
candidates' scale (``check_scale``); ``CatalogueError`` names the line and field of what does not fit."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from model_registry import Registry
from model_registry.attributes import LIST_SEPARATOR, Attributes, token_lists
from model_registry.deltas import MAX_UPSERT_SCALE, Delta, trained_max_norm
from recsys_client.candidate_tower import CandidateTower, FeatureError
from recsys_client.interrupts import deferred
from serving import validation
from serving.errors import InvalidArgument
from serving.validation import MAX_ID_BYTES

# The keys an upsert line may have (module docstring): any other, "token" for "tokens" say, would else be dropped
# unread, and the candidate written without the attributes its filters need.
UPSERT_KEYS = ("id", "vector", "features", "tokens", "numeric")


class CatalogueError(Exception):
    """Input that does not fit the version (the message names the line and field), or a delta the registry's
    directory would not take."""


def read_upserts(lines, dim: int, token_namespaces: frozenset[str], numeric_namespaces: frozenset[str],
                 tower: Callable[[], CandidateTower] | None = None) -> Delta:
    """A delta upserting the candidates of JSON ``lines`` (see the module docstring).

    ``tower`` loads the version's candidate tower; it is called only if a line
    gives ``features`` instead of a ``vector``."""
    ids, vectors, wheres = [], [], []
    described: dict[int, dict[str, Any]] = {}  # row -> features, for rows given as features
    tokens: dict[str, list[list[str]]] = {ns: [] for ns in token_namespaces}
    numeric: dict[str, list[float]] = {ns: [] for ns in numeric_namespaces}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            candidate = record["id"]
        except (ValueError, KeyError, TypeError) as e:
            raise CatalogueError(f"line {number}: not a JSON object with an 'id' ({e})") from None
        except RecursionError:  # arrays nested thousands deep: a traceback from the decoder
            raise CatalogueError(f"line {number}: not a JSON object with an 'id' (nested too deep to read)") from None
        if not isinstance(candidate, str) or not 0 < len(candidate.encode()) <= MAX_ID_BYTES:
            raise CatalogueError(f"line {number}: id must be a string of 1..{MAX_ID_BYTES} bytes")
        check_id(candidate, f"line {number}: id")
        where = f"line {number} (id {candidate!r})"
        unknown_keys = sorted(set(record) - set(UPSERT_KEYS))
        if unknown_keys:
            raise CatalogueError(f"{where}: unknown keys {unknown_keys}: a line takes only {', '.join(UPSERT_KEYS)} "
                                 "(see recsys-catalogue --help)")
        vector, features = record.get("vector"), record.get("features")
        if (vector is None) == (features is None):
            raise CatalogueError(f"{where}: give either 'vector' or 'features' (the catalogue values the version's "
                                 "candidate tower embeds)")
        if features is not None:
            if not isinstance(features, dict):
                raise CatalogueError(f"{where}: 'features' must be an object of catalogue column -> value")
            described[len(ids)] = features
            vector = np.zeros(dim, np.float32)
        else:
            vector = _finite_float32s(vector) if isinstance(vector, list) and len(vector) == dim else None
            if vector is None:
                raise CatalogueError(f"{where}: vector must be {dim} finite numbers within float32's range, the "
                                     "version's embedding dimension")
        for part in ("tokens", "numeric"):
            if not isinstance(record.get(part, {}), dict):
                raise CatalogueError(f"{where}: {part!r} must be an object of attribute namespace -> values")
        unknown = (set(record.get("tokens", {})) - token_namespaces) | \
            (set(record.get("numeric", {})) - numeric_namespaces)
        if unknown:
            raise CatalogueError(f"{where}: namespaces {sorted(unknown)} are not attribute "
                                 f"namespaces of this version (tokens: {sorted(token_namespaces)}, numeric: "
                                 f"{sorted(numeric_namespaces)})")
        ids.append(candidate)
        vectors.append(vector)
        wheres.append(where)
        # A namespace the line leaves out takes the same-named feature, as the trainer made the
        # version's attributes from the catalogue's columns (model_registry.attributes.from_catalogue).
        features = features or {}
        for ns in token_namespaces:
            given = record.get("tokens", {}).get(ns)
            if given is not None and not isinstance(given, list):  # a string would be taken letter by letter
                raise CatalogueError(f"{where}: tokens {ns!r} must be a list, got {given!r}")
            tokens[ns].append([str(t) for t in given] if given is not None else
                              token_lists([_cell(features.get(ns))])[0])
        for ns in numeric_namespaces:
            value = record.get("numeric", {}).get(ns, features.get(ns))
            # An infinity passes a range filter's bounds (-inf passes max: 0), and a string or boolean is no number.
            if value is not None and _finite_float32s([value]) is None:
                raise CatalogueError(f"{where}: numeric {ns!r} must be a finite number within float32's range "
                                     f"(null: missing), got {value!r}")
            numeric[ns].append(float("nan") if value is None else float(value))
    if len(set(ids)) != len(ids):
        raise CatalogueError("an id appears on more than one line: upsert each candidate once per delta")
    matrix = np.array(vectors, dtype=np.float32).reshape(len(ids), dim)
    if described:
        if tower is None:
            raise CatalogueError("lines give 'features' but no candidate tower was given to embed them")
        rows = np.fromiter(described, dtype=np.int64)
        try:
            with deferred():  # TensorFlow: a stop waits for the tower's load and calls to end
                computed = tower().vectors([ids[r] for r in rows], list(described.values()))
        except FeatureError as e:
            raise CatalogueError(f"the candidates given as features, {e}") from None
        if computed.shape[1] != dim:
            raise CatalogueError(f"the candidate tower gives {computed.shape[1]}-dimensional vectors but the "
                                 f"version's are {dim}: republish the version")
        matrix[rows] = computed
        unembedded = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if len(unembedded):
            raise CatalogueError(f"{wheres[unembedded[0]]}: its features embed to a vector that is not finite in "
                                 "float32: give values within the range the version was trained on")
    return Delta.make(ids, matrix, Attributes.from_lists(len(ids), tokens, numeric), dim=dim)


def _finite_float32s(values: list) -> np.ndarray | None:
    """``values`` as the float32 a delta stores them in, or None unless each is a JSON number (not a boolean, nor a
    string) finite once cast: 1e300 is a finite float64 but an infinite float32."""
    if not all(type(v) in (int, float) for v in values):
        return None
    try:
        with np.errstate(over="ignore"):
            cast = np.array(values, dtype=np.float32)
    except OverflowError:  # an int beyond float64's range
        return None
    return cast if np.isfinite(cast).all() else None


def check_scale(registry: Registry, version: int, delta: Delta) -> None:
    """Refuses (CatalogueError) a delta upserting a vector whose norm is over ``MAX_UPSERT_SCALE`` times the largest
    norm of ``version``'s trained candidates, be it given or embedded from features by the candidate tower."""
    if not len(delta.ids):
        return
    norms = np.linalg.norm(delta.vectors.astype(np.float64), axis=1)
    scale = trained_max_norm(registry.version_dir(version))
    over = np.flatnonzero(norms > MAX_UPSERT_SCALE * scale)
    if len(over):
        more = f" ({len(over) - 1} more upserts are over it)" if len(over) > 1 else ""
        raise CatalogueError(
            f"upsert {str(delta.ids[over[0]])!r} has a vector of norm {norms[over[0]]:.3g}, over "
            f"{MAX_UPSERT_SCALE * scale:.3g} ({MAX_UPSERT_SCALE:g} times the largest norm of version {version}'s "
            f"trained candidates, {scale:.3g}){more}: "
            "it would outscore the version's candidates for nearly every query and top every result. Give vectors on "
            "the version's scale (as its candidate tower makes them) or, for features, values within the range the "
            "version was trained on; nothing was written")


def _cell(value: Any) -> str:
    """A feature value as a catalogue cell: a list of categories joined with ``|``."""
    if value is None:
        return ""
    return LIST_SEPARATOR.join(map(str, value)) if isinstance(value, list) else str(value)


def check_id(candidate: str, what: str) -> None:
    """The services' rule for ids, which a delta's ids must meet to be named by requests. A NUL matters most here:
    numpy drops an id's trailing NULs, so an upsert or delete of "x\\x00" would change or delete x."""
    try:
        validation.check_id(candidate, what)
    except InvalidArgument as e:
        raise CatalogueError(str(e)) from None
