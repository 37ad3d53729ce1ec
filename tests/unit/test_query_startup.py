"""A query replica with nothing to serve says so before it imports TensorFlow (~5 s of CPU on these machines): an
operator's typo answers at once, and a crash-looping pod does not spend a TensorFlow import per restart."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from query_service.server import main
try:
    main(["--registry", sys.argv[1], "--model", "m", "--index-address", "127.0.0.1:1", "--port", "0"])
except SystemExit as e:
    print(e)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


def test_a_replica_without_current_stops_before_tensorflow_loads(tmp_path):
    (tmp_path / "m").mkdir()
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert "cannot start" in proc.stdout and "CURRENT does not exist" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("tensorflow imported: False"), proc.stdout
