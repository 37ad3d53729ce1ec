"""What both gRPC services share: domain errors and validation, the version
manager with its loader and sources, the admin operations, config, and the gRPC
layer (status mapping, health, reflection, the admin plane). gRPC is imported
by ``grpc_server``, ``admin_rpc``, ``observability`` (its server interceptor),
``tls`` (credentials and channels) and ``workers`` (the ``--workers``
supervisor), and through ``observability`` by ``config``; ``filter_protos``
imports the protos only. The rest, the cores' share (``filters`` and
``log_throttle`` among them), imports neither."""
