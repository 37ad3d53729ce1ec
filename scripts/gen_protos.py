"""Generates the Python gRPC stubs in protos/ from the .proto files.

The stubs are committed; tests/unit/test_protos_current.py regenerates them into
a temporary directory and fails if the committed ones differ, so they cannot
drift from the .proto sources. Generating into the repository also adds what is
new to protos/api.lock.json, and fails on a change that breaks clients built on it
(scripts/proto_lock.py). Run after editing a .proto:

    .venv/bin/python scripts/gen_protos.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def proto_files() -> list[Path]:
    return sorted((ROOT / "protos").rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto under protos/."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    out = parser.parse_args().out
    if out.resolve() == ROOT:
        import proto_lock

        if proto_lock.main([]):  # a break: the stubs stay those of the released API
            return 1
    generate(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
