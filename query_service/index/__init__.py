"""The index service as the query replica reaches it: endpoints learned from their status streams
(``index_client``), searches routed by version, shard and catalogue generation (``routing``), a sharded version's
answers merged into one index's (``merge``), and what a search asks and answers, free of gRPC (``searches``)."""
