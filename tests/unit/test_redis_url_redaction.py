"""A Redis password given in ``--redis-url`` (README: ``redis://user:password@host:port/db``, the cluster form
``redis+cluster://user:password@h1:p1,h2:p2``) never reaches a log line or an error message: the URL is shown
with its password as ``***``, its host kept so an operator still sees where the cache is."""

from __future__ import annotations

import asyncio
import logging

import pytest

from model_registry import Registry
from query_service.storage.cache import CacheConfig, redacted_url
from settings.flags import ConfigError
from tests.processes import free_port
from tests.unit import tiny_versions as tiny

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize("url, shown", [
    (f"redis://app:{PASSWORD}@cache.internal:6379/0", "redis://app:***@cache.internal:6379/0"),
    (f"redis://:{PASSWORD}@cache.internal:6379", "redis://:***@cache.internal:6379"),
    (f"rediss://app:{PASSWORD}@cache.internal:6380/1", "rediss://app:***@cache.internal:6380/1"),
    (f"redis+cluster://app:{PASSWORD}@h1:7000,h2:7001", "redis+cluster://app:***@h1:7000,h2:7001"),
    (f"redis://app:p@ss{PASSWORD}@cache.internal:6379/0", "redis://app:***@cache.internal:6379/0"),
    (f"unix:///run/redis.sock?db=0&password={PASSWORD}", "unix:///run/redis.sock?db=0&password=***"),
    (f"redis://cache.internal:6379/0?password={PASSWORD}", "redis://cache.internal:6379/0?password=***"),
    # Mistyped: a wrong scheme, or none.
    (f"reddis://app:{PASSWORD}@cache.internal:6379/0", "reddis://app:***@cache.internal:6379/0"),
    (f"app:{PASSWORD}@cache.internal:6379", "app:***@cache.internal:6379"),
    (f"redis:/app:{PASSWORD}@cache.internal:6379", "redis:/app:***@cache.internal:6379"),
    # Nothing to hide.
    ("redis://cache.internal:6379/0", "redis://cache.internal:6379/0"),
    ("redis://app@cache.internal:6379/0", "redis://app@cache.internal:6379/0"),
    ("redis+cluster://h1:7000,h2:7001", "redis+cluster://h1:7000,h2:7001"),
    ("", ""),
])
def test_redacted_url_hides_the_password_and_keeps_the_host(url, shown):
    assert redacted_url(url) == shown


def test_a_mistyped_url_is_refused_without_its_password():
    with pytest.raises(ConfigError) as refused:
        CacheConfig(f"reddis://app:{PASSWORD}@cache.internal:6379/0")
    assert PASSWORD not in str(refused.value)
    assert "cache.internal:6379" in str(refused.value)


def test_the_start_line_shows_the_redis_url_without_its_password(tmp_path, caplog):
    from query_service.server import QueryServiceConfig, build_parser, create_server
    from settings.flags import parse

    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    registry.set_current(1)
    # Nothing listens there: the cache degrades to misses, the start line is written all the same.
    url = f"redis://app:{PASSWORD}@127.0.0.1:{free_port()}/0"
    config = parse(build_parser(), QueryServiceConfig, [
        "--registry", str(tmp_path), "--model", tiny.MODEL, "--port", "0", "--admin-port", "0",
        "--index-address", f"127.0.0.1:{free_port()}", "--redis-url", url, "--warmup-requests", "0",
        "--tf-threads", "0"])  # TensorFlow's runtime is up already (the version was written here)

    async def start_and_stop() -> None:
        service, recommender, router = await create_server(config)
        await service.stop(0)
        await recommender.close()
        await router.close()

    with caplog.at_level(logging.INFO, logger="query_service.server"):
        asyncio.run(start_and_stop())
    start = [r.getMessage() for r in caplog.records if r.getMessage().startswith("query service on")]
    assert len(start) == 1
    assert PASSWORD not in caplog.text
    assert "cache redis://app:***@127.0.0.1:" in start[0]
