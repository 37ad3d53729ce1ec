"""What the compose stack's servers write to their logs: JSON lines, so a request id (written only in
`--log-format json` lines, README "Observability") can be found from a failed call's x-request-id; and as
few lines of the native libraries as can go without hiding an error. tests/unit/test_k8s.py checks the
same of the Kubernetes manifests."""

from __future__ import annotations

import shlex

import pytest

# The compose tests' fixtures (the parsed file, the console scripts, a clean environment), shared.
from tests.unit.test_compose import (  # noqa: F401
    APP_SERVICES, SERVERS, as_argv, clean_env, compose, dockerfile_instructions, flag_value, parse, scripts,
    services)

# gRPC's INFO and WARNING lines (fork_posix.cc's "skipping fork() handlers" at every --workers start) off, its
# errors kept. TensorFlow stays at 2: at 3 its own error lines would go too, and its one line at start on a node
# without a GPU driver ("failed call to cuInit") is not stopped by CUDA_VISIBLE_DEVICES (docs/DEPLOY.md).
NATIVE_LOG_ENV = {"GRPC_VERBOSITY": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.parametrize("name", SERVERS)
def test_compose_servers_log_json_lines(services, scripts, clean_env, name):
    argv = as_argv(services[name]["command"])
    assert flag_value(argv, "--log-format") == "json", f"{name} logs text lines, without request ids"
    assert parse(argv[0], argv[1:], scripts).log_format == "json"


def test_the_image_sets_the_native_libraries_log_levels():
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    assert NATIVE_LOG_ENV.items() <= env.items()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_sets_the_native_libraries_log_levels(services, name):
    env = {k: str(v) for k, v in services[name]["environment"].items()}
    assert NATIVE_LOG_ENV.items() <= env.items(), name
