"""The environment gRPC needs before it loads; import this module before ``grpc``.

gRPC's fork support (its core's default) restarts its poller in a forked child; a
child forked with ``preexec_fn`` (``serving.rpc.workers`` starts each worker so, to die
with its supervisor) closes its descriptors before ``exec`` and the poller aborts it:
grpc/grpc#43055, open for grpcio >= 1.81. Measured here: 8 of 300 such children of a
process serving gRPC died of SIGABRT, 0 of 300 with fork support off. The services
never fork without ``exec``, so they need none of it. Read at import: setting it
later (after ``import grpc``) does nothing (9 of 300 still died)."""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
