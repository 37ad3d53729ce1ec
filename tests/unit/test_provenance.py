"""What a version records of how it was made (``trainer.provenance``): the run's options, its input files'
sha256 and the library versions, never the signing key."""

from __future__ import annotations

import hashlib
import json

from trainer.config import PipelineConfig
from trainer.data.datasets import DatasetOptions
from trainer.provenance import provenance


def test_a_run_records_its_options_its_inputs_hashes_and_its_libraries_but_not_its_key(tmp_path):
    interactions = tmp_path / "ratings.csv"
    interactions.write_text("user_id,item_id,stars\nu1,i1,5\nu2,i1,4\n")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item_id,genre\ni1,drama\n")
    config = PipelineConfig(dataset="interactions-csv", registry=tmp_path / "reg", model="m",
                            data=DatasetOptions(data_path=interactions, catalog_path=catalogue, rating_col="stars",
                                                min_rating=4.0), tune_trials=3)
    record = provenance(config)
    assert record["inputs"] == {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (interactions, catalogue)}
    options = record["options"]
    assert (options["dataset"], options["tune_trials"], options["split"]) == ("interactions-csv", 3, "random")
    assert (options["data"]["rating_col"], options["data"]["min_rating"]) == ("stars", 4.0)
    assert record["libraries"]["tensorflow"] and record["libraries"]["scann"]
    text = json.dumps(record)  # as metrics.json holds it
    assert "signing_key" not in text and str(tmp_path / "reg") not in text


def test_a_file_gone_since_it_was_read_is_recorded_as_such_not_raised(tmp_path):
    rotated = tmp_path / "rotated.csv"
    rotated.write_text("user_id,item_id\nu1,i1\n")
    config = PipelineConfig(dataset="interactions-csv", registry=tmp_path / "reg", model="m",
                            data=DatasetOptions(data_path=rotated))
    rotated.unlink()
    assert provenance(config)["inputs"] == {str(rotated): "unreadable: No such file or directory"}
