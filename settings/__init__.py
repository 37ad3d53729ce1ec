"""How a process is configured: typed configs built from flags and environment
variables (``flags``), the environment TensorFlow needs before it loads
(``tf_env``), the one gRPC needs (``grpc_env``), free loopback ports for the workers a command starts
(``ports``), how those workers die with the process that started them (``processes``) and where a signal's stop
is raised while TensorFlow runs (``stops``). Shared by the trainer, both services and the tools."""
