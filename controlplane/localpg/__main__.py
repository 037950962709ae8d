"""``python -m controlplane.localpg start|stop|status|destroy --data-dir D [--fast]`` (standard library only)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from controlplane.errors import ConfigError
from controlplane.localpg import LocalCluster, start_local
from controlplane.localpg import __doc__ as _PACKAGE_DOC
from controlplane.localpg.system import HOST


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m controlplane.localpg start|stop|status|destroy --data-dir D [--fast]``."""
    parser = argparse.ArgumentParser(
        prog="python -m controlplane.localpg", description=(_PACKAGE_DOC or "").split("\n")[0]
    )
    parser.add_argument("command", choices=["start", "stop", "status", "destroy"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CARDVAULT_DATA_DIR") or ".cardvault"),
        help="the cluster lives in DATA_DIR/postgres (default: $CARDVAULT_DATA_DIR or .cardvault)",
    )
    parser.add_argument("--fast", action="store_true", help="test settings: fsync, synchronous_commit off")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="localpg: %(message)s", stream=sys.stderr)
    cluster = LocalCluster(args.data_dir / "postgres", fast=args.fast)
    try:
        if args.command == "start":
            print(start_local(args.data_dir, fast=args.fast))
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "destroy":
            cluster.destroy()
        elif cluster.is_running():
            port = cluster.port()
            print(f"running on {HOST}:{port} ({cluster.home})")
        else:
            print(f"stopped ({cluster.root})" if cluster.home is not None else f"absent ({cluster.root})")
            return 3
    except ConfigError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
