"""Numbers in a time column that are not epoch times (compact dates, years, spreadsheet day serials) were read as
epoch seconds or milliseconds: 20200101 as August 1970, 20200101123000 as the year 2610. The time features then
learned a period that serving's request_time (now, in unix seconds) is never in."""

from __future__ import annotations

import pytest

from trainer.data import DatasetOptions, load_dataset


def _load_times(tmp_path, times):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts\n" + "".join(f"u{i % 2},i{i},{t}\n" for i, t in enumerate(times)))
    return load_dataset("interactions-csv", DatasetOptions(data_path=path, time_col="ts"))


@pytest.mark.parametrize("times, value, unit, date", [
    (["20200101", "20231231"], "20231231", "seconds", "1970-08-23"),  # YYYYMMDD
    (["20200101123000", "20231231235959"], "20231231235959", "milliseconds", "2611-02-07"),  # YYYYMMDDhhmmss
    (["2019", "2020"], "2020", "seconds", "1970-01-01"),  # years
    (["45244.5", "45245.25"], "45245.25", "seconds", "1970-01-01"),  # spreadsheet day serials (the cell named)
    (["1700000000", "4200000000"], "4200000000", "seconds", "2103-02-04"),  # after 2100
])
def test_numbers_that_decode_to_implausible_dates_are_refused_naming_value_date_and_fix(tmp_path, times, value,
                                                                                        unit, date):
    with pytest.raises(ValueError, match=rf"log.csv: column 'ts' holds numbers that are not epoch times from 1980 "
                                         rf"to 2100: data row 2 holds '{value}', as epoch {unit} {date}T.*ISO dates"):
        _load_times(tmp_path, times)


def test_epoch_times_and_counters_load_and_the_span_read_is_reported(tmp_path):
    d = _load_times(tmp_path, ["1700000000", "1700000005", "7"])  # a small number beside epoch seconds: as before
    assert d.info["time_unit"] == "s" and d.info["time_range"] == "1970-01-01T00:00:07 .. 2023-11-14T22:13:25"
    d = _load_times(tmp_path, ["0", "1", "2", "3000"])  # counters (file order, steps) are not dates
    assert d.timestamps.tolist() == [0, 1, 2, 3000] and d.info["time_unit"] == "s"
    d = _load_times(tmp_path, ["2023-11-14T22:13:20Z", "2023-11-15"])
    assert d.info["time_range"] == "2023-11-14T22:13:20 .. 2023-11-15T00:00:00"
