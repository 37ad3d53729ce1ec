"""What both gRPC services share. ``lifecycle``: a service's model versions in TensorFlow Serving's roles
(source, loader, manager) and the admin operations over them; ``errors``, ``validation`` and ``filters``: what the
cores check and raise; ``config``: the flags both servers share; ``rpc``: the gRPC layer (status mapping, health,
reflection, the admin plane, TLS, ``--workers``); ``telemetry``: metrics, request ids, logs and traces. gRPC is
imported by ``rpc`` (``filter_protos`` imports the protos only, ``enum_names`` neither), by
``telemetry.observability`` (its server interceptor) and, through those, by ``config``; ``lifecycle``, ``errors``,
``validation``, ``filters`` and the rest of ``telemetry`` import neither gRPC nor the protos at import time."""
