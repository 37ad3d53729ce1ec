#!/usr/bin/env bash
# Runs the test suite in the project's virtual environment, creating and
# installing it first if needed. Extra arguments go to pytest:
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh tests/unit -x        # a subset
#   RECSYS_TEST_WORKERS=0 bash scripts/test.sh -s tests/unit/test_cores.py   # in one process (prints show)
#
# The tests run on RECSYS_TEST_WORKERS pytest-xdist workers (2: the machines' cores), a
# file's tests on one worker, files handed out in collection order (tests/conftest.py puts the longest
# first); those marked ``alone`` run with nothing beside them (tests/exclusive.py).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
ensure_venv

# The integration tests start their own redis-server (and skip without one).
bash scripts/ensure_redis.sh --install-only ||
    echo "test.sh: no redis-server: the tests that need one will be skipped" >&2
# The alerting rules' tests run promtool (and skip without one).
bash scripts/ensure_promtool.sh ||
    echo "test.sh: no promtool: the alerting rules' tests will be skipped" >&2

exec .venv/bin/python -m pytest -q -n "${RECSYS_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
