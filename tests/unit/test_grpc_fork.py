"""A service process forks its workers with ``preexec_fn`` (``serving.rpc.workers``: each dies with its supervisor)
while gRPC serves; gRPC's fork support aborted some of those children before their ``exec`` (grpc/grpc#43055:
8 of 300 here), or hung the parent in its fork handlers. The services' packages turn it off before gRPC loads
(``settings.grpc_env``). The children exec ``true``: what breaks happens between the fork and the exec."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

PROBE = """
import index_service  # the package, as the console script's import of index_service.server runs it first
import subprocess, sys, threading
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(2))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
done = threading.Event()

def traffic():
    while not done.is_set():
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

threading.Thread(target=traffic, daemon=True).start()
codes = [subprocess.Popen([sys.argv[1]], preexec_fn=lambda: None).wait() for _ in range(300)]
done.set()
print("failed children:", sum(code != 0 for code in codes))
"""


def test_children_forked_while_grpc_serves_start():
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}  # this suite's conftest sets it
    # Its own session: a child that hangs before its exec (as with fork support on) goes with the probe.
    proc = subprocess.Popen([sys.executable, "-c", PROBE, shutil.which("true")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)  # 2 s here (28 s with Python children)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("forking 300 children while gRPC served hung for 120 s")
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == "failed children: 0", out
