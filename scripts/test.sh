#!/usr/bin/env bash
# Runs the test suite in the project's virtual environment, creating and
# installing it first if needed. Extra arguments go to pytest:
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh tests/unit -x        # a subset
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
ensure_venv

# The integration tests start their own redis-server (and skip without one).
bash scripts/ensure_redis.sh --install-only ||
    echo "test.sh: no redis-server: the tests that need one will be skipped" >&2

exec .venv/bin/python -m pytest -q "$@"
