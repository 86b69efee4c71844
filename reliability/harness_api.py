"""The harness's API process: the product API (``launch.serve api``) with one test-only knob.

    python -m reliability.harness_api

``CRASH_HARNESS_STALE_AFTER`` (seconds): after how long an ``Idempotency-Key`` reservation left
"in flight" by a killed API process is taken over by a retry (``api.idempotency.STALE_AFTER``, 10
minutes in the product). The harness kills the API in the middle of requests; with the product
value every such key would hold its client for 10 minutes.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

if __name__ == "__main__":
    stale = os.environ.get("CRASH_HARNESS_STALE_AFTER")
    if stale:
        import api.idempotency

        api.idempotency.STALE_AFTER = timedelta(seconds=float(stale))
    from launch.serve import main

    sys.exit(main(["api"]))
