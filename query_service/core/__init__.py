"""The query paths, free of gRPC: Recommend, RecommendSimilar, BatchRecommend, RecordInteractions and Embed
(``recommender``), what they are asked and answer (``queries``), a micro-batch of misses (``misses``, over
``query_service.batching``), a request's time budget (``budget``), hits answered from a request's bytes
(``replays``) and a new version's cache warm-up (``warmup``)."""
