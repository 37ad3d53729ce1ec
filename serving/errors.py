"""Domain errors of the serving core. Each names the gRPC status it maps to,
so one place (``grpc_server.map_errors``) turns them into statuses while the
core stays free of gRPC. Messages say what was wrong and what to do."""


class ServingError(Exception):
    """Base class; ``code`` is the name of a ``grpc.StatusCode`` member."""

    code = "INTERNAL"


class InvalidArgument(ServingError):
    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    code = "NOT_FOUND"


class FailedPrecondition(ServingError):
    code = "FAILED_PRECONDITION"


class Unavailable(ServingError):
    code = "UNAVAILABLE"


class ResourceExhausted(ServingError):
    """Load shed: the replica is at a configured bound, and another replica or a retry may serve; or an index
    slot ran out of memory loading a version (it loads back what it held where it can, and the message says
    whether it did: a retry fails the same way)."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServingError):
    code = "DEADLINE_EXCEEDED"
