"""Child processes that end with the command that started them (``recsys-train --workers``'
workers, a ``--workers`` service pool's), even when it is SIGKILLed and runs no handler of its own."""

from __future__ import annotations

import ctypes
import os
from typing import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` for a child of this process: the kernel sends the child ``signum`` when this process
    dies, however it dies (SIGKILL, the OOM killer), so no child outlives it holding a port or going on with
    work nobody waits for. ``signum`` is what the child takes as a stop (its handler runs, as for a stop its
    parent passed on); a child whose parent died while it was being started exits before it runs at all."""
    parent = os.getpid()
    # Looked up here, in the parent: dlopen in the forked child of a threaded parent could wait on a lock
    # a thread of the parent held at the fork.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        if prctl(_PR_SET_PDEATHSIG, signum) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
        if os.getppid() != parent:  # it died before the line above: the kernel will send nothing
            os._exit(128 + signum)

    return arm
