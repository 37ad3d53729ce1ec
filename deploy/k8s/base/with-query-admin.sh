# Runs "$@" (recsys-publish and its flags) with RECSYS_QUERY_ADMIN set to every
# query replica's admin plane. The replicas are a Deployment scaled by an
# autoscaler, so their addresses are only known now: the headless Service
# query-admin resolves to each pod's IP (starting ones included). A rollout
# that cannot list a replica must fail, not skip it: a skipped replica would
# keep serving the old version.
set -eu
RECSYS_QUERY_ADMIN="$(python3 - <<'PY'
import socket
import sys

port = 50062
try:
    infos = socket.getaddrinfo("query-admin", port, type=socket.SOCK_STREAM)
except socket.gaierror as e:
    sys.exit(f"no query replica found behind the Service query-admin ({e})")
hosts = sorted({info[4][0] for info in infos})
print(",".join(f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts))
PY
)"
export RECSYS_QUERY_ADMIN
echo "query replicas: $RECSYS_QUERY_ADMIN"
exec "$@"
