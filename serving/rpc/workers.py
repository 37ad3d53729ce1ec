"""``--workers N``: one service as N processes on one shared port.

A Python gRPC server runs its calls on one event loop under one GIL, so a
process uses about one core however many the machine has. As in grpc's
multiprocessing example, the workers are N copies of the service, each with
its own versions loaded, each binding the same data port with SO_REUSEPORT:
the kernel spreads incoming connections among them. A connection, with every
call on it, stays on one worker, so callers need several channels (as
``recsys-loadtest --channels`` opens) for the load to spread.

The process started with ``--workers N`` is their supervisor and loads no
model. It holds
- the admin port: an admin call goes to every worker (each serves its admin
  plane on a private unix socket; loads one worker at a time, ``PoolAdmin``)
  with the caller's request id (``x-request-id``, else the supervisor's), and
  answers with worker 0's status and every worker's (``ServiceStatus.workers``);
  if a worker fails it, the call fails, naming the workers that failed and
  those that took it; while a worker is being replaced (until the new process
  has loaded its versions, serving or not), a call fails at once (UNAVAILABLE,
  retry) and says so, except ``ApplyCatalogue``, which the other workers take
  and the replacement takes once it has started;
- health on the admin port: SERVING once every worker's data plane reports
  SERVING, so a readiness probe there says whether the whole pool serves;
- /metrics: every worker's, read at scrape time, each series labelled ``worker``;
- a secret the workers share (``pool_directory.pool_secret``): random, written where only
  this user reads it, so the pool's workers sign what they put in Redis with
  one key when none was given (``--cache-key-file``) and read each other's entries;
- the workers' lives: one that exits after it has served is started again on
  the version its siblings serve, and takes connections on the shared port
  only once it serves (``serving.rpc.grpc_server.WorkerDataPlane``), so callers
  never reach a worker that is still loading; one that has served but then
  leaves its health checks unanswered for ``--worker-hung-s`` (stopped, or
  deadlocked: the kernel still hands it connections, which would hang) is
  killed and started again; SIGTERM is passed on to every
  worker, and each drains as a single process would; the private directory
  of a supervisor that was killed is removed when the next one starts.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from typing import Iterable

import grpc
import prometheus_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.registry import Collector

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from serving.config import ServiceConfig
from serving.rpc.admin_rpc import start_admin_server
from serving.rpc.grpc_server import MAX_MESSAGE_CHARS, CannotListen, run_event_loop
from serving.rpc.pool_directory import private_directory, write_pool_secret
from serving.telemetry.observability import configure_logging, outgoing_metadata, request_id_metadata
from settings.ports import free_ports
from settings.processes import die_with_parent

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0  # between a worker's exit and its restart: a crash loop costs a start a second, not a core
POLL_S = 0.2  # how often the pool's health follows its workers'
ALIGN_TIMEOUT_S = 300.0  # a restarted worker's start and load, before the supervisor gives up aligning it
# An admin call to a worker when the caller set no deadline: the longest a load may take, as above. Without it a hung
# (stopped) worker held such a call for ever, and the caller heard nothing of the workers that took it.
WORKER_CALL_CAP_S = ALIGN_TIMEOUT_S
# A worker's GetStatus answers in milliseconds; one silent this long (hung, stopped) shows as holding nothing.
WORKER_STATUS_TIMEOUT_S = 5.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Binds ``host:port`` with SO_REUSEPORT without listening: the socket holds
    the port (port 0 picks one) while the workers bind it too, and takes no
    connection itself (the kernel hands connections to listening sockets only)."""
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def bound(option: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise CannotListen(f"cannot listen on {host}:{port}: {e.strerror}") from None
        return sock

    # Bound first without SO_REUSEPORT: a port another process listens on is refused (with it, a second pool on the
    # port shared it and answered half the calls). SO_REUSEADDR still takes a port whose old connections linger.
    with bound(socket.SO_REUSEADDR) as probe:
        port = probe.getsockname()[1]
    return bound(socket.SO_REUSEPORT)


def pinned_flags(version: int, rollback_target: int) -> list[str]:
    """The flags that start a worker on ``version`` with ``rollback_target`` (0: none); none for version 0 (CURRENT).
    --rollback-version goes with --version, 0 too: else the pool's own flag came back with a restarted worker,
    perhaps unloaded since, or the version it now serves (a worker that could not start, restarted for ever)."""
    return ["--version", str(version), "--rollback-version", str(rollback_target)] if version else []


class Worker:
    """One worker process: how to start it and its private channels."""

    def __init__(self, index: int, command: list[str], socket_prefix: str, metrics_port: int):
        self.index = index
        self.command = command
        self.socket_prefix = socket_prefix
        self.metrics_port = metrics_port
        self.process: asyncio.subprocess.Process | None = None
        self.has_served = False
        self.pinned = 0  # the live version it was last started on (0: the registry's CURRENT)
        # From its exit until its replacement has started and been aligned (WorkerPool.keep, align): admin calls
        # would reach no socket, or race its start-up loads.
        self.restarting = False
        self.catalogue_due: list[pb.ApplyCatalogueRequest] = []  # taken by the pool while it restarted
        # Since when its health checks have gone unanswered (None: the last one was answered, SERVING or not).
        self.silent_since: float | None = None
        # Short reconnect backoff: a starting worker's sockets appear seconds after the
        # first tries, and the pool's health should follow within POLL_S, not gRPC's 1-120 s backoff.
        options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 500)]
        self._channels = [grpc.aio.insecure_channel(f"unix:{socket_prefix}.{plane}", options=options)
                          for plane in ("admin", "data")]
        self.admin = pb_grpc.AdminServiceStub(self._channels[0])
        self._health = health_pb2_grpc.HealthStub(self._channels[1])

    async def start(self, version: int = 0, rollback_target: int = 0) -> None:
        """Starts the process, on ``version`` and ``rollback_target`` if given (else on the registry's CURRENT)."""
        for suffix in (".admin", ".data"):  # a dead worker's sockets would refuse the new one's bind
            try:
                os.unlink(self.socket_prefix + suffix)
            except FileNotFoundError:
                pass
        self.pinned = version
        pinned = pinned_flags(version, rollback_target)
        # SIGTERM when the supervisor dies, even by SIGKILL: the worker drains and frees the port.
        self.process = await asyncio.create_subprocess_exec(*self.command, *pinned,
                                                            preexec_fn=die_with_parent(signal.SIGTERM))
        log.info("worker %d started (pid %d)%s", self.index, self.process.pid,
                 f" on version {version}" if version else "")

    async def serving(self) -> bool:
        """Whether this worker's data plane reports SERVING; notes since when it has not answered."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            if self.restarting:
                self.silent_since = None  # a replacement starting up: not silence
            elif self.silent_since is None:
                self.silent_since = time.monotonic()
            return False
        self.silent_since = None
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def hung(self, hung_s: float) -> bool:
        """Whether this worker has served and then answered no health check for ``hung_s`` (0: never), its start-up
        after a restart not counted. One that answers NOT_SERVING (no index holds its version) is not hung."""
        return bool(hung_s and self.has_served and self.silent_since is not None
                    and time.monotonic() - self.silent_since >= hung_s)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def _worker_timeout(context: grpc.aio.ServicerContext, cap: float | None = None) -> float | None:
    """A call to a worker within the caller's deadline (and ``cap``), leaving time to answer: a hung
    worker's call would otherwise end with the caller's, who then hears neither which worker failed
    nor that the others took the call."""
    remaining = context.time_remaining()
    if remaining is None:
        return cap
    return 0.8 * remaining if cap is None else min(cap, 0.8 * remaining)


def _outcome_text(outcome: BaseException) -> str:
    if isinstance(outcome, grpc.aio.AioRpcError):
        return outcome.details() or outcome.code().name
    return f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__


def _restarting_text(indices: list[int]) -> str:
    return (f"{'worker' if len(indices) == 1 else 'workers'} {', '.join(map(str, indices))} "
            f"{'is' if len(indices) == 1 else 'are'} restarting (it loads the pool's versions and replays the "
            "registry when it starts)")


class PoolAdmin(pb_grpc.AdminServiceServicer):
    """The admin plane of a pool: each call goes to every worker. Loads go to
    one worker at a time: a load (the tower, the cache warm-up) takes CPU from
    its worker's event loop, and one at a time leaves the other workers at full
    speed. The rest go to all at once (a promotion is a routing switch, and the
    workers should switch together)."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    async def _all(self, method: str, request, context: grpc.aio.ServicerContext,
                   one_at_a_time: bool = False, caught_up_later: bool = False) -> pb.ServiceStatus:
        """``method`` on every worker. While a worker restarts, the call goes to none (a partial pool would
        differ), unless ``caught_up_later``: the others take it, and the restarting one once it has started."""
        restarting = [w for w in self.workers if w.restarting]
        if restarting and not caught_up_later:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{method} was sent to no worker: {_restarting_text([w.index for w in restarting])}"
                                ": retry in a few seconds", request_id_metadata())
        for worker in restarting:
            worker.catalogue_due.append(request)
        asked = [w for w in self.workers if not w.restarting]
        calls = [getattr(w.admin, method) for w in asked]
        metadata = outgoing_metadata()  # the caller's request id: one call is one id in every worker's log
        outcomes: list = []
        if one_at_a_time:
            for call in calls:  # the first failure stops the round: the rest are not asked
                try:
                    outcomes.append(await call(request, timeout=_worker_timeout(context, WORKER_CALL_CAP_S),
                                               metadata=metadata))
                except grpc.RpcError as e:
                    outcomes.append(e)
                    break
        else:
            timeout = _worker_timeout(context, WORKER_CALL_CAP_S)
            outcomes = await asyncio.gather(*(call(request, timeout=timeout, metadata=metadata) for call in calls),
                                            return_exceptions=True)
        failed = [asked[i].index for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        took = [asked[i].index for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
        later = (f"; {_restarting_text([w.index for w in restarting])}, and will catch up by itself"
                 if restarting else "")
        if failed:
            first = next(o for o in outcomes if isinstance(o, BaseException))
            message = (f"{method} failed on worker {failed[0]} of {len(self.workers)}: {_outcome_text(first)}"
                       + (f" (also on workers {failed[1:]})" if len(failed) > 1 else "")
                       + (f"; workers {[w.index for w in asked[len(outcomes):]]} were not asked"
                          if len(outcomes) < len(asked) else "") + later)
            if took:
                message += (f"; workers {took} took it, so the workers now differ: GetStatus shows each one's "
                            "versions; repeat the call or undo it")
            code = first.code() if isinstance(first, grpc.aio.AioRpcError) else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, message[:MAX_MESSAGE_CHARS], request_id_metadata())
        if restarting:  # the call's promise, every worker at it, holds only once the restarting ones have started
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{method}: workers {took} took it{later}: retry in a few seconds to see every "
                                "worker take it"[:MAX_MESSAGE_CHARS], request_id_metadata())
        status = pb.ServiceStatus()
        status.CopyFrom(outcomes[0])
        status.workers.extend(outcomes)
        return status

    async def LoadVersion(self, request, context):
        return await self._all("LoadVersion", request, context, one_at_a_time=True)

    async def Promote(self, request, context):
        return await self._all("Promote", request, context)

    async def Rollback(self, request, context):
        return await self._all("Rollback", request, context)

    async def UnloadVersion(self, request, context):
        return await self._all("UnloadVersion", request, context)

    async def GetStatus(self, request, context):
        """Every worker's status. A worker that does not answer (being replaced)
        shows as holding nothing, which is what it serves then, with why in
        ``not_answering``, so the pool's status stays readable; the top-level
        fields are the first answering worker's. Fails only when no worker answers."""
        timeout = _worker_timeout(context, WORKER_STATUS_TIMEOUT_S)  # capped without a deadline too
        outcomes = await asyncio.gather(*(w.admin.GetStatus(request, timeout=timeout, metadata=outgoing_metadata())
                                          for w in self.workers), return_exceptions=True)
        answered = [o for o in outcomes if not isinstance(o, BaseException)]
        if not answered:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"no worker answered GetStatus: {_outcome_text(outcomes[0])}"[:MAX_MESSAGE_CHARS],
                                request_id_metadata())
        status = pb.ServiceStatus()
        status.CopyFrom(answered[0])
        status.workers.extend(pb.ServiceStatus(model_name=status.model_name, service=status.service,
                                               not_answering=_outcome_text(o)[:MAX_MESSAGE_CHARS])
                              if isinstance(o, BaseException) else o for o in outcomes)
        return status

    async def ApplyCatalogue(self, request, context):
        return await self._all("ApplyCatalogue", request, context, caught_up_later=True)


