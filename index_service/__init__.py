"""Index service: one index slot per process, serving ScaNN search over the
version it holds."""

import os

import settings.grpc_env  # noqa: F401  (before anything imports gRPC)

# numpy's only work here is the self-test's exact search, run by the loader at
# idle priority; OpenBLAS's own worker threads would run it at normal priority
# on every core, beside the processes serving traffic. One thread: the caller's.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
