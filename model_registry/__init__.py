"""The model version's contract, written once and read by the trainer and both
services. TensorFlow-free and gRPC-free (numpy, and cryptography for signatures).

A model version is one unit (query tower + candidate embeddings + ScaNN index
from one training run) stored under ``<root>/<model>/<version>/``:

* ``manifest``: the files of a version, its checksummed ``manifest.json``;
* ``signing``: the publisher's Ed25519 signature of a manifest, checked by services given its key;
* ``registry``: the on-disk layout, atomic publish, the CURRENT pointer and the
  index slots' records;
* ``customers``: the customer store (history, seen items, features);
* ``tower_inputs``: the rule that turns a customer into query-tower inputs;
* ``attributes``: the candidates' filter attributes (token and numeric namespaces);
* ``deltas``: a version's catalogue delta log (upserts and deletes, checksummed and hash-chained);
* ``search``: exact search and recall@k, the reference of every ScaNN index;
* ``ids``: how long an id may be, and id lookup in sorted id arrays.
"""

from model_registry.manifest import IndexSpec, Manifest, VersionError, verify_version
from model_registry.registry import Registry

__all__ = ["IndexSpec", "Manifest", "Registry", "VersionError", "verify_version"]
