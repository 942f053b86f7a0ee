"""Command line: build a Config from flags and call into the package. No logic here."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import logs
from .config import Config, ConfigError, load_config
from .config.fields import Setting
from .config.table import CONFIG_FILE, flags_of
from .errors import RegistryError
from .store.lock import CacheBusy

# The subcommands, in the order --help lists them.
_COMMANDS = {
    "serve": "run the proxy",
    "report": "what the cache saved: bytes, pulls, dollars",
    "peers": "show a running node's cluster view",
    "refresh": "have a running node ask the upstream what tags name now",
    "client-config": "node settings pointing a runtime at the proxy",
    "node": "check, install or uninstall the runtime's mirror settings on this node",
    "gc": "apply the lifecycle rules to the cache",
    "ls": "list cached repositories, tags, digests and sizes",
    "verify": "hash every cached blob; remove any that is wrong",
    "prefetch": "warm the cache with images",
    "export": "write cached images as an OCI layout tar",
    "import": "verify and load an OCI layout tar into the cache",
}


def parser() -> argparse.ArgumentParser:
    """Every subcommand: its own arguments, and a flag for each setting it takes
    (from the settings table: config/table.py)."""
    top = argparse.ArgumentParser(
        prog="cacheproxy", description="A pull-through caching proxy for container registries."
    )
    sub = top.add_subparsers(dest="command", required=True)
    for command, summary in _COMMANDS.items():
        p = sub.add_parser(command, help=summary)
        _own_arguments(command, p)
        for setting in flags_of(command):
            _add_flag(p, setting)
    return top


def _add_flag(p: argparse.ArgumentParser, setting: Setting) -> None:
    """The flag of ``setting``: a value of its type, a repeatable one for a list, a
    switch for a bool (``--no-...`` turns it off); not given: None, so the
    environment and the file decide."""
    flag = setting.flag
    assert flag is not None
    text = setting.doc + (" (repeatable)" if setting.kind is tuple else "")
    if setting.default_text != "none" and setting.kind is not bool:
        text += f" (default: {setting.default_text})"
    text = text.replace("%", "%%")  # argparse formats help with %
    if setting.kind is bool:
        on = not flag.option.startswith("--no-")
        text = text if on else f"turn {setting.name} off ({text})"
        p.add_argument(flag.option, dest=setting.name, action="store_const", const=on, help=text)
    elif setting.kind is tuple:
        p.add_argument(
            flag.option, dest=setting.name, action="append", metavar=flag.metavar, help=text
        )
    else:
        p.add_argument(
            flag.option,
            dest=setting.name,
            type=setting.kind if setting.kind in (int, float, Path) else str,
            metavar=flag.metavar,
            choices=flag.choices,
            help=text,
        )


def _own_arguments(command: str, p: argparse.ArgumentParser) -> None:
    """The arguments of ``command`` that are not settings."""
    if command == "report":
        p.add_argument("--since", help="first UTC day, YYYY-MM-DD or YYYY-MM (default: month)")
        p.add_argument("--until", help="last UTC day, YYYY-MM-DD or YYYY-MM (default: today)")
        p.add_argument("--top", type=int, default=10, help="repositories listed (default 10)")
        shape = p.add_mutually_exclusive_group()
        shape.add_argument("--json", action="store_const", const="json", dest="fmt", help="JSON")
        shape.add_argument("--csv", action="store_const", const="csv", dest="fmt", help="CSV")
    elif command == "peers":
        p.add_argument("--url", help="the node's URL (default: from the config's listen)")
        p.add_argument("--key", help="a digest or tag key: show who owns it")
        p.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    elif command == "refresh":
        p.add_argument("images", nargs="+", help="[registry/]name:tag")
        p.add_argument("--url", help="the node's URL (default: from the config's listen)")
    elif command == "client-config":
        p.add_argument("runtime", choices=["containerd", "cri-o", "docker"])
        p.add_argument("--mirror", help="the proxy's URL from the node (default: local listen)")
        p.add_argument("--out", type=Path, help="write the files under this directory")
    elif command == "node":
        _node_arguments(p)
    elif command == "gc":
        p.add_argument("--dry-run", action="store_true", dest="dry_run", help="only print the plan")
        p.add_argument(
            "--shared",
            action="store_true",
            help="expire the shared tier's objects (shared.expire_days)",
        )
    elif command == "ls":
        p.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    elif command in ("prefetch", "export"):
        p.add_argument("images", nargs="*", help="[registry/]name[:tag|@digest]")
        p.add_argument("-f", "--file", type=Path, dest="image_file", help="one image a line")
        _no_referrers(p)
        if command == "prefetch":
            p.add_argument("--platform", help="os/arch[/variant] of an index (default: all)")
            p.add_argument(
                "--cluster",
                action="store_true",
                help="on a running cluster: each blob onto its owner and --copies more nodes",
            )
            p.add_argument(
                "--copies", type=int, default=2, help="nodes besides the owner (--cluster)"
            )
            p.add_argument("--url", help="the node's URL (--cluster; default: from listen)")
        else:
            p.add_argument("-o", "--output", type=Path, required=True, help="bundle.tar")
    elif command == "import":
        p.add_argument("bundle", type=Path)
        _no_referrers(p)


def _no_referrers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-referrers",
        action="store_false",
        dest="referrers",
        help="leave out each image's referrers and signatures (taken by default)",
    )


def _node_arguments(p: argparse.ArgumentParser) -> None:
    from .commands.node import ACTIONS
    from .node import RUNTIMES, SNAPSHOTTERS

    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--runtime", required=True, choices=list(RUNTIMES))
    p.add_argument(
        "--root", type=Path, default=Path("/"), help="the host's / (an init container's mount)"
    )
    p.add_argument("--mirror", help="the proxy's URL from the node (default: local listen)")
    p.add_argument("--dry-run", action="store_true", dest="dry_run", help="print the diff")
    p.add_argument(
        "--with",
        dest="with_",
        default="",
        help=f"also the snapshotters' own mirror sections: {','.join(SNAPSHOTTERS)}",
    )
    p.add_argument("--binary", type=Path, help="the runtime's binary (default: looked for)")
    p.add_argument(
        "--skip", action="append", default=[], help="a check not to run (repeatable): mirror"
    )


def load(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    """The Config a parsed command line names: its flags over ``env`` (default: the
    process environment) over the file (``--config``, else CACHEPROXY_CONFIG)."""
    flags = dict(vars(args))
    return load_config(file=flags.pop(CONFIG_FILE.name, None), env=env, flags=flags)


def _images(args: argparse.Namespace) -> list[str]:
    from .commands.airgap import read_list

    images = list(args.images)
    if args.image_file is not None:
        images += read_list(args.image_file)
    return images


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = load(args)
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

        if command == "prefetch" and args.cluster:
            from .commands import preheat

            return preheat.run(
                config, args.url, _images(args), args.copies, args.platform, args.referrers
            )
        if command == "prefetch":
            failed = airgap.prefetch(config, _images(args), args.platform, referrers=args.referrers)
            return 1 if asyncio.run(failed) else 0
        if command == "export":
            written = airgap.export(config, _images(args), args.output, args.referrers)
            print(f"wrote {args.output}: {asyncio.run(written)} blobs")
            return 0
        result = airgap.import_bundle(config, args.bundle, args.referrers)
        print(f"imported {result.blobs} blobs ({result.already} already cached)")
        for tag in result.tags:
            print(f"  {tag}")
    elif command == "refresh":
        from .commands import refresh

        return refresh.run(config, args.url, list(args.images))
    elif command == "peers":
        from .commands import peers

        return peers.run(config, args.url, args.key, args.as_json)
    elif command == "client-config":
        from .commands import client_config

        return client_config.run(config, args.runtime, args.mirror, args.out)
    elif command == "node":
        from .commands import node

        return node.run(
            config,
            args.action,
            args.runtime,
            args.root,
            args.mirror,
            dry_run=args.dry_run,
            with_=[w for w in args.with_.split(",") if w],
            binary=args.binary,
            skip=args.skip,
        )
    return 0
