"""What both gRPC services share: domain errors and validation, the version
manager with its loader and sources, the admin operations, config, and the gRPC
layer (status mapping, health, reflection, the admin plane). Only
``grpc_server`` and ``admin_rpc`` import gRPC."""