class WorkerMetrics(Collector):
    """Every worker's /metrics, read when the supervisor's is scraped, each
    series labelled with its worker. A worker that does not answer (restarting)
    is left out of that scrape."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for worker in self.workers:
            # Read as OpenMetrics: the text format splits a counter's _created series into a gauge family of
            # its own, which the supervisor would re-export beside the counter, a name clash that OpenMetrics
            # parsers (as Prometheus negotiates by default) refuse for the whole scrape.
            request = urllib.request.Request(f"http://127.0.0.1:{worker.metrics_port}/metrics",
                                             headers={"Accept": OPENMETRICS})
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    found = list(openmetrics_families(reply.read().decode()))
            except (OSError, http.client.HTTPException, ValueError):  # down, or cut off mid-reply (restarting)
                continue
            for family in found:
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                                 family.unit))
                merged.samples.extend(s._replace(labels={**s.labels, "worker": str(worker.index)})
                                      for s in family.samples)
        return families.values()


def worker_command(module: str, argv: list[str], port: int, socket_prefix: str, metrics_port: int) -> list[str]:
    """A worker's command line: the supervisor's own flags, then the ones that
    make it a worker (later flags win in argparse)."""
    return [sys.executable, "-m", module, *argv, "--workers", "1", "--port", str(port),
            "--worker-socket", socket_prefix, "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]


class WorkerPool:
    """The supervisor's state: its workers, the pool's health and the restarts."""

    def __init__(self, workers: list[Worker], hung_s: float = 0.0):
        self.workers = workers
        self.hung_s = hung_s
        self.stopping = asyncio.Event()
        self.failure = ""  # why the pool gave up (a worker that died before it ever served)
        self._aligning: set[asyncio.Task] = set()  # held: the loop keeps only weak references to its tasks

    async def follow_health(self, admin_server) -> None:
        """Keeps the admin port's health at SERVING exactly while every worker serves, and kills a hung
        worker (``Worker.hung``): ``keep`` then starts it again."""
        serving = False
        while not self.stopping.is_set():
            states = await asyncio.gather(*(w.serving() for w in self.workers))
            if self.stopping.is_set():  # the pool is draining: its health already says so
                return
            for worker, state in zip(self.workers, states):
                worker.has_served |= state
                if worker.hung(self.hung_s):
                    log.error("worker %d (pid %d) has answered no health check for %.0f s: killing it, to start it "
                              "again", worker.index, worker.process.pid, time.monotonic() - worker.silent_since)
                    worker.silent_since = None
                    worker.signal(signal.SIGKILL)  # a stopped process takes no SIGTERM until it is continued
            if all(states) != serving:
                serving = all(states)
                log.info("pool %s: workers serving %s", "SERVING" if serving else "NOT_SERVING",
                         [w.index for w, s in zip(self.workers, states) if s])
                await admin_server.set_serving(serving)
            await asyncio.sleep(POLL_S)

    async def keep(self, worker: Worker) -> None:
        """Restarts ``worker`` whenever it exits, unless the pool is stopping or
        it never served (a worker that cannot start would not start next time either)."""
        while True:
            code = await worker.process.wait()
            if self.stopping.is_set():
                return
            worker.restarting = True
            if not worker.has_served:
                self.failure = f"worker {worker.index} exited with code {code} before it served; see its log above"
                self.stopping.set()
                return
            log.error("worker %d exited with code %s; starting it again in %.0f s", worker.index, code,
                      RESTART_DELAY_S)
            await asyncio.sleep(RESTART_DELAY_S)
            if self.stopping.is_set():
                return
            # On what its siblings serve: CURRENT may not be it (an admin's promotion does not write it).
            await worker.start(*await self.siblings_versions(worker))
            aligning = asyncio.get_running_loop().create_task(self.align(worker))
            self._aligning.add(aligning)
            aligning.add_done_callback(self._aligning.discard)

    async def siblings_versions(self, worker: Worker) -> tuple[int, int]:
        """(live version, rollback target) of the first of ``worker``'s siblings
        that answers (0: none, or it has none)."""
        for sibling in self.workers:
            if sibling is worker:
                continue
            try:
                theirs = await sibling.admin.GetStatus(pb.GetStatusRequest(), timeout=1.0)
            except grpc.RpcError:
                continue
            if theirs.live_version:
                rollback = [v.version for v in theirs.versions if v.state == versions_pb2.VERSION_STATE_ROLLBACK_TARGET]
                return theirs.live_version, (rollback[0] if rollback else 0)
        return 0, 0

    async def align(self, worker: Worker) -> None:
        """Brings a restarted worker to the live version of a sibling, where it
        started on another: no sibling answered when it was started, or one was
        promoted while it loaded; then applies the catalogue deltas the pool
        took while it restarted. Admin calls reach it again after that."""
        process = worker.process
        failed = False
        try:
            mine = await self._started(worker)
            # Not settled in time is a failure too: let in, it would take admin calls on other versions than its
            # siblings' and lose the catalogue deltas due to it.
            failed = not await self._align(worker, mine) if mine is not None else not self.stopping.is_set()
        finally:
            if worker.process is process and process.returncode is None:  # else its next start is aligned in turn
                if failed:  # it serves another version than its siblings: started again, on theirs (``keep``)
                    worker.signal(signal.SIGTERM)
                else:
                    worker.restarting = False
                    worker.catalogue_due.clear()

    async def _started(self, worker: Worker) -> pb.ServiceStatus | None:
        """Waits for ``worker``'s start-up loads to end; returns its status then (None: the pool stops, or
        ALIGN_TIMEOUT_S passed). They have ended when its admin plane answers with nothing loading and the
        version it was started on live; started on CURRENT, with one live version on two answers in a row:
        the rollback target's load makes a version live just before the live version's load begins.
        Whether it serves is not waited for: with no index holding the live version none of the pool serves
        (its health says so), and the admin calls that would move the pool to a version an index holds must
        reach this worker too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ALIGN_TIMEOUT_S
        settled_on: int | None = None  # the live version of the last answer with nothing loading
        while not self.stopping.is_set():
            try:
                mine = await worker.admin.GetStatus(pb.GetStatusRequest(), timeout=WORKER_STATUS_TIMEOUT_S)
            except grpc.RpcError:  # not started yet; an answer also leaves the channel connected for the pool
                mine = None
            if mine is None or any(v.state == versions_pb2.VERSION_STATE_LOADING for v in mine.versions):
                settled_on = None
            elif mine.live_version == (worker.pinned or settled_on):
                return mine
            else:
                settled_on = mine.live_version
            if loop.time() > deadline:
                log.error("worker %d did not load its versions within %.0f s of its start: starting it again on "
                          "its siblings' versions", worker.index, ALIGN_TIMEOUT_S)
                return None
            await asyncio.sleep(POLL_S)
        return None

    async def _align(self, worker: Worker, mine: pb.ServiceStatus) -> bool:
        """Whether ``worker`` took its siblings' live version and the catalogue deltas it missed."""
        try:
            target, _ = await self.siblings_versions(worker)
            if target and target != mine.live_version:
                log.info("worker %d serves version %d, its siblings %d: loading and promoting %d",
                         worker.index, mine.live_version, target, target)
                await worker.admin.LoadVersion(pb.LoadVersionRequest(version=target))
                await worker.admin.Promote(pb.PromoteRequest(version=target))
            for request in worker.catalogue_due:
                await worker.admin.ApplyCatalogue(request)
        except grpc.RpcError as e:
            log.error("worker %d could not be aligned with its siblings: %s; starting it again on their versions",
                      worker.index, _outcome_text(e))
            return False
        return True

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to every worker (each drains); SIGKILL to any still there after ``grace_s``."""
        self.stopping.set()
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        started = [w.process for w in self.workers if w.process is not None]
        try:
            async with asyncio.timeout(grace_s):  # not wait_for, which may swallow a cancellation (3.11)
                await asyncio.gather(*(p.wait() for p in started))
        except asyncio.TimeoutError:
            for worker in self.workers:
                worker.signal(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in started))


def run_workers(prog: str, module: str, argv: list[str], config: ServiceConfig, workers: int,
                warnings: Iterable[str] = (), hung_s: float = 0.0) -> None:
    """Runs ``prog`` (``python -m module argv``) as a supervisor of ``workers``
    worker processes until SIGINT/SIGTERM; exits non-zero if a worker could not start.
    ``warnings`` are logged once, for the whole pool, rather than by each worker;
    a worker silent for ``hung_s`` is killed and started again (``Worker.hung``)."""
    configure_logging(config.log_level, config.log_format)
    for warning in warnings:
        log.warning("%s", warning)
    try:
        failure = run_event_loop(_supervise(prog, module, argv, config, workers, hung_s))
    except CannotListen as e:
        raise SystemExit(f"{prog}: cannot start: {e}") from None
    if failure:
        raise SystemExit(f"{prog}: {failure}")


async def _supervise(prog: str, module: str, argv: list[str], config: ServiceConfig, count: int,
                     hung_s: float) -> str:
    reserved = reserve_port(config.host, config.port)
    port = reserved.getsockname()[1]
    sockets, lock = private_directory(prog)  # mode 0700: only this user reaches the private planes
    write_pool_secret(sockets)
    metrics_ports = free_ports(count) if config.metrics_port else [0] * count
    workers = []
    for i, metrics_port in enumerate(metrics_ports):
        prefix = os.path.join(sockets, f"worker-{i}")
        workers.append(Worker(i, worker_command(module, argv, port, prefix, metrics_port), prefix, metrics_port))
    pool = WorkerPool(workers, hung_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pool.stopping.set)
    admin_server = None
    tasks: list[asyncio.Task] = []
    try:
        for worker in workers:
            await worker.start()
        admin_server = await start_admin_server(PoolAdmin(workers), config.admin, config.tls.credentials())
        await admin_server.set_serving(False)
        if config.metrics_port:
            registry = prometheus_client.CollectorRegistry()
            registry.register(WorkerMetrics(workers))
            try:
                prometheus_client.start_http_server(config.metrics_port, config.metrics_host, registry=registry)
            except OSError as e:
                raise CannotListen(f"cannot serve /metrics on {config.metrics_host}:{config.metrics_port}: "
                                   f"{e.strerror}") from None
        tasks = [loop.create_task(pool.follow_health(admin_server)), *(loop.create_task(pool.keep(w))
                                                                      for w in workers)]
        log.info("%s: %d workers on %s:%d (admin %s:%d)", prog, count, config.host, port, config.admin.host,
                 admin_server.port)
        await pool.stopping.wait()
    finally:
        if admin_server is not None:  # before the workers drain, as a single process's health leaves SERVING
            await admin_server.set_serving(False)
        await pool.stop(config.drain_s + 10.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if admin_server is not None:
            await admin_server.stop(0)
        await asyncio.gather(*(w.close() for w in workers))
        shutil.rmtree(sockets, ignore_errors=True)
        os.close(lock)
        reserved.close()
    return pool.failure
