"""Runs the stack's processes on this machine: a private redis-server and the
services' console scripts on free loopback ports. The harness of the
integration tests and the benchmarks (not shipped in the package); everything
started here is stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from settings.ports import free_ports

BIN = Path(sys.executable).parent


def free_port() -> int:
    return free_ports(1)[0]


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (a --workers supervisor's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (not exited, nor a zombie that its parent, or an orphan's new one, has yet to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a wrapper's command, a supervisor's workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            queue.extend(children(current))
        except OSError:  # exited meanwhile
            pass
    return found


def listens_on(pid: int, port: int) -> bool:
    """Whether ``pid`` or a process below it holds a socket listening on TCP ``port``.

    A port drawn free can be taken by another test's server before this one binds it; that
    server's health check would then answer for this one (seen once: UNIMPLEMENTED from an
    index service where a query service was expected). The kernel's socket table says whose it is."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for owner in descendants(pid):
        try:
            fds = os.listdir(f"/proc/{owner}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{owner}/fd/{fd}") in inodes:
                    return True
            except OSError:
                continue
    return False


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: install the package with pip install -e '.[dev]'")
    return str(path)


def is_serving(address: str, service: str = "", credentials: grpc.ChannelCredentials | None = None) -> bool:
    try:
        with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                                 timeout=0.5)
        return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


class RedisProcess:
    """A redis-server of our own on a free loopback port, no persistence;
    ``args`` are more redis-server options (e.g. ``--requirepass``)."""

    def __init__(self, *args: str, port: int | None = None):
        self.args = args
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, with or without a password
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
        self.proc = None


class ServiceProcess:
    """One gRPC server started as a command, logging to a file, considered up
    once its health check says SERVING. Console scripts of this package get
    free ``--port`` and ``--admin-port`` flags, and stop without a drain window
    unless ``args`` give one."""

    def __init__(self, script: str, args: list[str], log_path: Path, port: int | None = None,
                 command: list[str] | None = None, credentials: grpc.ChannelCredentials | None = None):
        self.script = script
        self.wrapper: list[str] = []  # a command that runs the process (e.g. prlimit ... --)
        self.credentials = credentials  # to reach a server serving TLS
        self.args = args
        self.port = port or free_port()
        self.admin_port = free_port()
        self.log_path = Path(log_path)
        self.command = command
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_address(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def start(self, timeout_s: float = 120) -> "ServiceProcess":
        """Starts the process and waits until it reports SERVING."""
        return self.launch().wait_serving(timeout_s)

    def launch(self) -> "ServiceProcess":
        """Starts the process without waiting for it (``start_all``)."""
        command = self.command or [console_script(self.script), "--port", str(self.port),
                                   "--admin-port", str(self.admin_port), "--shutdown-drain-s", "0"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*self.wrapper, *command, *self.args], stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_serving(self, timeout_s: float = 120) -> "ServiceProcess":
        """Waits until the launched process reports SERVING on a port it holds itself; stops it
        and raises if it does not in ``timeout_s`` or exits first."""
        try:
            wait_until(lambda: self.proc.poll() is not None or (is_serving(self.address, "", self.credentials)
                                                                and listens_on(self.proc.pid, self.port)),
                       timeout_s, f"{self.script} to report SERVING")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.script} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def start_all(*processes: ServiceProcess, timeout_s: float = 120) -> None:
    """Starts ``processes`` together and waits until each reports SERVING.

    Most of a service's start is importing TensorFlow or ScaNN on one core, so
    two processes started together take about as long as one on a 2-core machine.
    A query replica started beside its index slot reports SERVING once the slot
    holds its version. If one fails, the ones started with it are stopped too."""
    for process in processes:
        process.launch()
    try:
        for process in processes:
            process.wait_serving(timeout_s)
    except BaseException:
        for process in processes:
            process.stop()
        raise


def _cluster_ports(n: int) -> list[int]:
    """``n`` ports for cluster nodes, none of them or of their bus ports the same: a port drawn
    twice would leave a cluster of fewer masters than asked (one suite run's cluster served
    from two of its three, a possible cause; drawn apart, the three ports could repeat)."""
    ports: list[int] = []
    while len(ports) < n:
        port = _cluster_port()
        taken = {p for q in ports for p in (q, q + 10000)}
        if not {port, port + 10000} & taken:
            ports.append(port)
    return ports


def _cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is a port, and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


class RedisClusterProcesses:
    """A Redis Cluster of ``masters`` redis-servers (no replicas) on free
    loopback ports, its config files in ``workdir``. Nodes give up on a silent
    peer after ``node_timeout_ms``, and the cluster keeps serving the slots of
    the masters left when one is lost (``cluster-require-full-coverage no``)."""

    def __init__(self, workdir: Path, masters: int = 3, node_timeout_ms: int = 500):
        self.workdir = Path(workdir)
        self.nodes = [RedisProcess("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                                   "--cluster-require-full-coverage", "no", "--dir", str(self.workdir),
                                   "--cluster-config-file", f"nodes-{i}.conf", port=port)
                      for i, port in enumerate(_cluster_ports(masters))]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> "RedisClusterProcesses":
        """Starts the servers and joins them into one cluster with all 16384 slots spread over them."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (apt-get install redis-tools)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, timeout=30)
            wait_until(self._formed, 15, "the Redis cluster to report cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    def _formed(self) -> bool:
        return all(b"cluster_state:ok" in subprocess.run([shutil.which("redis-cli"), "-p", str(node.port),
                                                          "cluster", "info"], capture_output=True).stdout
                   for node in self.nodes)

    def kill(self, index: int) -> None:
        """SIGKILL of one node: a master lost without a chance to say goodbye."""
        proc = self.nodes[index].proc
        if proc is not None:
            proc.kill()
            proc.wait(10)
        self.nodes[index].proc = None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
