#!/usr/bin/env bash
# Prints the URL of a Redis to use on stdout; everything else goes to stderr.
#
#   REDIS_URL="$(bash scripts/ensure_redis.sh [--pidfile FILE])"
#   bash scripts/ensure_redis.sh --install-only   # step 2's install, nothing else
#
# 1. A Redis already answering on 127.0.0.1:6379 is used as it is.
# 2. Otherwise redis-server is installed if missing (apt-get; needs root on
#    Debian/Ubuntu) and a throw-away one is started on a free port: no
#    persistence, bound to 127.0.0.1. Its pid goes to FILE, its log to redis/
#    beside it (default: both in a folder under ${TMPDIR:-/tmp}); stop it with
#    `kill "$(cat FILE)"`. When this script started nothing, FILE is not
#    written (an old one is removed).
set -euo pipefail

pidfile=""
install_only=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --pidfile) pidfile="$2"; shift 2 ;;
        --pidfile=*) pidfile="${1#*=}"; shift ;;
        --install-only) install_only=true; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) echo "ensure_redis: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { echo "ensure_redis: $*" >&2; }

# redis_ping PORT: true when a Redis on 127.0.0.1:PORT answers PONG.
redis_ping() {
    local port="$1" reply
    if command -v redis-cli >/dev/null; then
        reply="$(timeout 3 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)"
    else  # no client installed yet: speak the protocol over bash's /dev/tcp
        reply="$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'PING\r\n' >&3 && head -c 7 <&3" 2>/dev/null || true)"
    fi
    [[ "$reply" == *PONG* ]]
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_redis_server() {
    command -v redis-server >/dev/null && return 0
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "redis-server is not installed and cannot be installed here (needs root and apt-get); install it, or start a Redis on 127.0.0.1:6379"
        return 1
    fi
    log "installing redis-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends redis-server >&2
}

if $install_only; then
    install_redis_server
    exit
fi

[[ -n "$pidfile" ]] && rm -f "$pidfile"

if redis_ping 6379; then
    log "using the Redis already running on 127.0.0.1:6379"
    echo "redis://127.0.0.1:6379/0"
    exit 0
fi

install_redis_server

port="$(free_port)"
# Beside FILE when given (the demo's run folder, which its next run removes); else a folder only the log names.
if [[ -n "$pidfile" ]]; then
    mkdir -p "$(dirname "$pidfile")/redis"
    workdir="$(cd "$(dirname "$pidfile")/redis" && pwd)"  # absolute: redis-server opens its log after a chdir there
else
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/recsys-redis.XXXXXX")"
fi
pidfile="${pidfile:-$workdir/redis.pid}"
mkdir -p "$(dirname "$pidfile")"
pidfile="$(cd "$(dirname "$pidfile")" && pwd)/$(basename "$pidfile")"

log "starting redis-server on 127.0.0.1:$port (pidfile $pidfile, log $workdir/redis.log)"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
    --save "" --appendonly no --dir "$workdir" \
    --pidfile "$pidfile" --logfile "$workdir/redis.log" >&2

for _ in $(seq 1 50); do
    if redis_ping "$port" && [[ -s "$pidfile" ]]; then
        echo "redis://127.0.0.1:$port/0"
        exit 0
    fi
    sleep 0.2
done
log "redis-server did not answer on port $port within 10 s; its log:"
tail -n 20 "$workdir/redis.log" >&2 || true
exit 1
