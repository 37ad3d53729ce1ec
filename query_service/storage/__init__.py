"""What a query replica keeps beyond its versions: results, in process (``local_tier``) and in Redis
(``cache``; ``result``: a cached result and its encoding), customers' live interaction histories
(``live_history``), and the Redis connection both share with its outage backoff (``redis_link``)."""
