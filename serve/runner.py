"""Start, inspect and stop the Serve application (what ``fmtrade serve up|status|down`` do).

``up`` reads a Ray Serve config file (``serve/config.yaml`` format), builds each
application's graph as ``fmtrade.serve.app.build_app`` does and runs it:

* on the Ray cluster at ``--address`` (default: the one running on this machine,
  if any); the applications outlive the command;
* else on an embedded Ray in this process (foreground, until Ctrl-C/SIGTERM), or
  with ``--detach`` in a background ``fmtrade serve up --address local`` process
  that ``down`` stops with SIGTERM. Ray's own defaults apply to authentication: the
  embedded Ray creates its token itself, nothing is asked of the user. The embedded Ray
  counts at least the CPUs the replicas reserve at start (:func:`embedded_cpus`).

``$FMTRADE_HOME/serve/state.json`` remembers the URL (and the background pid), so
``status`` and ``down`` find what ``up`` started.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve as ray_serve
from ray.serve import Application

from fmtrade.config import Settings
from fmtrade.errors import ConfigError, FmtradeError, InputError
from fmtrade.io import write_json_atomic
from fmtrade.jobs.ray_runtime import ClusterUnreachable, init_ray, ray_cpu_count, start_local_ray
from fmtrade.serve.app import build_graph, cpus_at_start, served_models
from fmtrade.serve.options import AppConfig

log = logging.getLogger(__name__)

_GIVE_UP_GRACE_S = 30.0  # for a detached service to report its own start timeout

PACKAGED_CONFIG = Path(__file__).with_name("config.yaml")
# Ray presents this machine's token only to a cluster it finds itself (``auto``), never to an
# explicit address: there a cluster with token authentication refuses a client without the mode.
_TOKEN_HINT = (
    " (a cluster with token authentication also refuses a client without RAY_AUTH_MODE=token;"
    " the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
)


def embedded_cpus(needed: float) -> int | None:
    """The CPU count of an embedded Ray that must place ``needed`` CPUs of replicas: None (Ray's
    own count of this machine's cores) when they fit, else ``needed`` rounded up. Ray's CPUs are
    scheduling units: on a machine smaller than the application (the packaged config serving the
    whole zoo reserves 2.7 CPUs) the replicas then share the cores instead of waiting for ever."""
    cores = ray_cpu_count()
    if needed <= cores:
        return None
    log.warning(
        "the application's replicas reserve %.2f CPUs at start; the embedded Ray counts %d on this "
        "%g-core machine, so they share its cores",
        needed, math.ceil(needed), cores,
    )  # fmt: skip
    return math.ceil(needed)


def state_path(settings: Settings) -> Path:
    return settings.home / "serve" / "state.json"


def read_config(path: str | os.PathLike[str] | None, settings: Settings) -> tuple[Path, dict[str, Any]]:
    """The Serve config document: ``path``, else ``serve.config`` if it exists, else the packaged one."""
    candidates = [Path(path)] if path else [Path(settings.serve.config), PACKAGED_CONFIG]
    for candidate in candidates:
        file = candidate.expanduser()
        if file.is_file():
            try:
                doc = yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"serve config {file} is not valid YAML: {exc}") from exc
            if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list) or not doc["applications"]:
                raise ConfigError(f"serve config {file}: `applications` must be a non-empty list")
            return file, doc
    raise ConfigError(f"serve config {candidates[0]} does not exist")


def _connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (None: the running one, if any); False when there is none
    and the caller should run Ray itself."""
    if address == "local":
        return False
    try:
        init_ray(address or "auto")
    except ClusterUnreachable as exc:
        if address is not None:
            raise  # an FmtradeError: one line naming the address
        log.warning("%s: not using it", exc)
        return False
    except ConnectionError:
        if address is not None:
            hint = "" if os.environ.get("RAY_AUTH_MODE") else _TOKEN_HINT
            raise FmtradeError(f"no Ray cluster answers at --address {address}{hint}") from None
        return False
    return True


def log_path(settings: Settings) -> Path:
    """Where a detached service writes its output."""
    return state_path(settings).with_name("serve.log")


def _last_line_of(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip()[-300:] if lines else ""


def _last_line(path: Path) -> str:
    try:
        return _last_line_of(path.read_text(errors="replace"))
    except OSError:
        return ""


def _spawn_detached(
    settings: Settings, config: Path, host: str, port: int, fmtrade_config: str | None, ready_timeout_s: float
) -> int:
    """Run the foreground server (embedded Ray) as a background session of its own; return its pid."""
    log_path(settings).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fmtrade"]
    if fmtrade_config:
        cmd += ["--config", fmtrade_config]
    cmd += ["serve", "up", "--address", "local", "--config", str(config), "--host", host, "--port", str(port),
            "--ready-timeout", str(ready_timeout_s)]  # fmt: skip
    with log_path(settings).open("ab") as log_file:
        child = subprocess.Popen(cmd, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
                                 start_new_session=True)  # fmt: skip
    return child.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reusing the pid: not ours, but alive
        return True
    try:
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


class NotReadyInTime(FmtradeError):
    """The service did not answer ``/readyz`` before the deadline."""


def wait_ready(url: str, timeout_s: float, still_starting: Callable[[], None] | None = None) -> dict[str, Any]:
    """Poll ``/readyz`` until every model deployment answers. ``still_starting`` is called before
    each poll and raises (an FmtradeError saying why) once the start has failed for good."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if still_starting is not None:
            still_starting()
        try:
            response = httpx.get(f"{url}/readyz", timeout=10)
            if response.status_code == 200:
                return response.json()
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise NotReadyInTime(f"the service at {url} was not ready after {timeout_s:g}s: {last}")


def _process_alive(pid: int) -> Callable[[], None]:
    def check() -> None:
        if not _alive(pid):
            raise FmtradeError("the service process exited before it was ready")

    return check


def _deploying(apps: list[str]) -> Callable[[], None]:
    def check() -> None:
        statuses = ray_serve.status().applications
        failed = [statuses[app] for app in apps if app in statuses and _text(statuses[app].status) == "DEPLOY_FAILED"]
        if failed:
            # Each failed deployment's message ends with its replicas' exception: the reason.
            reasons = [f"{name}: {_last_line_of(dep.message)}" for app in failed for name, dep in _unhealthy(app)]
            raise FmtradeError(f"the application failed to deploy ({'; '.join(reasons)})")

    return check


def deploy(apps: list[tuple[str, str, Application]], ready_url: str, timeout_s: float) -> dict[str, Any]:
    """Deploy ``apps`` (name, route prefix, graph) on the running Serve and wait until ``ready_url``
    is ready. Serve's own deploy call waits without a deadline (a replica that can never be placed
    would hold the caller for good) and raises a bare RuntimeError when a deployment fails; this
    wait has a deadline, fails as soon as a deployment does, with its replicas' exception, and on
    timeout names the deployments that are not running."""
    targets = [ray_serve.RunTarget(app, name=name, route_prefix=prefix) for name, prefix, app in apps]
    ray_serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    names = [name for name, _, _ in apps]
    try:
        return wait_ready(ready_url, timeout_s, _deploying(names))
    except NotReadyInTime as exc:
        raise FmtradeError(f"{exc}; not running: {_not_running(names)}") from None


def up(
    settings: Settings,
    config: str | None = None,
    address: str | None = None,
    host: str | None = None,
    port: int | None = None,
    detach: bool = False,
    fmtrade_config: str | None = None,
    ready_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Deploy every application of the config file and wait until it is ready.

    On a cluster the applications outlive this call. Without one, the service runs on an
    embedded Ray: in this process (the caller then keeps it alive with :func:`serve_forever`),
    or, with ``detach``, in a background ``fmtrade serve up`` process that ``down`` stops.
    """
    file, doc = read_config(config, settings)
    http = dict(doc.get("http_options") or {})
    http["host"] = host or http.get("host") or settings.serve.host
    http["port"] = int(port or http.get("port") or settings.serve.port)
    url = f"http://{http['host']}:{http['port']}"
    ready_url = url + str(doc["applications"][0].get("route_prefix", "/")).rstrip("/")
    names = application_names(doc)
    running = _saved_state(settings)
    if running.get("pid") and _alive(int(running["pid"])) and (detach or address is None):
        # Another `up` would find its Ray (`auto`) and replace its applications, or lose track of it.
        raise FmtradeError(
            f"a detached service already runs at {running['url']} (pid {running['pid']}); "
            "stop it first with `fmtrade serve down`"
        )
    on_cluster = _connect(address)
    if detach and not on_cluster:
        pid = _spawn_detached(settings, file, http["host"], http["port"], fmtrade_config, ready_timeout_s)
        try:
            # The process gives up by itself after ready_timeout_s, saying why in its log.
            readiness = wait_ready(ready_url, ready_timeout_s + _GIVE_UP_GRACE_S, _process_alive(pid))
        except FmtradeError as exc:
            if _alive(pid):  # stop it: nothing would know to
                os.kill(pid, signal.SIGTERM)
            output = log_path(settings)
            raise FmtradeError(f"{exc} (its log {output} ends: {_last_line(output)})") from None
        state = {"url": url, "config": str(file), "applications": names, "pid": pid}
        write_json_atomic(state_path(settings), state)
        return {**state, "ready": readiness}
    apps = []
    needed = 0.0
    generation = secrets.token_hex(4)  # new code versions: this deployment restarts every replica
    for entry in doc["applications"]:
        cfg = _app_config(entry, fmtrade_config)
        models = served_models(cfg)
        graph = build_graph(cfg, models, generation)
        apps.append((entry.get("name", "default"), entry.get("route_prefix", "/"), graph))
        needed += cpus_at_start(cfg, models)
    if not on_cluster:
        start_local_ray(num_cpus=embedded_cpus(needed))
    ray_serve.start(http_options=http, proxy_location=doc.get("proxy_location", "HeadOnly"))
    try:
        readiness = deploy(apps, ready_url, ready_timeout_s)
    except FmtradeError as exc:
        if not on_cluster:
            raise
        where = address or "auto"
        raise FmtradeError(
            f"{exc} (the applications stay on the cluster, where an autoscaler may still place them: "
            f"`fmtrade serve status --address {where}` follows them, `fmtrade serve down --address {where}` "
            "removes them)"
        ) from None
    state = {"url": url, "config": str(file), "applications": names, "pid": None, "generation": generation,
             "fmtrade_config": fmtrade_config, "scaling": {}}  # fmt: skip
    if on_cluster:
        write_json_atomic(state_path(settings), state)
    return {**state, "on_cluster": on_cluster, "ready": readiness}


def _app_config(entry: dict[str, Any], fmtrade_config: str | None, scaling: dict[str, Any] | None = None) -> AppConfig:
    """The application config of one ``applications`` entry, with the replica bounds ``scale`` set."""
    args = dict(entry.get("args") or {})
    if fmtrade_config:
        args.setdefault("config", fmtrade_config)
    if scaling:
        overrides = dict(args.get("model_options") or {})
        for model, bounds in scaling.items():
            overrides[model] = {**overrides.get(model, {}), **bounds}
        args["model_options"] = overrides
    return AppConfig.parse(args)


def scale(
    settings: Settings,
    model: str,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    address: str | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Set ``model``'s replica bounds on the application ``up`` deployed to a cluster, in place.

    The application's graph is re-run with the same code versions (:func:`build_graph`'s
    ``generation``), so Serve only changes the bounds of ``model-<model>`` and the callers'
    ``calls_per_caller``: no replica restarts, the other members answer throughout. Returns once
    the member's running replicas are within the bounds.
    """
    state = _saved_state(settings)
    if not state.get("generation") or state.get("pid"):
        raise FmtradeError(
            "no application deployed to a cluster by `fmtrade serve up --address ...` is recorded here "
            f"({state_path(settings)}); scale works on those"
        )
    _, doc = read_config(state["config"], settings)
    scaling: dict[str, dict[str, dict[str, int]]] = state.get("scaling") or {}
    for entry in doc["applications"]:
        name = entry.get("name", "default")
        if name not in state["applications"]:
            continue
        cfg = _app_config(entry, state.get("fmtrade_config"), scaling.get(name))
        models = served_models(cfg)
        if model in models:
            break
    else:
        raise InputError("model", f"{model} is not served by {', '.join(state['applications'])}")
    current = cfg.options_for(model)
    bounds = {
        "min_replicas": current.min_replicas if min_replicas is None else min_replicas,
        "max_replicas": current.max_replicas if max_replicas is None else max_replicas,
    }
    if bounds["min_replicas"] > bounds["max_replicas"]:
        field = "min" if min_replicas is not None else "max"
        raise InputError(field, f"min {bounds['min_replicas']} exceeds max {bounds['max_replicas']}")
    wanted = {**scaling.get(name, {}), model: bounds}
    cfg = _app_config(entry, state.get("fmtrade_config"), wanted)
    if not _connect(address):
        raise FmtradeError("no Ray cluster is running here; --address names the one `serve up` deployed to")
    try:
        target = ray_serve.RunTarget(build_graph(cfg, models, state["generation"]), name=name,
                                     route_prefix=entry.get("route_prefix", "/"))  # fmt: skip
        ray_serve.run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
        write_json_atomic(state_path(settings), {**state, "scaling": {**scaling, name: wanted}})
        replicas = _wait_replicas(name, f"model-{model}", bounds["min_replicas"], bounds["max_replicas"], timeout_s)
    finally:
        ray.shutdown()
    return {"application": name, "deployment": f"model-{model}", **bounds, "running": replicas}


def _wait_replicas(app: str, deployment: str, low: int, high: int, timeout_s: float) -> int:
    """Wait until ``deployment`` runs between ``low`` and ``high`` replicas, none starting or stopping."""
    deadline = time.monotonic() + timeout_s
    while True:
        replica_states = ray_serve.status().applications[app].deployments[deployment].replica_states
        states = {_text(state): count for state, count in replica_states.items()}
        running = int(states.pop("RUNNING", 0))
        if low <= running <= high and not any(states.values()):
            return running
        if time.monotonic() > deadline:
            raise FmtradeError(
                f"{deployment} runs {running} replicas ({states or 'none starting'}) {timeout_s:g} s after scaling "
                f"to {low}-{high}; Serve goes on trying (`fmtrade serve status` follows it)"
            )
        time.sleep(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever() -> None:
    """Foreground ``up``: keep the embedded Ray alive until Ctrl-C or SIGTERM, then shut down.

    Stopping the embedded Ray stops Serve with it; ``serve.shutdown()`` first would only add Ray
    2.60's "graceful_shutdown failed ... will be retried" warning for its own controller.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()


def _saved_state(settings: Settings) -> dict[str, Any]:
    try:
        return json.loads(state_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def status(settings: Settings, address: str | None = None) -> dict[str, Any]:
    """A detached local service: its process and ``/readyz``; a cluster: the Serve controller's view."""
    state = _saved_state(settings)
    if state.get("pid") and address is None:
        alive = _alive(int(state["pid"]))
        try:
            ready = httpx.get(f"{state['url']}/readyz", timeout=10).json() if alive else None
        except httpx.HTTPError as exc:
            ready = {"ready": False, "error": str(exc)}
        return {"url": state["url"], "pid": state["pid"], "running": alive, "ready": ready}
    if not _connect(address):
        raise FmtradeError("no fmtrade service or Ray cluster is running; start it with `fmtrade serve up`")
    apps = ray_serve.status().applications
    return {
        "url": state.get("url"),
        "running": bool(apps),
        "applications": {
            name: {
                "status": _text(app.status),
                "deployments": {
                    dep: {"status": _text(d.status), "replicas": dict(d.replica_states)}
                    for dep, d in app.deployments.items()
                },
            }
            for name, app in apps.items()
        },
    }


def _not_running(apps: list[str]) -> str:
    """Serve's account of the deployments of ``apps`` that are not healthy (why a start timed out)."""
    try:
        statuses = ray_serve.status().applications
    except ray.exceptions.RayError as exc:
        return f"Serve's status is unavailable ({type(exc).__name__})"
    waiting = []
    for app in apps:
        if app not in statuses:
            waiting.append(f"application {app} was not deployed")
            continue
        for name, dep in _unhealthy(statuses[app]):
            waiting.append(f"{name} {_text(dep.status)}" + (f" ({dep.message})" if dep.message else ""))
    return "; ".join(waiting) or "every deployment is healthy"


def _unhealthy(app_status: Any) -> list[tuple[str, Any]]:
    """(name, status) of an application's deployments that are not HEALTHY."""
    return [(name, dep) for name, dep in app_status.deployments.items() if _text(dep.status) != "HEALTHY"]


def _text(status: Any) -> str:
    return str(getattr(status, "value", status))


def down(
    settings: Settings, address: str | None = None, timeout_s: float = 60.0, config: str | None = None
) -> dict[str, Any]:
    """Stop a detached local service (SIGTERM: its embedded Ray stops, Serve with it), or delete
    fmtrade's applications from the cluster.

    On a cluster only the applications that ``up`` recorded (else those named in the config file)
    are deleted: other applications and Serve itself keep running there. ``serve.shutdown()``
    would take every application down, and in Ray 2.60 prints a "graceful_shutdown failed ... will
    be retried" warning for its own controller.
    """
    state = _saved_state(settings)
    if state.get("pid") and address is None:
        pid = int(state["pid"])
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _alive(pid):
                raise FmtradeError(f"the service process {pid} did not stop within {timeout_s:g}s")
        state_path(settings).unlink(missing_ok=True)
        return {"stopped": True, "url": state["url"]}
    recorded = state.get("applications") or []
    names = application_names(read_config(config, settings)[1]) if config or not recorded else recorded
    if not _connect(address):
        state_path(settings).unlink(missing_ok=True)
        return {"stopped": False, "reason": "no fmtrade service or Ray cluster is running"}
    try:
        running = ray_serve.status().applications
        deleted = [name for name in names if name in running]
        for name in deleted:
            ray_serve.delete(name)
    finally:
        ray.shutdown()
    if not any(name in running and name not in deleted for name in recorded):
        state_path(settings).unlink(missing_ok=True)  # what `up` recorded no longer runs
    if not deleted:
        listed = ", ".join(running) or "none"
        return {
            "stopped": False,
            "reason": f"no application named {', '.join(names)} runs on the cluster (running: {listed}); "
            "--config names the file they were deployed from",
        }
    return {"stopped": True, "url": state.get("url"), "applications": deleted}


def application_names(doc: dict[str, Any]) -> list[str]:
    """The application names of a Serve config document (Serve's default name when one has none)."""
    return [entry.get("name", "default") for entry in doc["applications"]]
