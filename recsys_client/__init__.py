"""Command-line client of the retrieval services (recsys-client)."""
