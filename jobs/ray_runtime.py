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
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from fmtrade.errors import FmtradeError

log = logging.getLogger(__name__)


def init_ray(address: str | None = "local", num_cpus: int | None = None, **kwargs: Any) -> None:
    """Connect to (or start) Ray once; ``num_cpus`` sizes an embedded Ray only."""
    if ray.is_initialized():
        return
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to the Ray cluster at RAY_ADDRESS=%s", os.environ["RAY_ADDRESS"])
        ray.init(**{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    elif address in (None, "local"):
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
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
