"""Trainer: data loaders, split, evaluation, index builder, and one real
train -> publish -> reload round trip (real TensorFlow and ScaNN, no mocks)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import ML100K_DIR
from trainer.data import Interactions
from trainer.data.movielens import load_movielens_100k
from trainer.data.split import random_split
from trainer.data.synthetic import synthetic
from trainer.evaluation import baselines, metrics, report

needs_ml100k = pytest.mark.skipif(not (ML100K_DIR / "u.data").is_file(), reason=f"ml-100k not at {ML100K_DIR}")


# ---------------------------------------------------------------- data


@needs_ml100k
def test_movielens_counts():
    d = load_movielens_100k(ML100K_DIR)
    assert len(d) == 100_000
    assert d.num_customers == 943
    assert len(np.unique(d.candidate_ids)) == 1682 and len(d.catalog) == 1682
    assert d.customer_ids.dtype.kind == "U" and d.timestamps.dtype == np.int64
    assert d.candidate_features["title"][d.candidate_feature_rows(np.array(["1"]))[0]] == "Toy Story (1995)"
    # Columnar feature tables aligned with sorted id arrays.
    assert len(d.customer_feature_ids) == 943 and set(d.customer_features) == {"age", "gender", "occupation", "zip"}
    row = d.customer_feature_rows(np.array(["1", "nope"]))
    assert row[1] == -1 and d.customer_features["age"][row[0]] == 24 and d.customer_features["gender"][row[0]] == "M"
    assert d.customer_features["age"].dtype == np.float32
    f = d.candidate_features
    j = d.candidate_feature_rows(np.array(["1", "2", "267"]))
    assert list(f["title"][j[:2]]) == ["Toy Story (1995)", "GoldenEye (1995)"]
    assert f["genres"][j[0]] == "Animation|Children's|Comedy" and f["genres"][j[1]] == "Action|Adventure|Thriller"
    assert f["release_year"][j[0]] == 1995 and np.isnan(f["release_year"][j[2]])
    assert all(len(v) == len(d.catalog) for v in f.values())


def test_movielens_bad_dirs(tmp_path):
    with pytest.raises(ValueError, match="u.data not found in .*--data-dir"):
        load_movielens_100k(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        load_movielens_100k(tmp_path / "nope")


def test_synthetic_shape_and_planted_structure():
    d, truth = synthetic(500, 200, 20_000, num_clusters=10, seed=7, return_truth=True)
    assert len(d) == 20_000 and len(d.catalog) == 200
    assert d.customer_ids[0].startswith("c") and d.candidate_ids[0].startswith("i")
    assert len(d.customer_ids[0]) == 7 and len(d.candidate_ids[0]) == 7  # "c000123"
    cust = np.char.lstrip(d.customer_ids, "c").astype(int)
    cand = np.char.lstrip(d.candidate_ids, "i").astype(int)
    same = truth.customer_cluster[cust] == truth.candidate_cluster[cand]
    # Planted picks always come from the customer's cluster; global picks do 1/10 of the time.
    assert same[truth.from_own_cluster].all()
    assert 0.78 < same.mean() < 0.88
    # Zipf skew: the top 10% of candidates take far more than 10% of interactions.
    counts = np.sort(np.bincount(cand, minlength=200))[::-1]
    assert counts[:20].sum() > 0.3 * len(d)
    # Same seed, same data.
    again = synthetic(500, 200, 20_000, num_clusters=10, seed=7)
    assert np.array_equal(again.customer_ids, d.customer_ids)


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_clusters"):
        synthetic(10, 5, 100, num_clusters=6)
    with pytest.raises(ValueError, match="positive"):
        synthetic(0, 5, 100, num_clusters=1)


# ---------------------------------------------------------------- split


def test_split_is_seeded_and_disjoint():
    d = synthetic(100, 50, 1000, num_clusters=5, seed=1)
    tr1, te1 = random_split(d, 0.2, seed=42)
    tr2, te2 = random_split(d, 0.2, seed=42)
    tr3, _ = random_split(d, 0.2, seed=43)
    assert len(te1) == 200 and len(tr1) == 800
    assert np.array_equal(te1.customer_ids, te2.customer_ids) and np.array_equal(te1.timestamps, te2.timestamps)
    assert not np.array_equal(tr1.candidate_ids, tr3.candidate_ids)
    with pytest.raises(ValueError):
        random_split(d, 1.5)


# ---------------------------------------------------------------- evaluation


def _tiny():
    catalog = np.array(["a", "b", "c", "d"])
    train = Interactions(np.array(["u1", "u2", "u2"]), np.array(["a", "b", "b"]), np.zeros(3, np.int64), catalog)
    test = Interactions(np.array(["u1", "u2"]), np.array(["c", "a"]), np.zeros(2, np.int64), catalog)
    return train, test, catalog


def test_hit_rates_on_hand_made_example():
    train, test, catalog = _tiny()
    es = metrics.prepare(train, test, catalog)
    assert list(es.customers) == ["u1", "u2"]
    # u1 scores a=3 b=2 c=1 d=0, holds out c (rank 2; rank 1 once its seen "a" is masked).
    # u2 scores a=0 b=c=d=1, holds out a (rank 3; rank 2 once its seen "b" is masked).
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    got = metrics.hit_rates(metrics.embedding_scores(q, c), es, ks=(1, 2, 3))
    assert got == {"hit_rate@1": 0.0, "hit_rate@2": 0.0, "hit_rate@3": 0.5,
                   "hit_rate_excluding_seen@1": 0.0, "hit_rate_excluding_seen@2": 0.5,
                   "hit_rate_excluding_seen@3": 1.0}


def test_excluding_seen_is_a_rate_over_the_items_new_to_the_customer():
    """u1 holds out "a" again (a repeat: it is among u1's training items) and "c"; u2 holds out "a". Masked against
    the new items alone, u1's repeat ranked first for any model that scores a customer's own items high: "excluding
    seen" @1 read 2/3 here, where one of the two new items is a hit."""
    catalog = np.array(["a", "b", "c", "d"])
    train = Interactions(np.array(["u1", "u2"]), np.array(["a", "b"]), np.zeros(2, np.int64), catalog)
    test = Interactions(np.array(["u1", "u1", "u2"]), np.array(["a", "c", "a"]), np.zeros(3, np.int64), catalog)
    es = metrics.prepare(train, test, catalog)
    assert es.repeats.tolist() == [True, False, False]
    # u1 scores a=3 b=2 c=1 d=0; u2 a=0 b=c=d=1.
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    got = metrics.hit_rates(metrics.embedding_scores(q, c), es, ks=(1, 2))
    assert got["hit_rate@1"] == 1 / 3  # u1's repeat "a" is its top item over all candidates
    assert got["hit_rate_excluding_seen@1"] == 0.0  # u1: c ranks 2nd of b, c, d; u2: a ranks 3rd of a, c, d
    assert got["hit_rate_excluding_seen@2"] == 0.5


def test_a_customer_without_training_items_is_scored_by_popularity_whatever_the_system():
    """u3 has no training items: the query service answers it with the popular list, and every system is scored
    so. EASE and the other item-based baselines scored it all zeros before, so their ranking was catalogue order."""
    catalog = np.array(["a", "b", "c", "d"])
    train = Interactions(np.array(["u1", "u2", "u2"]), np.array(["a", "d", "d"]), np.zeros(3, np.int64), catalog)
    test = Interactions(np.array(["u3"]), np.array(["d"]), np.zeros(1, np.int64), catalog)
    es = metrics.prepare(train, test, catalog)
    zeros = metrics.hit_rates(lambda rows: np.zeros((len(rows), 4), np.float32), es, ks=(1, 3))
    assert zeros == metrics.hit_rates(baselines.popularity_scores(es), es, ks=(1, 3))
    assert zeros["hit_rate@1"] == zeros["hit_rate_excluding_seen@1"] == 1.0  # d: 2 training interactions, a: 1


def test_popularity_ties_are_not_credited():
    train, test, catalog = _tiny()
    es = metrics.prepare(train, test, catalog)
    # Counts a=1 b=2 c=0 d=0: c ties with d but sorts before it, a is second.
    pop = metrics.hit_rates(baselines.popularity_scores(es), es, ks=(1, 2, 3))
    assert pop["hit_rate@2"] == 0.5 and pop["hit_rate@3"] == 1.0
    assert pop["hit_rate_excluding_seen@1"] == 0.5  # u2: b masked, a is top


def test_item_item_cosine_and_report_table():
    train, test, catalog = _tiny()
    es = metrics.prepare(train, test, catalog)
    result = {"hit_rate@1": 0.0, "hit_rate_excluding_seen@1": 0.0,
              "baselines": baselines.baselines(train, es, ks=(1,))}
    assert set(result["baselines"]) == {"popularity", "item_item_cosine", "ease", "ials"}
    skipped = baselines.baselines(train, es, ks=(1,), dense_max_candidates=2)
    assert "skipped" in skipped["item_item_cosine"]
    table = report.format_table(result, ks=(1,))
    assert "popularity" in table and "item_item_cosine" in table and "excluding seen" in table


# ---------------------------------------------------------------- index builder


def test_tree_ah_index_meets_recall_and_survives_rename(tmp_path):
    from index_service.searcher import load_searcher
    from trainer.export import index as index_builder

    # Clustered vectors, like trained embeddings (isotropic noise has no structure to exploit).
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    db = (centers[rng.integers(40, size=3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(np.float32)
    probes = (centers[rng.integers(40, size=200)] + 0.3 * rng.normal(size=(200, 16))).astype(np.float32)
    cfg = index_builder.IndexConfig(brute_force_max=1000, reorder_depths=(100, 200))
    searcher, spec = index_builder.build_index(db, probes, cfg)
    assert spec.kind == "tree_ah" and spec.num_leaves == 55 and spec.recall_at_10 >= 0.95
    index_builder.save_searcher(searcher, tmp_path / "staging")
    shutil.move(tmp_path / "staging", tmp_path / "renamed")  # relative asset paths must survive this
    loaded = load_searcher(tmp_path / "renamed")  # as the index service loads it (no TensorFlow)
    recall = index_builder.measure_recall(loaded, probes, db, leaves_to_search=spec.num_leaves_to_search,
                                          reorder=spec.reorder)
    assert recall == pytest.approx(spec.recall_at_10)


def test_an_index_below_the_services_recall_floor_is_not_published(tmp_path):
    """The index service refuses to load a version whose recall@10 is under its --min-recall (0.9): publishing one
    would give a version that fails to load on every slot, found only at rollout."""
    from model_registry import Manifest, Registry
    from trainer.export import index as index_builder

    rng = np.random.default_rng(0)
    db = rng.normal(size=(1500, 16)).astype(np.float32)  # no structure, and searched far too shallowly
    probes = rng.normal(size=(50, 16)).astype(np.float32)
    ids = np.array([f"i{j:04d}" for j in range(len(db))])
    shallow = index_builder.IndexConfig(brute_force_max=500, reorder_depths=(10,), leaves_fractions=(0.03,))
    registry = Registry(tmp_path, "m")

    def publish(shards: int):  # as trainer.export.publish builds it, before anything is written
        built, spec = index_builder.build_shards(db, probes, ids, shards, shallow)

        def write(staging):
            specs = index_builder.save_candidates(staging, ids, db, built)
            return lambda version, files: Manifest(model="m", version=version, embedding_dim=16,
                                                   num_candidates=len(ids), tower="id", dataset="test",
                                                   created_at="2026-01-01T00:00:00Z", index=spec, files=files,
                                                   shards=specs)
        registry.publish(write)

    with pytest.raises(ValueError, match=r"index recall@10 is 0\.\d+ on the probe queries, below the 0\.9 the index "
                                         r"service requires .*--index-shards"):
        publish(1)
    with pytest.raises(ValueError, match=r"shard 0 of 2: index recall@10 is 0\.\d+ on the probe queries"):
        publish(2)
    assert registry.versions() == []
    built, spec = index_builder.build_shards(db, probes, ids, 2, index_builder.IndexConfig(brute_force_max=1000))
    assert spec.recall_at_10 >= 0.9 and all(shard.spec.recall_at_10 >= 0.9 for shard in built)


def test_an_exact_index_over_repeated_vectors_records_recall_one():
    from trainer.export import index as index_builder

    # Candidates that embed alike (the same features, no history) tie: an exact searcher is still exact.
    rng = np.random.default_rng(0)
    db = rng.normal(size=(50, 8)).astype(np.float32)[rng.integers(50, size=1000)]
    _, spec = index_builder.build_index(db, rng.normal(size=(100, 8)).astype(np.float32))
    assert spec.kind == "brute_force" and spec.recall_at_10 == 1.0


def test_candidates_in_fortran_order_are_saved_as_the_index_service_reads_them(tmp_path):
    from model_registry import manifest as mf
    from model_registry.search import exact_top_k
    from trainer.export import index as index_builder

    rng = np.random.default_rng(0)
    emb = np.asfortranarray(rng.normal(size=(60, 4)).astype(np.float32))  # a transposed matrix, say
    ids = np.array([f"i{j:02d}" for j in range(60)])
    shards, _ = index_builder.build_shards(emb, emb[:5], ids)
    index_builder.save_candidates(tmp_path, ids, emb, shards)
    # The index service's self-test reads the file in blocks of C-ordered rows.
    found, _ = exact_top_k(emb[:5], tmp_path / mf.CANDIDATE_EMBEDDINGS_FILE, 10)
    assert np.array_equal(found, exact_top_k(emb[:5], emb, 10)[0])


# ---------------------------------------------------------------- end to end


def test_train_publish_reload_round_trip(tmp_path, capsys):
    import settings.tf_env  # noqa: F401
    import tensorflow as tf
    from scann import scann_ops_pybind

    from model_registry import Registry, verify_version
    from model_registry import manifest as mf
    from model_registry.search import exact_top_k
    from trainer import cli

    rc = cli.main(["--tune-budget-s", "0", "--dataset", "synthetic", "--registry", str(tmp_path / "reg"),
                   "--model", "tiny", "--epochs", "2", "--embedding-dim", "16", "--batch-size", "256", "--quiet",
                   "--prior-weight", "0.5",
                   "--synthetic-customers", "300", "--synthetic-candidates", "120",
                   "--synthetic-interactions", "6000", "--synthetic-clusters", "6",
                   "--metrics-out", str(tmp_path / "metrics.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "published model=tiny version=1 dir=" in out and "recall@10=1.00" in out

    reg = Registry(tmp_path / "reg", "tiny")
    assert reg.versions() == [1] and reg.current_version() is None  # published, not rolled out
    vdir = reg.version_dir(1)
    manifest = verify_version(vdir)
    assert sorted(p.name for p in vdir.iterdir()) == sorted([
        mf.QUERY_TOWER_DIR, mf.CANDIDATE_IDS_FILE, mf.CANDIDATE_EMBEDDINGS_FILE, mf.SCANN_DIR,
        mf.POPULAR_FILE, mf.PROBE_QUERIES_FILE, mf.METRICS_FILE, mf.MANIFEST_FILE, mf.CUSTOMER_STORE_FILE])
    metrics = json.loads((vdir / mf.METRICS_FILE).read_text())
    assert metrics == manifest.metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_run"] <= 2 and "popularity" in metrics["baselines"]
    prior = metrics["popularity_prior"]
    assert prior == {"weight": 0.5, "query_constant": 0.5, "extra_dimension": True}  # --prior-weight, temperature 1
    dim = 16 + 1  # the tower's 16 + the prior's dimension
    assert manifest.embedding_dim == dim and manifest.num_candidates == 120 and manifest.tower == "id"
    assert manifest.index.kind == "brute_force" and manifest.index.recall_at_10 == 1.0

    ids = np.load(vdir / mf.CANDIDATE_IDS_FILE, allow_pickle=False)
    emb = np.load(vdir / mf.CANDIDATE_EMBEDDINGS_FILE, allow_pickle=False)
    probes = np.load(vdir / mf.PROBE_QUERIES_FILE, allow_pickle=False)
    assert ids.dtype.kind == "U" and ids.shape == (120,) and emb.shape == (120, dim) and emb.dtype == np.float32
    assert probes.dtype == np.float32 and probes.shape[1] == dim and 0 < len(probes) <= 300
    assert np.allclose(probes[:, -1], prior["query_constant"])
    assert emb[:, -1].min() >= 0 and np.allclose(np.expm1(emb[:, -1]), np.round(np.expm1(emb[:, -1])), atol=1e-3)
    pop = np.load(vdir / mf.POPULAR_FILE, allow_pickle=False)
    assert pop["ids"].dtype.kind == "U" and len(pop["ids"]) == len(pop["scores"]) <= 120
    assert np.all(np.diff(pop["scores"]) <= 0) and pop["scores"].dtype == np.float32

    serve = tf.saved_model.load(str(vdir / mf.QUERY_TOWER_DIR)).signatures["serving_default"]
    res = serve(customer_id=tf.constant(["c000001", "nobody"]))
    assert res["embedding"].shape == (2, dim) and res["embedding"].dtype == tf.float32
    assert np.allclose(res["embedding"].numpy()[:, -1], prior["query_constant"])
    assert res["known"].numpy().tolist() == [True, False]
    # A held-out customer the tower does not know is served the popular list, never searched with: the
    # unknown vector is no probe of the recall (three such customers here; a temporal split has many).
    assert not np.any(np.all(probes == res["embedding"].numpy()[1], axis=1))

    searcher = scann_ops_pybind.load_searcher(str(vdir / mf.SCANN_DIR))
    queries = res["embedding"].numpy()
    got, _ = searcher.search_batched(queries, final_num_neighbors=10)
    exact, _ = exact_top_k(queries, emb, 10)
    assert [set(r) for r in np.asarray(got)] == [set(r) for r in exact]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from trainer import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--tune-budget-s", "0",
                  "--dataset", "movielens-100k", "--data-dir", str(tmp_path), "--registry", str(tmp_path),
                  "--model", "m"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "u.data not found" in err
    with pytest.raises(SystemExit):
        cli.main(["--tune-budget-s", "0", "--dataset", "synthetic", "--registry", str(tmp_path), "--model", "bad name"])
    assert "model name" in capsys.readouterr().err


def test_cli_a_registry_it_cannot_write_is_a_run_time_failure(tmp_path, capsys, monkeypatch):
    import errno
    import os
    import types

    from model_registry import registry
    from trainer import cli

    def read_only(dir, prefix):  # what mkdtemp meets in a read-only (or chattr +i) registry directory
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.path.join(dir, prefix + "x1y2"))

    monkeypatch.setattr(registry, "tempfile", types.SimpleNamespace(mkdtemp=read_only))
    status = cli.main(["--tune-budget-s", "0", "--dataset", "synthetic", "--registry", str(tmp_path / "reg"),
                       "--model", "m", "--epochs", "1", "--embedding-dim", "8", "--quiet",
                       "--synthetic-customers", "100", "--synthetic-candidates", "40",
                       "--synthetic-interactions", "1000", "--synthetic-clusters", "4"])
    err = capsys.readouterr().err.strip()
    assert status == 1, err
    assert err.count("\n") == 0 and err.startswith("recsys-train: error: ")
    assert f"registry directory {tmp_path / 'reg' / 'm'}" in err, err
    assert "Operation not permitted" in err


def test_cli_a_run_that_diverges_says_so_and_publishes_nothing(tmp_path, capfd):
    """capfd: Optuna's log handler writes to the stderr of its import, which capsys does not replace. It printed
    the failed trial's traceback before the one-line error."""
    from trainer import cli

    status = cli.main(["--tune-budget-s", "0", "--dataset", "synthetic", "--registry", str(tmp_path / "reg"),
                       "--model", "m", "--epochs", "1", "--embedding-dim", "8", "--quiet", "--learning-rate", "1e30",
                       "--synthetic-customers", "100", "--synthetic-candidates", "40",
                       "--synthetic-interactions", "1000", "--synthetic-clusters", "4"])
    err = capfd.readouterr().err.strip()
    assert "Traceback" not in err and "Trial 0 failed" not in err, err
    assert status == 2 and err.splitlines()[-1].startswith(
        "recsys-train: error: training the preset failed: FloatingPointError: training diverged (loss nan): lower "
        "--learning-rate"), err
    assert not (tmp_path / "reg" / "m").exists() or not any((tmp_path / "reg" / "m").glob("[0-9]*"))


@pytest.mark.parametrize("dataset, flags, message", [
    # Without a time column the times are row numbers: every served request time would fall past them.
    ("interactions-csv", ["--tower", "features", "--time-features"], "--time-features needs --time-col"),
    ("sessions", ["--rating-col", "r", "--min-rating", "0"], "--rating-col is not read by --dataset sessions"),
    ("sessions", ["--catalog-path", "DATA"], "--catalog-path is not read by --dataset sessions"),
    ("synthetic", ["--candidate-features"], "--candidate-features needs catalogue columns to take"),
    ("interactions-csv", ["--candidate-features"], "--candidate-features needs catalogue columns to take"),
    # Options a data set does not read are refused, not ignored (a run that reads none of them says nothing).
    ("movielens-100k", ["--data-dir", "DIR", "--rating-col", "2", "--min-rating", "4"],
     "--rating-col is not read by --dataset movielens-100k (the ml-100k folder given by --data-dir): leave it out, "
     "or use --dataset interactions-csv"),
    ("synthetic", ["--data-path", "DATA"], "--data-path is not read by --dataset synthetic"),
    ("movielens-100k", ["--data-dir", "DIR", "--synthetic-clusters", "5"],
     "--synthetic-clusters is not read by --dataset movielens-100k"),  # was "data.synthetic", no flag's name
    ("sessions", ["--data-path", "DATA", "--customer-col", "u"], "--customer-col is not read by --dataset sessions"),
    ("interactions-csv", ["--data-path", "DATA", "--item-col", "i"],
     "--item-col is not read by --dataset interactions-csv (a file of customer, candidate and optional rating, "
     "time and event columns): leave it out, or use --dataset sessions"),
])
def test_cli_flags_the_data_cannot_honour_are_refused_before_reading_it(tmp_path, capsys, dataset, flags, message):
    from trainer import cli

    data = tmp_path / "log.csv"
    data.write_text("user_id,item_id,SessionId,ItemId,r\nu1,a,s1,a,1\n")
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    files = dataset in ("interactions-csv", "sessions")
    read = ["--data-path", str(data)] if files and "--data-path" not in flags else []
    with pytest.raises(SystemExit) as e:
        cli.main(["--dataset", dataset, *read, "--registry", str(tmp_path), "--model", "m",
                  *[{"DATA": str(data), "DIR": str(tmp_path)}.get(flag, flag) for flag in flags]])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and message in err, err


def test_cli_synthetic_sizes_it_cannot_plant_are_refused_naming_the_flag(tmp_path, capsys):
    from trainer import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--dataset", "synthetic", "--registry", str(tmp_path), "--model", "m",
                  "--synthetic-customers", "5", "--synthetic-candidates", "3"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0, err
    assert "--synthetic-clusters is 20: at most the customers' (5) and candidates' (3) numbers" in err, err


def test_cli_validates_the_whole_config_before_reading_data(tmp_path, capsys):
    from trainer import cli

    # The data dir holds no u.data: were the data read first, that would be the error.
    for flags, named in ((["--learning-rate", "-1"], "learning"), (["--temperature", "0"], "temperature"),
                         (["--validation-fraction", "1.5"], "validation"), (["--learning-rate", "inf"], "learning"),
                         (["--temperature", "inf"], "temperature"), (["--prior-weight", "inf"], "prior"),
                         (["--l2", "inf"], "--l2 must be a finite number"),
                         (["--tune-budget-s", "inf"], "--tune-budget-s must be >= 0 and finite"),
                         # Found trying the tool (stop 60): each trained and published, the first two with every
                         # score inf (and a self-test recall of 0.90), the third an id tower reporting layers unused.
                         (["--temperature", "1e39"], "--temperature must be at most 1e+06"),
                         (["--prior-weight", "1e39"], "--prior-weight must be >= 0, and times the temperature at "
                                                      "most 1e+06"),
                         (["--deep-layers", "128,64"], "--deep-layers needs --tower features, history or sequence"),
                         # TensorFlow's "Can't convert Python sequence with out-of-range integer", naming no flag.
                         (["--batch-size", "100000000000000000000"], "--batch-size must be below 2**31")):
        with pytest.raises(SystemExit) as e:
            cli.main(["--tune-budget-s", "0",
                      "--dataset", "movielens-100k", "--data-dir", str(tmp_path), "--registry", str(tmp_path),
                      "--model", "m", *flags])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert named in err and "u.data" not in err and err.count("\n") == 0, err


def test_cli_history_tower_publishes_customer_store(tmp_path, capsys):
    import settings.tf_env  # noqa: F401
    import tensorflow as tf

    from model_registry import Registry, verify_version
    from model_registry import manifest as mf
    from trainer import cli

    rc = cli.main(["--tune-budget-s", "0",
                   "--dataset", "synthetic", "--registry", str(tmp_path / "reg"), "--model", "hist",
                   "--tower", "history", "--history-length", "12", "--epochs", "1", "--embedding-dim", "8",
                   "--l2", "0.0001", "--quiet", "--synthetic-customers", "150", "--synthetic-candidates", "60",
                   "--synthetic-interactions", "3000", "--synthetic-clusters", "4",
                   "--prior-weight", "0"])  # a prior adds a dimension to the embeddings read below
    assert rc == 0, capsys.readouterr().err
    vdir = Registry(tmp_path / "reg", "hist").version_dir(1)
    manifest = verify_version(vdir)
    assert manifest.tower == "history" and manifest.metrics["config"]["towers"]["l2"] == 0.0001
    with np.load(vdir / mf.CUSTOMER_STORE_FILE, allow_pickle=False) as store:
        ids, history = store["ids"], store["history"]
        assert history.shape == (len(ids), 12) and len(store["seen_offsets"]) == len(ids) + 1
    serve = tf.saved_model.load(str(vdir / mf.QUERY_TOWER_DIR)).signatures["serving_default"]
    res = serve(customer_id=tf.constant(["nobody", "nobody"]),
                history=tf.constant(np.stack([history[0], np.full(12, "")])))
    assert res["known"].numpy().tolist() == [True, False] and res["embedding"].shape == (2, 8)


def test_recommended_config_and_tower_flag(tmp_path):
    from trainer import cli
    from trainer.config import PRESETS, recommended_config

    assert recommended_config().towers.kind == "id"
    assert recommended_config("sequence").towers.kind == "sequence"
    parser = cli.build_parser()
    args = parser.parse_args(["--dataset", "synthetic", "--registry", str(tmp_path), "--model", "m",
                              "--tower", "features", "--l2", "0.01"])
    config = cli.config_from_args(parser, args)
    # The features preset with the one flag given applied over it; everything else from the preset.
    assert config.train.towers.kind == "features" and config.train.towers.l2 == 0.01
    assert config.train.max_epochs == PRESETS["features"].max_epochs


def test_every_data_set_starts_from_the_same_presets(tmp_path):
    """MovieLens 100K had presets of its own, chosen on its test split; a run on it now starts where any data set
    does, so its figures say what a new data set gets."""
    from trainer import cli

    parser = cli.build_parser()
    base = ["--registry", str(tmp_path), "--model", "m"]
    (tmp_path / "u.data").write_text("")  # the config checks the file is there; nothing reads it
    for tower in ("id", "features", "history", "sequence"):
        runs = [cli.config_from_args(parser, parser.parse_args(base + ["--tower", tower] + data)).train
                for data in (["--dataset", "synthetic"], ["--dataset", "movielens-100k", "--data-dir", str(tmp_path)])]
        assert runs[0] == runs[1], tower
    # The history family starts regularised (L2 and history dropout): chosen across six data shapes' validation.
    history = cli.config_from_args(parser, parser.parse_args(base + ["--dataset", "synthetic", "--tower", "history"]))
    assert history.train.towers.l2 > 0 and history.train.towers.history_dropout > 0


def test_a_catalogue_column_the_candidate_tower_cannot_take_by_name_is_refused_before_training(tmp_path, capsys):
    from trainer import cli

    # Empty files: were the data read first, that would be the error.
    (tmp_path / "events.csv").write_text("")
    (tmp_path / "items.csv").write_text("")
    base = ["--tune-budget-s", "0", "--dataset", "interactions-csv", "--data-path", str(tmp_path / "events.csv"),
            "--catalog-path", str(tmp_path / "items.csv"), "--registry", str(tmp_path), "--model", "m"]
    # A SavedModel input is named after the column: "unit price" failed the publish after training, and
    # "sub-category" became the input "sub_category", which catalogue upserts naming the column could not fill.
    for column in ("unit price", "sub-category", "2"):
        for tower in (["--candidate-features"], ["--tower", "features"]):
            with pytest.raises(SystemExit) as e:
                cli.main([*base, "--catalog-feature-cols", f"genre,{column}", *tower])
            assert e.value.code == 2
            err = capsys.readouterr().err.strip()
            assert "--catalog-feature-cols" in err and repr(column) in err and err.count("\n") == 0, err
    # Without a candidate tower that takes them, the columns are only attributes: any name goes.
    assert cli.main([*base, "--catalog-feature-cols", "unit price", "--quiet"]) == 2  # the empty file's error
    assert "recsys-train: error" in capsys.readouterr().err
