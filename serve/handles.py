"""Deployment handles remade in the replica that calls them.

A handle passed to a deployment's constructor was pickled by the process that built the
application (the ``fmtrade serve up`` driver, Ray's app builder) and keeps that process's
default transport. A driver that imported Ray Serve before ``RAY_SERVE_USE_GRPC_BY_DEFAULT=1``
was set (``fmtrade.jobs.ray_runtime.start_local_ray`` sets it when it starts Ray) hands out handles that
send every call as a Ray actor call, although every replica serves gRPC: measured on the
2-core VM, ~20% more machine CPU per request with batching on, ~40% with it off
(docs/BENCHMARKS.md). A handle made in the replica follows the replica's own Serve settings,
which are the cluster's.
"""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle


def rebind(handle: DeploymentHandle) -> DeploymentHandle:
    """A handle to the same deployment with this process's Serve transport settings."""
    return serve.get_deployment_handle(handle.deployment_name, handle.app_name)


def rebind_all(handles: dict[str, DeploymentHandle]) -> dict[str, DeploymentHandle]:
    return {name: rebind(handle) for name, handle in handles.items()}
