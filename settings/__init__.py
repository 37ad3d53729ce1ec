"""How a process is configured: typed configs built from flags and environment
variables (``flags``), and the environment TensorFlow needs before it loads
(``tf_env``). Shared by the trainer, both services and the tools."""
