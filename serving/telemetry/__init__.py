"""What a serving process tells the outside: Prometheus metrics, request ids and JSON logs (``observability``),
OpenTelemetry traces (``tracing``), and recurring faults logged once a while (``log_throttle``)."""
