"""A service's model versions, in TensorFlow Serving's roles and free of gRPC: which versions to hold at start
(``sources``), verify, load and self-test off the request path (``loader``), the loaded versions and the live one
(``versions``), and the admin operations over them (``admin``)."""
