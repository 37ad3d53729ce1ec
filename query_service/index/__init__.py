"""The index service as the query replica reaches it: endpoints learned from their status streams
(``index_client``), searches routed by version, shard and catalogue generation and merged across shards
(``routing``), and what a search asks and answers, free of gRPC (``searches``)."""
