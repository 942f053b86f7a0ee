"""Command line: build a Config from flags and call into the package. No logic here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, load_config


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cacheproxy", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--upstream", help="the one upstream registry URL (shortcut)")
    serve.add_argument("--cache-dir", type=Path, dest="cache_dir", help="cache directory")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 0.0.0.0:5000)")
    serve.add_argument("--tag-ttl", type=float, dest="tag_ttl", help="tag freshness, seconds")
    serve.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], help="event loop")
    serve.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ...")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flags = vars(args)
    try:
        config = load_config(file=flags.pop("config", None), flags=flags)
    except ConfigError as exc:
        print(f"cacheproxy: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        from .app import serve

        serve(config)
    return 0
