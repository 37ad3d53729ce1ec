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
import subprocess
import sys
import time
from typing import Mapping

from settings.ports import free_ports

TF_CONFIG = "TF_CONFIG"
# Job names MultiWorkerMirroredStrategy trains with; "chief" is an optional
# worker 0 that TFJob-style launchers name apart.
_TRAINING_JOBS = ("chief", "worker")


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


def launch(argv: list[str], workers: int, poll_s: float = 0.2) -> int:
    """Runs ``recsys-train argv`` as ``workers`` processes on loopback, each with
    its ``$TF_CONFIG``; returns 0 when every worker exited 0, else the lowest-indexed
    failure's status (128 + N for a worker ended by signal N, as a shell reports it).
    Each worker's exit status is printed to stdout after the chief's report.

    A worker that fails leaves the others waiting in a collective that will
    never complete, so the rest are terminated then (by their own pids)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "trainer.cli", *argv],
                              env={**os.environ, TF_CONFIG: tf_config(addresses, i)})
             for i in range(workers)]
    status = 0
    terminated: set[int] = set()
    try:
        while True:
            # Every worker is polled each round: any() would stop at the first one still
            # running, and a later worker's failure would go unseen while the chief waits for it.
            codes = [p.poll() for p in procs]
            if all(code is not None for code in codes) or any(codes):
                break
            time.sleep(poll_s)
    finally:
        for i, p in enumerate(procs):
            if p.poll() is None:
                p.terminate()
                terminated.add(i)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        print(f"recsys-train: worker {i} of {workers} ({addresses[i]}) exited {p.returncode}", flush=True)
        if i not in terminated:  # the signal this launcher sent is not the run's failure
            status = status or (p.returncode if p.returncode >= 0 else 128 - p.returncode)
    return status
