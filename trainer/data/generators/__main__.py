"""``python -m trainer.data.generators SHAPE --out DIR [--seed N] [--interactions N]``:
writes a data set and prints the ``recsys-train`` command that trains on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from settings.flags import ConfigError
from trainer.data.generators import SHAPES, generate
from trainer.data.generators.common import GeneratorConfig


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trainer.data.generators", description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=SHAPES, help="the data set's shape")
    parser.add_argument("--out", type=Path, required=True, help="folder the files are written to (made if missing)")
    parser.add_argument("--seed", type=int, help=f"random seed (default {GeneratorConfig.seed})")
    parser.add_argument("--interactions", type=int,
                        help=f"interaction rows, about (default {GeneratorConfig.interactions:,})")
    parser.add_argument("--registry", default="./registry", help="registry the printed command publishes to")
    args = parser.parse_args(argv)
    changes = {name: getattr(args, name) for name in ("seed", "interactions") if getattr(args, name) is not None}
    try:
        data = generate(args.shape, args.out, **changes)
    except ConfigError as e:
        parser.error(f"--{e.field} {e.message}")
    except OSError as e:  # --out a file, or where nothing can be written
        parser.error(f"--out: cannot write {e.filename or args.out}: {e.strerror or e}")
    print(f"wrote {data.rows:,} interactions: {', '.join(map(str, data.files))}", file=sys.stderr)
    print(data.command(args.registry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
