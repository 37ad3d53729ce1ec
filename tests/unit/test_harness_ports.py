"""The test harness's own checks: a server started on a port another process took is not
taken for up because that other process answers its health check."""

import os
import socket
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.processes import ServiceProcess, free_port, listens_on


def test_listens_on_names_the_process_that_holds_the_port():
    listener = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n"
                                 "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                                 "print(s.getsockname()[1], flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        assert listens_on(listener.pid, port)
        assert listens_on(os.getpid(), port)  # the listener runs below this process
        with socket.socket() as own:
            own.bind(("127.0.0.1", 0))
            assert not listens_on(os.getpid(), own.getsockname()[1])  # bound, not listening
            own.listen()
            assert listens_on(os.getpid(), own.getsockname()[1])
            assert not listens_on(listener.pid, own.getsockname()[1])  # not below the listener
    finally:
        listener.kill()
        listener.wait()


def test_a_health_answer_from_another_process_on_the_port_is_not_this_servers(tmp_path):
    port = free_port()
    bystander = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, bystander)
    bystander.add_insecure_port(f"127.0.0.1:{port}")
    bystander.start()
    # A server still starting (importing TensorFlow, say) on the port the bystander took.
    starting = ServiceProcess("sleep", [], tmp_path / "sleep.log", port=port, command=["sleep", "30"])
    try:
        with pytest.raises(TimeoutError):
            starting.launch().wait_serving(timeout_s=1.5)
    finally:
        starting.stop()
        bystander.stop(0)
