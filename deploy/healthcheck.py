"""The image's HEALTHCHECK: the role's liveness probe answers 200.

The api serves ``/health/live`` on ``TASKMILL_PORT``; worker and manager on
``TASKMILL_METRICS_PORT``. Exit 0 when either answers 200 within the timeout, else 1.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    ports = [os.environ.get("TASKMILL_METRICS_PORT", "9100"), os.environ.get("TASKMILL_PORT", "8000")]
    for port in ports:
        if not port or port == "0":
            continue
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=3) as resp:
                if resp.status == 200:
                    return 0
        except OSError:
            continue
    return 1


if __name__ == "__main__":
    sys.exit(main())
