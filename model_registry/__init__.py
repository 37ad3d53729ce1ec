"""The model registry: on-disk layout of model versions, shared by trainer and services.

A model version is one unit (query tower + candidate embeddings + ScaNN index from
one training run) stored under ``<root>/<model>/<version>/`` with a checksummed
``manifest.json``. See ``registry.py`` for the layout and ``manifest.py`` for the
manifest.
"""

from model_registry.manifest import IndexSpec, Manifest, VersionError, verify_version
from model_registry.registry import Registry

__all__ = ["IndexSpec", "Manifest", "Registry", "VersionError", "verify_version"]
