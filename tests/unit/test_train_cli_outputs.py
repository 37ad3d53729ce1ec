"""recsys-train's outputs and refusals: a metrics or plot path, or a registry, it could not write is refused
before any work; what it did publish is shown before the report files are written, and a failure to write one
names the file and the published version in one line."""

from __future__ import annotations

import json

import pytest

from model_registry import Registry
from trainer import cli

# A few seconds of training: enough for a real run that publishes.
TINY = ["--dataset", "synthetic", "--model", "m", "--tune-budget-s", "0", "--epochs", "1", "--embedding-dim", "8",
        "--synthetic-customers", "100", "--synthetic-candidates", "40", "--synthetic-interactions", "1000",
        "--synthetic-clusters", "4"]


def no_data(tmp_path) -> list[str]:
    """Flags of a run whose data file lacks its columns, an error of reading it: were the data read before a
    refusal, that would be the error."""
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    return ["--tune-budget-s", "0", "--dataset", "interactions-csv", "--data-path", str(tmp_path / "data.csv"),
            "--model", "m"]


@pytest.mark.parametrize("flags, named", [
    (["--metrics-out", "{tmp}"], "--metrics-out"),
    (["--metrics-out", "/proc/m.json"], "--metrics-out"),
    (["--metrics-out", "{tmp}/m.json", "--plot-out", "{tmp}/adir.png"], "--plot-out"),
    (["--metrics-out", "{tmp}/adir.json"], "--plot-out"),  # its default plot beside it is a directory
    (["--plot-out", "{tmp}/p.json"], "--plot-out"),  # matplotlib would take the suffix as the format
    (["--metrics-out", "{tmp}", "--workers", "2"], "--metrics-out"),  # before any worker starts
    # Found trying the tool (stop 60): a plot beside the directory, the metrics overwritten by the plot, a traceback.
    (["--plot-out", "{tmp}/adir.png/"], "--plot-out: {tmp}/adir.png is a directory"),
    (["--plot-out", "{tmp}/"], "--plot-out: {tmp} is a directory"),  # wrote {tmp}.png, beside it
    (["--plot-out", ".."], "--plot-out: .. is a directory"),  # wrote ...png.png
    (["--metrics-out", "{tmp}/r.png"], "--metrics-out {tmp}/r.png is where the plot goes by default"),
    (["--metrics-out", "{tmp}/r.png", "--plot-out", "{tmp}/r.png"], "--plot-out {tmp}/r.png is --metrics-out's file"),
    (["--metrics-out", ""], "--metrics-out: . is a directory"),  # PosixPath('.') has an empty name: a traceback
])
def test_an_unwritable_report_path_is_refused_before_any_work(tmp_path, capsys, flags, named):
    (tmp_path / "adir.png").mkdir()
    flags, named = [flag.format(tmp=tmp_path) for flag in flags], named.format(tmp=tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([*no_data(tmp_path), "--registry", str(tmp_path / "reg"), *flags])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert err.count("\n") == 0 and err.startswith(f"recsys-train: error: {named}") and "not found" not in err, err
    assert not (tmp_path / "reg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "data.csv"]  # the check left no file behind


@pytest.mark.parametrize("registry", ["{tmp}/afile", "{tmp}/afile/sub", "/proc/reg"])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_registry_it_cannot_write_is_refused_before_the_data_is_read(tmp_path, capsys, registry, workers):
    (tmp_path / "afile").write_text("not a folder")
    registry = registry.format(tmp=tmp_path)
    status = cli.main([*no_data(tmp_path), "--registry", registry, *workers])
    err = capsys.readouterr().err.strip()
    assert status == 1, err
    assert err.count("\n") == 0 and "not found" not in err, err
    assert err.startswith(f"recsys-train: error: cannot publish into the registry directory {registry}/m: "), err


def test_the_check_of_the_registry_leaves_no_staging_folder(tmp_path, capsys):
    assert cli.main([*no_data(tmp_path), "--registry", str(tmp_path / "reg")]) == 2
    assert "columns 'user_id', 'item_id' not found" in capsys.readouterr().err
    assert not (tmp_path / "reg").exists()  # nor the folders the check made: the run published nothing


def test_a_refused_run_removes_the_model_folder_it_made_and_keeps_the_registry_it_found(tmp_path, capsys):
    (tmp_path / "reg" / "other").mkdir(parents=True)
    assert cli.main([*no_data(tmp_path), "--registry", str(tmp_path / "reg")]) == 2
    assert [p.name for p in (tmp_path / "reg").iterdir()] == ["other"]  # no empty "m" for a service to find


def test_a_metrics_file_it_fails_to_write_is_one_line_after_the_published_version(tmp_path, capsys):
    # /dev/full opens for writing, and every write to it fails (ENOSPC): a failure the start cannot foresee.
    status = cli.main([*TINY, "--registry", str(tmp_path / "reg"), "--metrics-out", "/dev/full",
                       "--plot-out", str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    assert status == 1, err
    assert Registry(tmp_path / "reg", "m").versions() == [1]
    assert "hit rate, all candidates" in out and "published model=m version=1 " in out, out
    last = err.strip().splitlines()[-1]
    assert last.startswith("recsys-train: error: cannot write /dev/full: "), err[-3000:]
    assert "version 1 of m is published" in last and "Traceback" not in err, err[-3000:]
    assert f"plot: {tmp_path / 'p.png'}\n" in out and (tmp_path / "p.png").is_file()  # written all the same


def test_the_plot_line_names_the_file_written(tmp_path, capsys):
    status = cli.main([*TINY, "--quiet", "--registry", str(tmp_path / "reg"), "--plot-out", str(tmp_path / "chart")])
    out = capsys.readouterr().out
    assert status == 0
    assert f"plot: {tmp_path / 'chart.png'}\n" in out, out
    assert (tmp_path / "chart.png").is_file() and not (tmp_path / "chart").exists()
    # The files come after what was published, so a failure to write one cannot hide it.
    assert out.index("published model=m version=1 ") < out.index("plot: ")


def test_a_run_says_where_its_time_went(tmp_path, capsys, caplog):
    # --tune-budget-s bounds the search's later trials only: at 1M interactions the baselines took 333 s and the
    # whole run 2.9 times the budget, and neither the log nor metrics.json said where the time went.
    status = cli.main([*TINY, "--registry", str(tmp_path / "reg"), "--metrics-out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    # Keras warned at each save that the towers' constructor arguments cannot be serialized: eight lines a run.
    assert not [r for r in caplog.records if "non-serializable" in r.getMessage()]
    assert status == 0
    run = [line for line in err.splitlines() if " run: " in line or line.startswith("run: ")]
    assert len(run) == 1 and "against --tune-budget-s" in run[0] and ", evaluation " in run[0], err[-2000:]
    assert ", publish " in run[0], err[-2000:]
    assert any("baseline ials: chose" in line for line in err.splitlines()), err[-2000:]
    phases = json.loads((tmp_path / "m.json").read_text())["run_seconds"]
    # The evaluation was missing (its time and the publish's were one phase, after the report was written); the
    # publish writes the report, so it is on the run's line alone.
    assert set(phases) == {"load_and_split", "baselines", "search_and_refit", "evaluation"}, phases
    assert all(s >= 0 for s in phases.values())
    assert json.loads((tmp_path / "reg" / "m" / "1" / "metrics.json").read_text())["run_seconds"] == phases


def test_a_run_past_the_memory_is_one_line(tmp_path, capsys):
    """Found trying the tool (stop 60): numpy's 745 GiB _ArrayMemoryError (and TensorFlow's ResourceExhaustedError
    of a table past the memory) were tracebacks."""
    status = cli.main([*TINY, "--registry", str(tmp_path / "reg"), "--synthetic-interactions", "100000000000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1] == ("recsys-train: error: out of memory (MemoryError): lower --embedding-dim or "
                                       "--batch-size, or train on less data"), err[-5:]
    assert "Traceback" not in "\n".join(err)


def test_a_search_with_no_validation_split_says_it_is_skipped(tmp_path, capsys):
    """Found trying the tool (stop 60): --tune-trials 3 --validation-fraction 0 trained the preset, without a word."""
    assert cli.main([*TINY, "--registry", str(tmp_path / "reg"), "--tune-trials", "3",
                     "--validation-fraction", "0"]) == 0
    assert ("no validation split (--validation-fraction 0 of 800 training interactions holds none): no search, no "
            "prior chosen; the preset is trained as given") in capsys.readouterr().err
