"""Connect to Ray the same way from the CLI, the jobs, the benchmarks and the tests.

- Already connected (a test fixture, a caller that set Ray up itself): reuse it.
- ``RAY_ADDRESS`` set (a driver started by ``ray job submit``, or a user pointing at a
  cluster): ``ray.init()`` connects there, so the job runs unchanged on a cluster.
- ``address="local"``: start an embedded Ray for this process.
- ``"auto"``, ``"host:port"``, ``"ray://host:port"``: connect to that cluster.

Authentication: Ray 2.59+ turns token authentication on for local clusters and generates
the token itself (``~/.ray/auth_token``) when it starts one, so the embedded Ray needs no
setting. A remote cluster started with ``RAY_AUTH_MODE=token`` needs its token in this
process's environment (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), as Ray documents;
``ray job submit`` passes it to the driver, so jobs never handle it.

A cluster address is checked before Ray connects (:func:`check_reachable`): Ray's driver
retries a GCS that is gone without end, and ``auto`` keeps resolving to the address a cluster
stopped without ``ray stop`` (killed, out of memory, a reboot that kept /tmp) left in Ray's
address file.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray
from ray._common.utils import get_ray_address_file
from ray._private.services import canonicalize_bootstrap_address

from fmtrade.errors import FmtradeError

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 3.0


class ClusterUnreachable(FmtradeError, ConnectionError):
    """Nothing listens at the cluster address Ray would connect to (the CLI reports it in one line)."""


def check_reachable(address: str) -> None:
    """Raise :class:`ClusterUnreachable` unless a GCS listens where ``address`` (``host:port`` or
    ``auto``) leads. Ray's driver would retry a dead GCS for good, logging warnings only (over
    10 minutes seen here). Ray client addresses (``ray://``) are left to Ray."""
    if "://" in address:
        return
    try:
        resolved = canonicalize_bootstrap_address(address)  # auto: RAY_ADDRESS, the address file, a running GCS
        if resolved is None:
            return
        host, _, port = resolved.rpartition(":")
        endpoint = (host.strip("[]"), int(port))
    except ValueError:
        raise ClusterUnreachable(f"{address!r} is not a Ray address (host:port, auto or ray://host:port)") from None
    try:
        socket.create_connection(endpoint, timeout=_PROBE_TIMEOUT_S).close()
    except OSError:
        if address != "auto":
            raise ClusterUnreachable(f"no Ray cluster answers at {address}") from None
        reason = f"no Ray cluster answers at {resolved}, the address `auto` found"
        address_file = get_ray_address_file(None)
        if not os.environ.get("RAY_ADDRESS") and os.path.isfile(address_file):
            reason += (
                f" in {address_file} (a cluster stopped without `ray stop` leaves it behind;"
                " delete the file if that cluster is gone)"
            )
        raise ClusterUnreachable(reason) from None


def init_ray(address: str | None = "local", num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to (or start) Ray once; ``num_cpus`` sizes an embedded Ray only."""
    if ray.is_initialized():
        return
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to the Ray cluster at RAY_ADDRESS=%s", os.environ["RAY_ADDRESS"])
        check_reachable(os.environ["RAY_ADDRESS"])
        ray.init(**{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    elif address in (None, "local"):
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        check_reachable(address)
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})


def portable(exc: FmtradeError) -> FmtradeError:
    """A copy that survives pickling across Ray (InputError's two-argument constructor does not)."""
    return FmtradeError(str(exc))


def get(refs: Any) -> Any:
    """``ray.get`` that turns a remote user error, or a worker lost for good, into one clear FmtradeError."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, FmtradeError):
            raise FmtradeError(str(exc.cause)) from None
        raise
    except ray.exceptions.RayError as exc:  # a worker died (out of memory, node lost) after its retries
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise FmtradeError(f"Ray worker failed: {first}") from None
