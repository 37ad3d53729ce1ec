"""What undoes a recsys-publish run: each step's reversing call (``Undo``), registered before the step's own
call, and ``run_undo``, which makes them in reverse order while each replica still holds what the run left there
(an index slot busy with the run's warm-up searches is asked again until it is idle)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from protos.recsys.v1 import admin_pb2 as pb
from recsys_client.fleet import LOADING, Fleet, FleetConfig, PublishError, Replica, slot_busy
from serving.rpc.admin_rpc import state_name

log = logging.getLogger("recsys-publish")
# How long an undo's reload of a slot waits for the slot to go idle, and how often it asks. A run that loaded the
# query replicas' towers made searches of the slot's new version (their cache warm-up), and a slot refuses a load
# for its --busy-window-s (3 s) after a search, though no replica routes there once the towers are unloaded.
UNDO_IDLE_WAIT_S = 30.0
UNDO_IDLE_POLL_S = 0.25
# How long an undo waits for a load still running on the replica (the step's call timed out on the client, not on
# the server) before it reads what the replica holds: read during the load, the slot still named its old version,
# the undo left it "as it is", and the load then replaced the rollback target (a rollout run with --timeout-s 0.01).
UNDO_LOAD_WAIT_S = 600.0


@dataclass
class Undo:
    """A call that reverses one step of a run, registered before the step's own call (a call cut off by its
    deadline or a signal may still take effect); made only while ``holds`` says the replica still holds what
    the step left there, so it never reverses what another hand did since."""

    replica: Replica
    method: str
    request: object
    holds: Callable[[pb.ServiceStatus], bool]
    done: str  # logged once the call is made
    # The version the step's own call loads, which may still be loading after that call timed out on the client:
    # the undo waits for that load to end before it reads what the replica holds (0: nothing to wait for).
    settles: int = 0


def run_undo(fleet: Fleet, steps: list[Undo]) -> None:
    """Runs undo calls in reverse order, logging (not raising) failures."""
    for step in reversed(steps):
        try:
            _undo_step(fleet, step)
        except PublishError as e:
            log.warning("could not undo on %s replica %s: %s", step.replica.role, step.replica.address, e)


def _undo_step(fleet: Fleet, step: Undo) -> None:
    """Makes ``step``'s call while its replica holds what the run left there; a slot that refuses it because it
    answered searches is asked again until it is idle (``UNDO_IDLE_WAIT_S``)."""
    replica, give_up_at, waiting = step.replica, time.monotonic() + UNDO_IDLE_WAIT_S, False
    status = _settled(fleet, replica, step.settles)
    while True:
        if not step.holds(status):
            log.warning("left %s replica %s as it is: it no longer holds what this run put there (%s)",
                        replica.role, replica.address, _held(status))
            return
        try:
            fleet.call(replica, step.method, step.request, _deadline(fleet))
        except PublishError as e:
            if not slot_busy(e) or time.monotonic() >= give_up_at:
                raise
            if not waiting:
                log.info("index replica %s answered searches (this run's cache warm-up): waiting up to %g s for it "
                         "to go idle to undo the load", replica.address, UNDO_IDLE_WAIT_S)
                waiting = True
            time.sleep(UNDO_IDLE_POLL_S)
            status = _status(fleet, replica)
            continue
        log.info("%s", step.done)
        return


def _deadline(fleet: Fleet) -> float:
    """An undo's calls' deadline, at least the default's: the call it undoes may have failed on a short
    --timeout-s, and its undo must not."""
    return max(fleet.timeout_s, FleetConfig.timeout_s)


def _status(fleet: Fleet, replica: Replica) -> pb.ServiceStatus:
    return fleet.call(replica, "GetStatus", pb.GetStatusRequest(), _deadline(fleet))


def _settled(fleet: Fleet, replica: Replica, version: int) -> pb.ServiceStatus:
    """``replica``'s status once it is not loading ``version`` (``UNDO_LOAD_WAIT_S`` at most): the load the run's
    call started may still be running after the call timed out."""
    give_up_at, said = time.monotonic() + UNDO_LOAD_WAIT_S, False
    while True:
        status = _status(fleet, replica)
        if not version or not any(v.version == version and v.state == LOADING for v in status.versions):
            return status
        if time.monotonic() >= give_up_at:
            log.warning("%s replica %s still loads version %d after %g s: undoing from what it holds now",
                        replica.role, replica.address, version, UNDO_LOAD_WAIT_S)
            return status
        if not said:
            log.info("%s replica %s is still loading version %d: waiting up to %g s for it to finish before "
                     "undoing", replica.role, replica.address, version, UNDO_LOAD_WAIT_S)
            said = True
        time.sleep(UNDO_IDLE_POLL_S)


def _held(status: pb.ServiceStatus) -> str:
    """What a replica's status says it holds, with state names (for logs)."""
    return ", ".join(f"version {v.version} {state_name(v.state)}"
                     for v in status.versions) or "nothing"
