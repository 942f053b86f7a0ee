"""Wait until a URL answers (any HTTP status), from inside a namespace. Standard library only.

    ip netns exec NS python3 -m benchmarks.netbed.probe URL [SECONDS]

Exit 0 once ``URL`` answers, 1 if it does not within ``SECONDS`` (default 30).
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[0]
    deadline = time.monotonic() + (float(argv[1]) if len(argv) > 1 else 30.0)
    # Never an http_proxy from the environment: the address is inside the bed.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=1.0):
                return 0
        except urllib.error.HTTPError as exc:
            exc.close()
            return 0
        except OSError:
            time.sleep(0.05)
    print(f"{url} did not answer", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
