"""Start, inspect and stop the Serve application (what ``fmtrade serve up|status|down`` do).

``up`` reads a Ray Serve config file (``serve/config.yaml`` format), builds each
application with :func:`serve.app.build_app` and runs it:

* on the Ray cluster at ``--address`` (default: the one running on this machine,
  if any); the applications outlive the command;
* else on an embedded Ray in this process (foreground, until Ctrl-C/SIGTERM), or
  with ``--detach`` in a background ``fmtrade serve up --address local`` process
  that ``down`` stops with SIGTERM. Ray's own defaults apply to authentication: the
  embedded Ray creates its token itself, nothing is asked of the user.

``$FMTRADE_HOME/serve/state.json`` remembers the URL (and the background pid), so
``status`` and ``down`` find what ``up`` started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from ray import serve as ray_serve

from fmtrade.config import Settings
from fmtrade.errors import ConfigError, FmtradeError
from fmtrade.io import write_json_atomic
from jobs.ray_runtime import init_ray
from serve.app import build_app
from serve.fast_path import FAST_PATH_ENV

PACKAGED_CONFIG = Path(__file__).with_name("config.yaml")
# Ray presents this machine's token only to a cluster it finds itself (``auto``), never to an
# explicit address: there a cluster with token authentication refuses a client without the mode.
_TOKEN_HINT = (
    " (a cluster with token authentication also refuses a client without RAY_AUTH_MODE=token;"
    " the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
)


def start_local_ray(num_cpus: int | None = None) -> None:
    """Embedded Ray for this process, with :data:`FAST_PATH_ENV` (unless already set) inherited
    by every Serve process it starts."""
    for key, value in FAST_PATH_ENV.items():
        os.environ.setdefault(key, value)
    init_ray("local", num_cpus=num_cpus)


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
    except ConnectionError:
        if address is not None:
            hint = "" if os.environ.get("RAY_AUTH_MODE") else _TOKEN_HINT
            raise FmtradeError(f"no Ray cluster answers at --address {address}{hint}") from None
        return False
    return True


def _spawn_detached(settings: Settings, config: Path, host: str, port: int, fmtrade_config: str | None) -> int:
    """Run the foreground server (embedded Ray) as a background session of its own; return its pid."""
    log_path = state_path(settings).with_name("serve.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fmtrade"]
    if fmtrade_config:
        cmd += ["--config", fmtrade_config]
    cmd += ["serve", "up", "--address", "local", "--config", str(config), "--host", host, "--port", str(port)]
    with log_path.open("ab") as log_file:
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


def wait_ready(url: str, timeout_s: float, pid: int | None = None) -> dict[str, Any]:
    """Poll ``/readyz`` until every model deployment answers (failing early if ``pid`` exits)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            raise FmtradeError(f"the service process exited before it was ready: {last}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=10)
            if response.status_code == 200:
                return response.json()
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise FmtradeError(f"the service at {url} was not ready after {timeout_s:g}s: {last}")


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
    names = [entry.get("name", "default") for entry in doc["applications"]]
    on_cluster = _connect(address)
    if detach and not on_cluster:
        pid = _spawn_detached(settings, file, http["host"], http["port"], fmtrade_config)
        readiness = wait_ready(ready_url, ready_timeout_s, pid)
        state = {"url": url, "config": str(file), "applications": names, "pid": pid}
        write_json_atomic(state_path(settings), state)
        return {**state, "ready": readiness}
    apps = []
    for entry in doc["applications"]:
        args = dict(entry.get("args") or {})
        if fmtrade_config:
            args.setdefault("config", fmtrade_config)
        apps.append((entry.get("name", "default"), entry.get("route_prefix", "/"), build_app(args)))
    if not on_cluster:
        start_local_ray()
    ray_serve.start(http_options=http, proxy_location=doc.get("proxy_location", "HeadOnly"))
    for name, prefix, app in apps:
        ray_serve.run(app, name=name, route_prefix=prefix, blocking=False)
    readiness = wait_ready(ready_url, ready_timeout_s)
    state = {"url": url, "config": str(file), "applications": names, "pid": None}
    if on_cluster:
        write_json_atomic(state_path(settings), state)
    return {**state, "on_cluster": on_cluster, "ready": readiness}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever() -> None:
    """Foreground ``up``: keep the embedded Ray alive until Ctrl-C or SIGTERM, then shut down."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
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


def _text(status: Any) -> str:
    return str(getattr(status, "value", status))


def down(settings: Settings, address: str | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop a detached local service (SIGTERM, it shuts Serve and Ray down), or delete the
    applications from the cluster."""
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
    if not _connect(address):
        state_path(settings).unlink(missing_ok=True)
        return {"stopped": False, "reason": "no fmtrade service or Ray cluster is running"}
    ray_serve.shutdown()
    ray.shutdown()
    state_path(settings).unlink(missing_ok=True)
    return {"stopped": True, "url": state.get("url")}
