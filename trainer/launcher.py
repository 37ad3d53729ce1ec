"""Where a ``recsys-train`` process stands in a multi-worker run, and the local
launcher that starts one.

A multi-worker run is N copies of the same ``recsys-train`` command, each told
its place by ``$TF_CONFIG`` (TensorFlow's format: the cluster's worker addresses
and this task's index). On Kubernetes each pod of the training Job sets it;
on one machine ``recsys-train --workers N`` (``launch``) starts the N copies on
free loopback ports, the local/dev way. TensorFlow-free, so a bad cluster is
reported before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Mapping

from settings.ports import free_ports
from settings.processes import die_with_parent

TF_CONFIG = "TF_CONFIG"
# Job names MultiWorkerMirroredStrategy trains with; "chief" is an optional
# worker 0 that TFJob-style launchers name apart.
_TRAINING_JOBS = ("chief", "worker")
# The signals that stop a run (Ctrl-C, and what Kubernetes or a shell's kill sends), in the launcher and in each
# worker: neither publishes after one.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a training run: ``index`` of ``workers`` (0 is the chief)."""

    workers: int = 1
    index: int = 0

    @property
    def is_chief(self) -> bool:
        """The chief evaluates and publishes; the others only train."""
        return self.index == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Cluster":
        """The cluster ``$TF_CONFIG`` describes (one worker when unset).

        Raises ValueError when it is not JSON of TensorFlow's shape or names
        jobs that do not train (a parameter server, an evaluator)."""
        raw = environ.get(TF_CONFIG, "").strip()
        if not raw:
            return cls()
        try:
            spec = json.loads(raw)
            jobs, task = spec["cluster"], spec["task"]
            task_type, task_index = task["type"], int(task["index"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"${TF_CONFIG} is not a TensorFlow cluster spec ({e!r}): expected "
                             '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}')
        if not isinstance(jobs, dict) or not all(isinstance(jobs.get(job, []), list) for job in _TRAINING_JOBS):
            raise ValueError(f"${TF_CONFIG}'s cluster must map each job to a list of addresses: expected "
                             '{"cluster": {"worker": ["host:port", ...]}, ...}')
        other = sorted(set(jobs) - set(_TRAINING_JOBS))
        if other or task_type not in _TRAINING_JOBS:
            raise ValueError(f"${TF_CONFIG} names jobs {other or [task_type]}: recsys-train runs "
                             f"MultiWorkerMirroredStrategy, whose tasks are only {' and '.join(_TRAINING_JOBS)}")
        chiefs = len(jobs.get("chief", []))
        workers = chiefs + len(jobs.get("worker", []))
        index = task_index if task_type == "chief" else chiefs + task_index
        if not 0 <= index < workers:
            raise ValueError(f"${TF_CONFIG}: task {task_type}:{task_index} is not in the cluster")
        return cls(workers, index)


def tf_config(addresses: list[str], index: int) -> str:
    """``$TF_CONFIG`` for worker ``index`` of a cluster of ``addresses``."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def launch(argv: list[str], workers: int, poll_s: float = 0.2, grace_s: float = 10.0) -> int:
    """Runs ``recsys-train argv`` as ``workers`` processes on loopback, each with
    its ``$TF_CONFIG``; returns 0 when every worker exited 0, else the lowest-indexed
    failure's status (128 + N for a worker ended by signal N, as a shell reports it).
    Each worker's exit status is printed to stdout after the chief's report.

    A worker that fails leaves the others waiting in a collective that will
    never complete, so the rest are stopped then (by their own pids): SIGTERM,
    then SIGKILL after ``grace_s``. SIGINT or SIGTERM to this launcher is passed
    on to every worker the same way (each stops without publishing), and the
    launcher returns 128 + N once every worker has ended. A launcher that is
    killed outright stops its workers too: each gets SIGTERM from the kernel,
    and one waiting in a collective, which that stop cannot reach, ends itself
    ``cli.STOP_GRACE_S`` later (``interrupts.StopReport``)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    received: list[int] = []
    previous = {name: signal.signal(name, lambda signum, frame: received.append(signum)) for name in STOP_SIGNALS}
    # A launcher killed outright (SIGKILL, the OOM killer) passes nothing on: the kernel then sends each worker
    # SIGTERM, a stop like the one this launcher forwards, so none trains on or publishes for a run that is over.
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.cli", *argv],
                              env={**os.environ, TF_CONFIG: tf_config(addresses, i)},
                              preexec_fn=die_with_parent(signal.SIGTERM))
             for i in range(workers)]
    status = 0
    try:
        while not received:
            # Every worker is polled each round: any() would stop at the first one still
            # running, and a later worker's failure would go unseen while the chief waits for it.
            codes = [p.poll() for p in procs]
            if all(code is not None for code in codes) or any(codes):
                break
            time.sleep(poll_s)
    finally:
        stopped = _stop(procs, received[0] if received else signal.SIGTERM, grace_s)
        for name, handler in previous.items():
            signal.signal(name, handler)
    for i, p in enumerate(procs):
        print(f"recsys-train: worker {i} of {workers} ({addresses[i]}) exited {p.returncode}", flush=True)
        if i not in stopped:  # the signal this launcher sent is not the run's failure
            status = status or (p.returncode if p.returncode >= 0 else 128 - p.returncode)
    if received:
        print(f"recsys-train: stopped by {signal.Signals(received[0]).name}: every worker has ended", flush=True)
        return 128 + received[0]
    return status


def _stop(procs: list[subprocess.Popen], signum: int, grace_s: float) -> set[int]:
    """Sends ``signum`` to each process still running, SIGKILL to any left after ``grace_s`` (one stuck in a
    collective whose peer is gone never gets back to its signal handler); waits for all. Returns the indexes of
    those signalled."""
    stopped = {i for i, p in enumerate(procs) if p.poll() is None}
    for i in stopped:
        procs[i].send_signal(signum)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return stopped
