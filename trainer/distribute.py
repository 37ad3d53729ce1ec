"""Multi-worker training on ``tf.distribute.MultiWorkerMirroredStrategy``.

Every worker runs the whole trainer; inside ``strategy.scope()`` the model's
variables are mirrored, ``model.fit`` splits each global batch of the same
shuffled stream between the workers (``AutoShardPolicy.DATA``: the data is
built from in-memory tensors, there are no files to shard) and sums their
gradients. The global batch stays ``--batch-size``, and each replica's
in-batch softmax scores its queries against every replica's candidates
(``CrossReplicaNegatives``), so a step computes the loss and gradient one
worker would on the same batch: N workers train the same model (faster only with
a machine or more cores per worker: two on a 2-core machine were ~3.6x slower
than one, docs/BENCHMARKS.md).

Per-epoch validation and early stopping run on every worker over the same
weights; the early-stopping decisions follow the chief's figures
(``chief_value``), so no worker can leave a collective the others wait in.
Only the chief computes the baselines, chooses the popularity prior against
their bars, evaluates and publishes: another worker takes the prior's weight
and validation lift from the chief (``chief_value``).
"""

from __future__ import annotations

import contextlib

import settings.tf_env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import tensorflow as tf

from trainer.launcher import Cluster
from trainer.model import TwoTowerModel

Strategy = tf.distribute.Strategy


def strategy_for(cluster: Cluster) -> Strategy | None:
    """MultiWorkerMirroredStrategy over ``$TF_CONFIG`` for a cluster of more than
    one worker; None (the default strategy) for one. Must run before any other
    TensorFlow op of the process: collectives are configured at start-up."""
    if cluster.workers == 1:
        return None
    return tf.distribute.MultiWorkerMirroredStrategy()


def scope(strategy: Strategy | None) -> contextlib.AbstractContextManager:
    """``strategy.scope()``, or nothing for the default strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def replicas() -> int:
    """Replicas training in sync under the current strategy (1 outside any scope)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def is_chief(strategy: Strategy | None) -> bool:
    """Whether this process evaluates and publishes: the chief of a multi-worker
    run (the "chief" task, else worker 0), or the only process."""
    return strategy is None or strategy.extended.should_checkpoint


def chief_value(value: float) -> float:
    """The chief's ``value`` on every worker (``value`` itself with one replica).

    Each worker evaluates the same weights, so the figures should agree; taking
    the chief's makes sure early stopping ends every worker at the same epoch
    even if a float differs in its last bit."""
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return value
    # Each of the chief's local replicas (its devices) holds a share: the sum is the value.
    share = value / len(strategy.extended.worker_devices) if is_chief(strategy) else 0.0
    mine = tf.constant(share, tf.float64)
    total = strategy.run(_sum_over_replicas, args=(mine,))
    return float(strategy.experimental_local_results(total)[0])


@tf.function
def _sum_over_replicas(x: tf.Tensor) -> tf.Tensor:
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, _on_replica(x))


def _on_replica(x: tf.Tensor) -> tf.Tensor:
    """``x`` as an op of the current replica: a collective's destination is its
    input's device, and in a traced step not every tensor has one (arguments,
    iterator outputs: "destinations can not be empty")."""
    return tf.identity(x)


def _own_first(context: tf.distribute.ReplicaContext, x: tf.Tensor) -> tf.Tensor:
    """Every replica's ``x`` concatenated on axis 0, this replica's rows first
    (Retrieval's labels pair query i with candidate i). Replicas may hold
    different row counts (an epoch's last batch)."""
    x = _on_replica(x)
    gathered = context.all_gather(x, axis=0)
    rows = context.all_gather(tf.shape(x, out_type=tf.int64)[:1], axis=0)
    return tf.roll(gathered, -tf.reduce_sum(rows[:context.replica_id_in_sync_group]), axis=0)


class CrossReplicaNegatives(tf.keras.layers.Layer):
    """Wraps a ``tfrs.tasks.Retrieval``: each replica's queries are scored
    against the candidates of every replica's share of the global batch, as
    one worker's in-batch softmax would score them over the whole batch.

    The candidates' sampling probabilities and ids (logQ correction,
    accidental hits) travel with them; ``all_gather`` is differentiable, so
    each replica's candidate tower gets the gradient of every replica's loss."""

    def __init__(self, task: tf.keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.task = task

    def call(self, query_embeddings: tf.Tensor, candidate_embeddings: tf.Tensor,
             candidate_sampling_probability: tf.Tensor | None = None, candidate_ids: tf.Tensor | None = None,
             **kwargs) -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            gather = lambda x: x  # noqa: E731
        else:
            gather = lambda x: None if x is None else _own_first(context, x)  # noqa: E731
        return self.task(query_embeddings, gather(candidate_embeddings),
                         candidate_sampling_probability=gather(candidate_sampling_probability),
                         candidate_ids=gather(candidate_ids), **kwargs)


class ReplicatedTwoTowerModel(TwoTowerModel):
    """``TwoTowerModel`` for more than one replica: in-batch negatives from the
    whole global batch (``CrossReplicaNegatives``), and each replica adds
    1/replicas of the regularization penalty, since the strategy sums the
    replicas' gradients and each replica's ``self.losses`` holds all of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = CrossReplicaNegatives(self.task)

    def train_step(self, inputs):
        """``tfrs.Model.train_step`` with the penalty shared among the replicas."""
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.add_n([tf.reduce_sum(x) for x in self.losses] or [tf.constant(0.0)])
            total_loss = loss + regularization_loss / tf.distribute.get_replica_context().num_replicas_in_sync
        gradients = tape.gradient(total_loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return {"loss": loss, "regularization_loss": regularization_loss, "total_loss": total_loss}


def check_exportable(model: tf.keras.Model) -> None:
    """Raises unless every variable of ``model`` can be read by the chief alone.

    Only the chief exports; reading an ON_READ (sync-on-read) variable would be
    an all-reduce the other workers never join, so none may be exported."""
    on_read = [v.name for v in model.variables if v.synchronization == tf.VariableSynchronization.ON_READ]
    if on_read:
        raise ValueError(f"multi-worker export needs mirrored variables; sync-on-read: {on_read[:5]}")

