"""What both gRPC services share: domain errors, request validation, the set of
loaded model versions, and the gRPC server bootstrap (status mapping, health,
reflection). Everything but ``grpc_server`` is free of gRPC."""
