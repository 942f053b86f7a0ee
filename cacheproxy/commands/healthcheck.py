"""``python -m cacheproxy.commands.healthcheck``: exit 0 if the local proxy answers, else 1.

The container image's ``HEALTHCHECK``. It finds the proxy the way ``serve`` does
(``CACHEPROXY_CONFIG``, ``CACHEPROXY_LISTEN``, ...), so a port changed in the config
file or the environment needs no second edit here. Standard library only, and no
event loop: it runs every few seconds in a fresh interpreter.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from ..config import Config, ConfigError, load_config

# /healthz: the process answers. Docker restarts nothing on its own, so an unready
# proxy (cache disk full, say) is for /readyz and an orchestrator to judge.
PATH = "/healthz"
TIMEOUT = 3.0


def local_base(config: Config) -> str:
    """The proxy's own URL from inside its host or container (https with TLS on)."""
    url = config.local_url
    return "https" + url.removeprefix("http") if config.tls_cert is not None else url


def check(url: str, timeout: float = TIMEOUT) -> str | None:
    """None if ``url`` answers 200, else why not."""
    context = None
    if url.startswith("https:"):
        # Is this process alive, on loopback: the certificate names the proxy's public
        # host, not 127.0.0.1, and checking who answers is not the point here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            if resp.status != 200:
                return f"{url} answered {resp.status}"
    except (OSError, urllib.error.URLError) as exc:
        return f"{url}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Check ``PATH`` (or the path given) on the proxy the environment describes."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = args[0] if args else PATH
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    problem = check(local_base(config) + path)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
