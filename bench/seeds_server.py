"""The seed notebooks' serving path, behind the same gRPC API: the TFRS ScaNN
layer with its default settings, exported together with the query tower as one
SavedModel, loaded and called once per request in the server process.

    python bench/seeds_server.py --build VERSION_DIR --out DIR   # export
    python bench/seeds_server.py --model DIR --port P            # serve
"""

from __future__ import annotations

import argparse
from pathlib import Path

import settings.tf_env  # noqa: F401  (before TensorFlow)

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from model_registry import manifest as files
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving.rpc.grpc_server import ServiceSpec, run_event_loop, serve_until_signalled, start_server

K = 10


class SeedsModel(tf.Module):
    """customer_id -> (scores, ids) through the query tower and a default ScaNN layer."""

    def __init__(self, tower, scann: tfrs.layers.factorized_top_k.ScaNN):
        super().__init__()
        self.tower = tower
        self.scann = scann

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="customer_id")])
    def serve(self, customer_id):
        embedding = self.tower.signatures["serving_default"](customer_id=customer_id)["embedding"]
        scores, ids = self.scann(embedding, k=K)
        return {"scores": scores, "ids": ids}


def build(version_dir: Path, out: Path) -> None:
    """Exports a version's tower + a TFRS ScaNN layer (defaults) over its candidates."""
    tower = tf.saved_model.load(str(version_dir / files.QUERY_TOWER_DIR))
    ids = np.load(version_dir / files.CANDIDATE_IDS_FILE)
    embeddings = np.load(version_dir / files.CANDIDATE_EMBEDDINGS_FILE)
    scann = tfrs.layers.factorized_top_k.ScaNN(k=K)
    scann.index(tf.constant(embeddings), tf.constant(ids))
    module = SeedsModel(tower, scann)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve},
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))


class SeedsServicer(pb_grpc.QueryServiceServicer):
    def __init__(self, model_dir: Path):
        self.signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    async def Recommend(self, request, context):
        out = self.signature(customer_id=tf.constant([request.customer_id]))
        ids = [i.decode() for i in out["ids"].numpy()[0][:request.k]]
        scores = out["scores"].numpy()[0][:request.k].tolist()
        return pb.RecommendResponse(
            candidates=[pb.ScoredCandidate(candidate_id=i, score=s) for i, s in zip(ids, scores)],
            model_version=1, model_name="seeds", source=pb.RESULT_SOURCE_MODEL)


async def serve(model_dir: Path, port: int) -> None:
    servicer = SeedsServicer(model_dir)
    running = await start_server([ServiceSpec(pb_grpc.add_QueryServiceServicer_to_server, servicer,
                                              "recsys.v1.QueryService")], "127.0.0.1", port)
    await running.set_serving(True)
    await serve_until_signalled(running.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, help="version directory to export from")
    parser.add_argument("--out", type=Path, help="where --build writes the SavedModel")
    parser.add_argument("--model", type=Path, help="SavedModel to serve")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.build:
        build(args.build, args.out)
    else:
        run_event_loop(serve(args.model, args.port))


if __name__ == "__main__":
    main()
