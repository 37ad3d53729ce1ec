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
