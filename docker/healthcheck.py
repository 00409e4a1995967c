#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when the container's role (``HPO_ROLE``) is serving.

  mlflow      GET http://127.0.0.1:5000/health
  ray-head    GET http://127.0.0.1:8265/api/gcs_healthz            (dashboard: GCS is up)
  ray-worker  GET http://127.0.0.1:52365/api/local_raylet_healthz  (the node's dashboard agent)
  client      the hpo package imports

The ports are the container-side ones of docker/compose.yaml; ``HPO_HEALTH_URL`` overrides the URL.

The Ray endpoints answer without the cluster's auth token (Ray exempts its health checks).
Standard library only, so the check costs a fraction of a second.
"""

from __future__ import annotations

import os
import sys
import urllib.request

CHECKS = {
    "mlflow": "http://127.0.0.1:5000/health",
    "ray-head": "http://127.0.0.1:8265/api/gcs_healthz",
    "ray-worker": "http://127.0.0.1:52365/api/local_raylet_healthz",
}


def main() -> int:
    role = os.environ.get("HPO_ROLE", "client")
    if role not in CHECKS:
        import hpo  # noqa: F401  - the client has nothing to serve; it is healthy if hpo loads

        return 0
    url = os.environ.get("HPO_HEALTH_URL") or CHECKS[role]
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            ok = resp.status == 200
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy"
        print(f"{role}: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"{role}: {url}: HTTP {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
