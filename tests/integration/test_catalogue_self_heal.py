"""Real processes catch up by themselves with catalogue deltas a ``recsys-catalogue`` run did not bring them: the
query replica follows its index slot's generation as the slot's status stream reports it, and the slot applies a
delta left published but applied nowhere (the run killed after writing it). Before, the replica served deleted
candidates, fresh and cached, until someone ran ``recsys-catalogue --catch-up``."""

from __future__ import annotations

import os
import shutil
import time

import grpc

from model_registry import Registry
from model_registry.deltas import Delta, catalogue_dir, write_delta
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.integration.conftest import MODEL, index_slot, query_replica
from tests.processes import start_all, wait_until


def test_replicas_a_catalogue_run_missed_catch_up_by_themselves(trained_registry, redis_server, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(trained_registry, root)  # its own log: the session's registry stays without deltas
    registry = Registry(root, MODEL)
    dim = registry.manifest(1).embedding_dim
    index = index_slot(root, "blue", tmp_path / "index.log")
    query = query_replica(root, [index], tmp_path / "query.log", "--redis-url", redis_server.url)
    start_all(index, query)
    try:
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)

            def answer(customer: str) -> pb.RecommendResponse:
                return stub.Recommend(pb.RecommendRequest(customer_id=customer, k=5), timeout=10)

            def caught_up(generation: int, gone: str) -> bool:
                fallback, known = answer("nobody"), answer("c000001")
                return all(a.catalogue_generation == generation and gone not in {c.candidate_id for c in a.candidates}
                           for a in (fallback, known))

            popular = answer("nobody").candidates[0].candidate_id  # the popularity fallback's first
            # recsys-catalogue --delete ... --index-admin <the slot> without --query-admin.
            write_delta(registry.model_dir, 1, Delta.make(deleted=[popular], dim=dim))
            with grpc.insecure_channel(index.admin_address) as admin:
                admin_pb2_grpc.AdminServiceStub(admin).ApplyCatalogue(
                    admin_pb2.ApplyCatalogueRequest(version=1, generation=1), timeout=30)
            started = time.monotonic()
            wait_until(lambda: caught_up(1, popular), 5, "the query replica to follow its slot to generation 1")
            followed_s = time.monotonic() - started
            first, again = answer("c000001"), answer("c000001")
            assert (again.catalogue_generation, again.cache_hit) == (1, True), first

            # A run killed after writing its delta, a minute ago: applied nowhere.
            top = answer("c000001").candidates[0].candidate_id
            write_delta(registry.model_dir, 1, Delta.make(deleted=[top], dim=dim))
            os.utime(catalogue_dir(registry.model_dir, 1) / "00000002.json", (time.time() - 60, time.time() - 60))
            started = time.monotonic()
            wait_until(lambda: caught_up(2, top), 10, "the slot, then the query replica, to catch up to generation 2")
            healed_s = time.monotonic() - started
        print(f"query replica followed its slot in {followed_s:.2f}s; a delta applied nowhere healed in "
              f"{healed_s:.2f}s")
    finally:
        query.stop()
        index.stop()
