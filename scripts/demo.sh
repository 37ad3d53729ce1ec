#!/usr/bin/env bash
# End-to-end demo on one machine, no Docker: run from anywhere in the repo
#
#   bash scripts/demo.sh
#
# 1. creates .venv and installs the package (skipped when already done),
# 2. finds or starts a Redis (scripts/ensure_redis.sh),
# 3. trains a model on the synthetic data set and publishes it to
#    demo-run/registry/demo/<version>/,
# 4. starts the index service and the query service on free local ports,
# 5. asks for recommendations: a known customer twice (the second answer
#    comes from the Redis cache), another known customer, and an unknown one
#    (popularity fallback),
# 6. stops everything it started, whatever happens.
#
# Logs, pids and the registry stay in demo-run/ (git-ignored) for a look after.
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
cleanup() {
    local status=$? pid
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
    else
        echo "demo: failed (exit $status); logs in ${RUN_DIR#"$PWD"/}" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so Ctrl-C and kill also run cleanup

mkdir -p "$RUN_DIR"

step "virtual environment"
source scripts/venv.sh
ensure_venv
export PATH="$PWD/.venv/bin:$PATH"

step "redis"
REDIS_URL="$(bash scripts/ensure_redis.sh --pidfile "$RUN_DIR/redis.pid")"
echo "using $REDIS_URL"

step "training on the synthetic data set"
recsys-train --dataset synthetic --registry "$REGISTRY" --model "$MODEL" \
    --metrics-out "$RUN_DIR/train-metrics.json" 2>&1 | tee "$RUN_DIR/train.log"

# Six distinct free ports: all sockets are held open until all are chosen.
read -r INDEX_PORT QUERY_PORT INDEX_METRICS_PORT QUERY_METRICS_PORT INDEX_ADMIN_PORT QUERY_ADMIN_PORT < <(python - <<'PY'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
INDEX_ADDR="127.0.0.1:$INDEX_PORT"
QUERY_ADDR="127.0.0.1:$QUERY_PORT"

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

step "starting the services"
start index-service recsys-index-service --registry "$REGISTRY" --model "$MODEL" \
    --host 127.0.0.1 --port "$INDEX_PORT" --metrics-port "$INDEX_METRICS_PORT" --admin-port "$INDEX_ADMIN_PORT"
start query-service recsys-query-service --registry "$REGISTRY" --model "$MODEL" \
    --host 127.0.0.1 --port "$QUERY_PORT" --metrics-port "$QUERY_METRICS_PORT" --admin-port "$QUERY_ADMIN_PORT" \
    --index-address "$INDEX_ADDR" --redis-url "$REDIS_URL"
wait_serving index-service "$INDEX_ADDR"
wait_serving query-service "$QUERY_ADDR"
echo "metrics: http://127.0.0.1:$INDEX_METRICS_PORT/metrics http://127.0.0.1:$QUERY_METRICS_PORT/metrics"

recommend() {
    step "$1"
    recsys-client recommend --address "$QUERY_ADDR" --customer-id "$2" --k "$K"
}
recommend "customer c000001 (first ask: computed, cache_hit false)" c000001
recommend "customer c000001 again (served from Redis: cache_hit true)" c000001
recommend "customer c000002" c000002
recommend "an unknown customer (popularity fallback)" new-customer
