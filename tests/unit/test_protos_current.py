"""The committed gRPC stubs must be what scripts/gen_protos.py makes from the
.proto files today; edit a .proto, regenerate, commit both."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current(tmp_path):
    # In a child process: grpc_tools' protoc and TensorFlow's protobuf runtime
    # crash when loaded into one interpreter, and other tests import TensorFlow.
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
                   check=True, timeout=120)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "the generator produced nothing"
    for relative in generated:
        committed = REPO / relative
        assert committed.exists(), f"{relative} is not committed: run scripts/gen_protos.py"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run .venv/bin/python scripts/gen_protos.py and commit the result")
    # Sources only: an interpreter that writes bytecode leaves __pycache__/*_pb2*.pyc beside them, not stubs.
    committed_stubs = sorted(p.relative_to(REPO) for p in (REPO / "protos").rglob("*_pb2*.py*")
                             if "__pycache__" not in p.parts)
    assert committed_stubs == generated, "stubs without a .proto source are committed"


def test_protos_keep_the_wire_contract_of_the_lock():
    # A child process for protoc, as above; fails on a break and on a lock that lags the .proto files.
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "proto_lock.py"), "--check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr


def test_lock_check_names_each_break():
    sys.path.insert(0, str(REPO / "scripts"))
    from proto_lock import breaks

    lock = {"fields": {"p.M.1": ["id", "TYPE_STRING", False], "p.M.2": ["score", "TYPE_FLOAT", False],
                       "p.M.3": ["tags", "TYPE_STRING", True]},
            "enums": {"p.E.1": ["E_ONE"]}, "rpcs": {"p.S/Get": ["p.M", "p.M", False, False]}}
    now = {"fields": {"p.M.1": ["id", "TYPE_STRING", False], "p.M.2": ["score", "TYPE_DOUBLE", False],
                      "p.M.4": ["more", "TYPE_INT64", False]},
           "enums": {}, "rpcs": {"p.S/Get": ["p.M", "p.M", False, True]}}
    assert breaks(lock, now, {"p.M": set()}) == [
        "p.M.2 was ['score', 'TYPE_FLOAT', False], is ['score', 'TYPE_DOUBLE', False]",
        "p.M: field 3 (tags) removed without reserving its number and name",
        "p.E.1 (E_ONE) removed",
        "p.S/Get was ['p.M', 'p.M', False, False], is ['p.M', 'p.M', False, True]"]
    # Removed with its number and name reserved: no break; the number alone is not enough (JSON reads names).
    assert breaks({"fields": {"p.M.3": lock["fields"]["p.M.3"]}}, now, {"p.M": {3, "tags"}}) == []
    assert len(breaks({"fields": {"p.M.3": lock["fields"]["p.M.3"]}}, now, {"p.M": {3}})) == 1
