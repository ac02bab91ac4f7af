"""python -m e2e.image build|ref|import — the Ekko image without Docker; see e2e/image/build.py."""

from __future__ import annotations

import argparse
import sys
import time

from e2e.cluster import control, hostpkgs, realnode
from e2e.image import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image into $EKKO_CACHE/images (cached by inputs)")
    b.add_argument("--force", action="store_true", help="rebuild the app layer")
    b.add_argument(
        "--import",
        dest="import_",
        action="store_true",
        help="also import it into the real node's containerd (must be running)",
    )
    sub.add_parser("ref", help="print the image reference of the current sources")
    args = parser.parse_args(argv)
    try:
        if args.command == "ref":
            print(build.ekko_ref())
            return 0
        started = time.monotonic()
        archive, ref = build.build_ekko(force=args.force)
        print(f"{ref} in {archive} ({time.monotonic() - started:.1f}s)")
        if args.import_:
            if not control.running("containerd"):
                print("error: the real node is not running (python -m e2e.cluster up --real-node)")
                return 1
            took = build.import_image(archive, ref)
            print(f"imported {ref} ({took:.1f}s)" if took else f"{ref} already imported")
    except (build.ImageError, hostpkgs.PackageError, realnode.ClusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
