"""A full disk is named with where to free space, and leaves nothing behind in the catalogue log."""

from __future__ import annotations

import errno
import os

import pytest

from model_registry import deltas
from trainer import cli
from trainer.config import PipelineConfig


def test_a_delta_write_that_runs_out_of_space_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(fd):  # the flush to disk is where a full filesystem refuses the write's blocks
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        deltas._staged(tmp_path, b"a delta record")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_training_run_out_of_space_names_the_registry_and_tmpdir(tmp_path):
    config = PipelineConfig(dataset="synthetic", registry=tmp_path / "reg", model="m")
    line = cli._os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), config)
    assert line.startswith("[Errno 28] No space left on device: the run writes the version into "), line
    assert str(tmp_path / "reg" / "m") in line and "free space there" in line
