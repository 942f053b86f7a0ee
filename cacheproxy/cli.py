"""Command line: build a Config from flags and call into the package. No logic here."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

from . import logs
from .config import Config, ConfigError, load_config
from .errors import RegistryError
from .store.lock import CacheBusy


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="cacheproxy", description="A pull-through caching proxy for container registries."
    )
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--upstream", help="the one upstream registry URL (shortcut)")
    serve.add_argument("--cache-dir", type=Path, dest="cache_dir", help="cache directory")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 0.0.0.0:5000)")
    serve.add_argument("--tag-ttl", type=float, dest="tag_ttl", help="tag freshness, seconds")
    serve.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], help="event loop")
    serve.add_argument(
        "--offline", action="store_const", const=True, help="serve only the cache; never dial out"
    )
    serve.add_argument("--max-size", dest="max_size", help='cache limit: "50GB", "80%%"')
    serve.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ...")
    serve.add_argument(
        "--peer",
        dest="peers",
        action="append",
        metavar="URL",
        help="a cluster peer (repeatable; this node's own URL may be in the list)",
    )
    serve.add_argument(
        "--peers-dns",
        dest="peers_dns",
        metavar="NAME:PORT",
        help="peers from a DNS name, re-resolved every few seconds",
    )
    serve.add_argument(
        "--peers-file",
        dest="peers_file",
        type=Path,
        help="peers from a file of URLs, re-read when it changes",
    )
    serve.add_argument("--self", dest="self_url", metavar="URL", help="this node's peer URL")
    serve.add_argument(
        "--peer-listen",
        dest="peer_listen",
        metavar="HOST:PORT",
        help="a listener for peers only (the signed peer path and the probes)",
    )
    serve.add_argument(
        "--metrics-listen",
        dest="metrics_listen",
        metavar="HOST:PORT",
        help="a listener for Prometheus only (/metrics and the probes)",
    )
    serve.add_argument(
        "--no-peer-holders",
        dest="peer_holders",
        action="store_const",
        const=False,
        help="take each blob from its owner alone (no pieces from other holders)",
    )
    serve.add_argument(
        "--peer-secret-file",
        dest="peer_secret_file",
        type=Path,
        help="shared secret that peers sign their requests with",
    )
    report = sub.add_parser("report", help="what the cache saved: bytes, pulls, dollars")
    report.add_argument("--config", type=Path, help="TOML config file (the one serve uses)")
    report.add_argument("--cache-dir", type=Path, dest="cache_dir", help="cache directory")
    report.add_argument("--upstream", help="the one upstream registry URL (as given to serve)")
    report.add_argument("--pricing-file", type=Path, dest="pricing_file", help="own price table")
    report.add_argument("--since", help="first UTC day, YYYY-MM-DD or YYYY-MM (default: month)")
    report.add_argument("--until", help="last UTC day, YYYY-MM-DD or YYYY-MM (default: today)")
    report.add_argument("--top", type=int, default=10, help="repositories listed (default 10)")
    shape = report.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_const", const="json", dest="fmt", help="JSON")
    shape.add_argument("--csv", action="store_const", const="csv", dest="fmt", help="CSV")
    peers = sub.add_parser("peers", help="show a running node's cluster view")
    peers.add_argument("--config", type=Path, help="TOML config file (to find the node)")
    peers.add_argument("--url", help="the node's URL (default: from the config's listen)")
    peers.add_argument("--key", help="a digest or tag key: show who owns it")
    peers.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    client = sub.add_parser("client-config", help="node settings pointing a runtime at the proxy")
    client.add_argument("runtime", choices=["containerd", "cri-o", "docker"])
    client.add_argument("--config", type=Path, help="TOML config file (the one serve uses)")
    client.add_argument("--upstream", help="the one upstream registry URL (as given to serve)")
    client.add_argument("--mirror", help="the proxy's URL from the node (default: local listen)")
    client.add_argument("--out", type=Path, help="write the files under this directory")
    _cache_tools(sub)
    return top


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (the one serve uses)")
    p.add_argument("--cache-dir", type=Path, dest="cache_dir", help="cache directory")
    p.add_argument("--upstream", help="the one upstream registry URL (as given to serve)")


def _cache_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gc = sub.add_parser("gc", help="apply the lifecycle rules to the cache")
    _cache_args(gc)
    gc.add_argument("--dry-run", action="store_true", dest="dry_run", help="only print the plan")
    gc.add_argument(
        "--shared",
        action="store_true",
        help="expire the shared tier's objects (shared.expire_days)",
    )
    ls = sub.add_parser("ls", help="list cached repositories, tags, digests and sizes")
    _cache_args(ls)
    ls.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    verify = sub.add_parser("verify", help="hash every cached blob; remove any that is wrong")
    _cache_args(verify)
    prefetch = sub.add_parser("prefetch", help="warm the cache with images")
    _cache_args(prefetch)
    prefetch.add_argument("images", nargs="*", help="[registry/]name[:tag|@digest]")
    prefetch.add_argument("-f", "--file", type=Path, dest="image_file", help="one image a line")
    prefetch.add_argument("--platform", help="os/arch[/variant] of an index (default: all)")
    export = sub.add_parser("export", help="write cached images as an OCI layout tar")
    _cache_args(export)
    export.add_argument("images", nargs="*", help="[registry/]name[:tag|@digest]")
    export.add_argument("-f", "--file", type=Path, dest="image_file", help="one image a line")
    export.add_argument("-o", "--output", type=Path, required=True, help="bundle.tar")
    imp = sub.add_parser("import", help="verify and load an OCI layout tar into the cache")
    _cache_args(imp)
    imp.add_argument("bundle", type=Path)


def _images(args: argparse.Namespace) -> list[str]:
    from .commands.airgap import read_list

    images = list(args.images)
    if args.image_file is not None:
        images += read_list(args.image_file)
    return images


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flags = vars(args)
    try:
        config = load_config(file=flags.pop("config", None), flags=flags)
    except ConfigError as exc:
        print(f"cacheproxy: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    try:
        return _run(args, config)
    except CacheBusy as exc:
        print(f"cacheproxy {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, RegistryError, OSError, tarfile.TarError) as exc:
        # A bundle, a list or an image that cannot be used: say which, no traceback.
        message = exc.message if isinstance(exc, RegistryError) else str(exc)
        print(f"cacheproxy {args.command}: {message}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, config: Config) -> int:
    command = args.command
    if command == "serve":
        from .commands import serve

        serve.run(config)
    elif command == "report":
        from .commands import report

        return report.run(config, args.since, args.until, args.fmt or "table", args.top)
    elif command in ("gc", "ls", "verify"):
        from .commands import cache

        if command == "gc" and args.shared:
            from .commands.shared import gc_shared

            return gc_shared(config, args.dry_run)
        if command == "gc":
            return cache.gc(config, args.dry_run)
        if command == "ls":
            return cache.ls(config, args.as_json)
        return cache.verify(config)
    elif command in ("prefetch", "export", "import"):
        from .commands import airgap

        if command == "prefetch":
            return 1 if asyncio.run(airgap.prefetch(config, _images(args), args.platform)) else 0
        if command == "export":
            count = asyncio.run(airgap.export(config, _images(args), args.output))
            print(f"wrote {args.output}: {count} blobs")
            return 0
        result = airgap.import_bundle(config, args.bundle)
        print(f"imported {result.blobs} blobs ({result.already} already cached)")
        for tag in result.tags:
            print(f"  {tag}")
    elif command == "peers":
        from .commands import peers

        return peers.run(config, args.url, args.key, args.as_json)
    elif command == "client-config":
        from .commands import client_config

        return client_config.run(config, args.runtime, args.mirror, args.out)
    return 0
