"""``cacheproxy serve``: run the proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging

from .. import server
from ..app import build_app
from ..config import Config, ConfigError
from ..errors import RegistryError
from ..store.lock import CacheBusy

log = logging.getLogger(__name__)


def new_loop(config: Config) -> asyncio.AbstractEventLoop:
    """The event loop the config asks for.

    "auto" is the default asyncio loop, chosen with numbers (benchmarks/RESULTS.md):
    it sends cached blobs with the kernel's sendfile (0.14 s of CPU per GB served
    against uvloop's 0.20, nginx 0.13) at the same throughput, and under a thousand
    busy connections it keeps accepting new ones, where uvloop fell behind.
    """
    if config.loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(config: Config) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = new_loop(config)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(server.run(build_app(config), config))
    except RegistryError:
        # Before OSError: an UpstreamUnavailable is one too (errors.py); cli.main says it.
        raise
    except OSError as exc:
        # A port in use, an unwritable cache directory: say so, no traceback.
        log.error("cannot serve on %s with cache %s: %s", config.listen, config.cache_dir, exc)
        raise SystemExit(1) from None
    except ConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    except CacheBusy as exc:
        log.error("cannot serve: %s", exc)
        raise SystemExit(1) from None
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
