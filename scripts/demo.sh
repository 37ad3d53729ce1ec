#!/usr/bin/env bash
# End-to-end demo on one machine, no Docker: run from anywhere in the repo
#
#   bash scripts/demo.sh
#
# 1. creates .venv and installs the package (skipped when already done),
# 2. finds or starts a Redis (scripts/ensure_redis.sh),
# 3. trains a model on the synthetic data set and publishes it to
#    demo-run/registry/demo/<version>/,
# 4. starts two index slots (blue, green; empty), rolls the version out
#    (recsys-publish --initial: it loads into blue), then starts the query
#    service on free local ports,
# 5. asks for recommendations: a known customer twice (the second answer
#    comes from the Redis cache), another known customer, and an unknown one
#    (popularity fallback),
# 6. trains a second version and rolls it out blue-green (green loads it while
#    blue serves; the query service switches routing), then rolls back,
# 7. stops everything it started, whatever happens.
#
# Logs, pids and the registry stay in demo-run/ (git-ignored) for a look after;
# the folder is recreated on every run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUN_DIR="$PWD/demo-run"
REGISTRY="$RUN_DIR/registry"
MODEL=demo
K=5
STARTUP_TIMEOUT_S=120

step() { printf '\n==> %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

# --- clean-up: stop what this script started, by pid -------------------------
SERVICE_PIDS=()
STEP_PID=""  # the command a step waits on (wait_step), stopped first
cleanup() {
    local status=$? pid
    if [[ -n "$STEP_PID" ]]; then  # its stop line goes through the step's tee, which ends after it
        kill "$STEP_PID" 2>/dev/null || true
        wait "$STEP_PID" 2>/dev/null || true
    fi
    for pid in "${SERVICE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVICE_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -s "$RUN_DIR/redis.pid" ]]; then  # written only if ensure_redis started one
        kill "$(cat "$RUN_DIR/redis.pid")" 2>/dev/null || true
        rm -f "$RUN_DIR/redis.pid"
    fi
    if [[ $status -eq 0 ]]; then
        step "done; stopped the services (logs in ${RUN_DIR#"$PWD"/})"
    elif [[ $status -eq 129 || $status -eq 130 ]]; then
        echo "demo: stopped by a signal; stopped what it started (logs in ${RUN_DIR#"$PWD"/})" >&2
    else
        echo "demo: failed (exit $status); logs in ${RUN_DIR#"$PWD"/}" >&2
    fi
}
# Each run starts from an empty folder: the pid files of a run that died without its clean-up name whatever
# processes have those pids now (the clean-up would kill the one redis.pid names), beside that run's logs.
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
trap cleanup EXIT
trap 'exit 130' INT TERM  # so Ctrl-C and kill also run cleanup
trap 'exit 129' HUP  # a closed terminal: the clean-up says stopped, not done

# A long step runs as a background pipeline, started under `set -m` (a process group of its own), that
# wait_step waits on. In the foreground it held off the clean-up: bash runs a trap once its foreground command
# ends, so a kill of this script waited for the training's minutes. In its own group, the terminal's Ctrl-C
# reaches this script alone, and the clean-up stops the step with one signal (a second ends a training at once).
# What the step prints to the terminal goes through to_terminal: a background group writing there is stopped
# (SIGTTOU) on a terminal set to `stty tostop`, and the training with it once the pipe fills.
to_terminal() {
    trap '' TTOU
    exec "$@"
}
wait_step() {
    STEP_PID="$(jobs -p %%)"  # the pipeline's first process
    local status=0
    wait "$!" || status=$?
    STEP_PID=""
    return "$status"
}

step "virtual environment"
source scripts/venv.sh
ensure_venv
export PATH="$PWD/.venv/bin:$PATH"

step "redis"
REDIS_URL="$(bash scripts/ensure_redis.sh --pidfile "$RUN_DIR/redis.pid")"
echo "using $REDIS_URL"

step "training on the synthetic data set (a 2-minute hyperparameter search, then the refit)"
# The default search budget is 5 minutes; the demo shows the search in 2.
set -m
recsys-train --dataset synthetic --registry "$REGISTRY" --model "$MODEL" --tune-budget-s 120 \
    --metrics-out "$RUN_DIR/train-metrics.json" 2>&1 | to_terminal tee "$RUN_DIR/train.log" &
set +m
wait_step

# Seven distinct free ports: all sockets are held open until all are chosen.
read -r BLUE_PORT GREEN_PORT QUERY_PORT QUERY_METRICS_PORT BLUE_ADMIN_PORT GREEN_ADMIN_PORT QUERY_ADMIN_PORT < <(python - <<'PY'
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
BLUE_ADDR="127.0.0.1:$BLUE_PORT"
GREEN_ADDR="127.0.0.1:$GREEN_PORT"
QUERY_ADDR="127.0.0.1:$QUERY_PORT"
INDEX_ADMINS="127.0.0.1:$BLUE_ADMIN_PORT,127.0.0.1:$GREEN_ADMIN_PORT"
QUERY_ADMIN="127.0.0.1:$QUERY_ADMIN_PORT"

# start NAME COMMAND...: runs it in the background, logs and pid in demo-run/.
start() {
    local name="$1"; shift
    "$@" >"$RUN_DIR/$name.log" 2>&1 &
    SERVICE_PIDS+=("$!")
    echo "$!" >"$RUN_DIR/$name.pid"
    echo "$name: pid $!, log ${RUN_DIR#"$PWD"/}/$name.log"
}

# wait_serving NAME ADDRESS: until its health check says SERVING, or give up.
wait_serving() {
    local name="$1" address="$2" pid deadline
    pid="$(cat "$RUN_DIR/$name.pid")"
    deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    until recsys-client health --address "$address" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $name exited during start-up; the end of its log:" >&2
            tail -n 30 "$RUN_DIR/$name.log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "demo: $name is not SERVING on $address after ${STARTUP_TIMEOUT_S}s; the end of its log:" >&2
            tail -n 30 "$RUN_DIR/$name.log" >&2
            exit 1
        fi
        sleep 1
    done
    echo "$name: SERVING on $address"
}

step "starting two index slots (blue, green), empty until the first rollout"
start index-blue recsys-index-service --registry "$REGISTRY" --model "$MODEL" --slot blue \
    --host 127.0.0.1 --port "$BLUE_PORT" --admin-port "$BLUE_ADMIN_PORT"
start index-green recsys-index-service --registry "$REGISTRY" --model "$MODEL" --slot green \
    --host 127.0.0.1 --port "$GREEN_PORT" --admin-port "$GREEN_ADMIN_PORT"
wait_serving index-blue "$BLUE_ADDR"
wait_serving index-green "$GREEN_ADDR"

step "first rollout: the version goes into an empty slot, CURRENT names it"
recsys-publish --initial --registry "$REGISTRY" --model "$MODEL" --index-admin "$INDEX_ADMINS"

step "starting the query service (routes each version to the slot that holds it)"
start query-service recsys-query-service --registry "$REGISTRY" --model "$MODEL" \
    --host 127.0.0.1 --port "$QUERY_PORT" --metrics-port "$QUERY_METRICS_PORT" --admin-port "$QUERY_ADMIN_PORT" \
    --index-address "$BLUE_ADDR,$GREEN_ADDR" --redis-url "$REDIS_URL"
wait_serving query-service "$QUERY_ADDR"
echo "metrics: http://127.0.0.1:$QUERY_METRICS_PORT/metrics"

recommend() {
    step "$1"
    recsys-client recommend --address "$QUERY_ADDR" --customer-id "$2" --k "$K"
}
recommend "customer c000001 (first ask: computed, cache_hit false)" c000001
recommend "customer c000001 again (served from the cache, in process before Redis: cache_hit true)" c000001
recommend "customer c000002" c000002
recommend "an unknown customer (popularity fallback)" new-customer

step "training a second version (published, not live)"
set -m
recsys-train --dataset synthetic --registry "$REGISTRY" --model "$MODEL" --seed 7 --tune-budget-s 0 --quiet \
    2>&1 | tee "$RUN_DIR/train-2.log" | to_terminal tail -n 1 &
set +m
wait_step

step "blue-green rollout: green loads the new version while blue serves, then the query service switches"
recsys-publish --registry "$REGISTRY" --model "$MODEL" --index-admin "$INDEX_ADMINS" --query-admin "$QUERY_ADMIN" \
    --drain-s 0
recommend "customer c000001 (the new version's answer; cache_hit true if the rollout's warm-up reached it)" c000001

step "rollback: a routing switch back to blue, which still holds the first version"
recsys-publish --rollback --registry "$REGISTRY" --model "$MODEL" --query-admin "$QUERY_ADMIN"
recommend "customer c000001 (the first version again, from the cache)" c000001
