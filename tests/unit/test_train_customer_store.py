"""The published customer store knows every interaction of the data, the held-out test split's included: the
split only measures the model, and serving should know the newest history (for history towers, exclude_seen and
the customers it knows)."""

from __future__ import annotations

import json

from model_registry import Registry
from model_registry import manifest as mf
from model_registry.customers import CustomerStore
from trainer import cli


def test_the_published_store_holds_the_test_split_too(tmp_path):
    # 12 customers with 10 items each over time, then "solo", whose one interaction is the newest of the file:
    # the temporal split holds out the last 20%, so solo and each customer's newest items are test interactions.
    events = [(f"u{u}", f"i{(u * 3 + j) % 25}", 10 * j + u) for u in range(12) for j in range(10)]
    events.append(("solo", "i7", 1000))
    (tmp_path / "log.csv").write_text("user_id,item_id,ts\n" + "".join(f"{c},{i},{t}\n" for c, i, t in events))
    metrics_out = tmp_path / "metrics.json"
    status = cli.main(["--tune-budget-s", "0", "--dataset", "interactions-csv", "--data-path",
                       str(tmp_path / "log.csv"), "--time-col", "ts", "--split", "temporal", "--tower", "history",
                       "--history-length", "4", "--registry", str(tmp_path / "reg"), "--model", "m", "--epochs", "1",
                       "--embedding-dim", "8", "--quiet", "--metrics-out", str(metrics_out)])
    assert status == 0
    store = CustomerStore.load(Registry(tmp_path / "reg", "m").version_dir(1) / mf.CUSTOMER_STORE_FILE)
    customers = sorted({c for c, _, _ in events})
    assert store.ids.tolist() == customers
    for customer in customers:
        mine = sorted((e for e in events if e[0] == customer), key=lambda e: -e[2])
        assert store.seen(customer) == {i for _, i, _ in mine}, customer
        newest = [i for _, i, _ in mine][:4]
        assert store.history[store.rows([customer])[0]].tolist() == newest + [""] * (4 - len(newest)), customer
    assert json.loads(metrics_out.read_text())["customer_store"] == {
        "customers": 13, "interactions": len(events), "customers_only_in_test": 1}
