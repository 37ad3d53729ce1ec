"""The gRPC layer both services share, over cores that know nothing of gRPC: domain errors mapped to statuses,
health, reflection, start-up and graceful shutdown (``grpc_server``), the admin plane (``admin_rpc``), filters
and enum names to and from the protos (``filter_protos``, ``enum_names``), TLS on every hop (``tls``) and
``--workers N`` processes on one port (``workers``)."""
