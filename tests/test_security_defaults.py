"""Secure by default: token auth and loopback for every Ray fmtrade starts, `serve up` refusing an
open host without an API token, 401s that say nothing about the token, and no secret in anything
a cluster submission writes (fake secrets set in the environment, every file scanned)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import uvicorn
import yaml
from fastapi import FastAPI

from fmtrade.cluster.dashboard import local_token
from fmtrade.cluster.local import LocalCluster, ray_env
from fmtrade.serve.api import Guard
from tests.conftest import REPO, free_port
from tests.secrets_scan import SECRETS, leaks

TOKEN = "s3cr3t-api-token-0123456789"


def _fmtrade(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fmtrade", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.fixture
def guarded() -> Iterator[str]:
    """fmtrade's auth middleware in front of a one-route app, on a real uvicorn server."""
    api = FastAPI()

    @api.get("/v1/models")
    def models() -> list[str]:
        return ["random-walk"]

    api.add_middleware(Guard, token=TOKEN, max_body_bytes=1024)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_refused_token_says_nothing_about_which_part_was_wrong(guarded: str) -> None:
    variants = {
        "missing": None,
        "empty": "Bearer",
        "other scheme": f"Basic {TOKEN}",
        "prefix": f"Bearer {TOKEN[:-1]}",
        "longer": f"Bearer {TOKEN}x",
        "last char": f"Bearer {TOKEN[:-1]}X",
        "first char": f"Bearer X{TOKEN[1:]}",
        "case": f"Bearer {TOKEN.upper()}",
    }
    answers = set()
    for name, header in variants.items():
        response = httpx.get(f"{guarded}/v1/models", headers={"Authorization": header} if header else {})
        assert response.status_code == 401, name
        assert TOKEN[:6] not in response.text, name
        answers.add((response.text, response.headers["www-authenticate"]))
    assert answers == {('{"detail":"missing or invalid bearer token"}', "Bearer")}  # one answer for every way
    ok = httpx.get(f"{guarded}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == ["random-walk"]


def _serve_config(tmp_path: Path) -> str:
    path = tmp_path / "serve.yaml"
    small = {"num_cpus": 0.1}
    path.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "applications": [{"name": "fmtrade", "import_path": "fmtrade.serve.app:build_app", "route_prefix": "/",
                          "args": {"models": ["random-walk"], "model_defaults": small}}],
    }))  # fmt: skip
    return str(path)


def test_serve_up_on_an_open_host_needs_a_token_or_insecure(tmp_path: Path, isolated_home: Path) -> None:
    """Refused before anything starts; allowed cases then fail on the unreachable --address (a
    later check, with its own message), which shows the exposure check let them through."""
    config = _serve_config(tmp_path)
    nowhere = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in ray_env().items() if k not in ("FMTRADE_API_TOKEN", "FMTRADE_SERVE__API_TOKEN")}
    env["FMTRADE_HOME"] = str(isolated_home)
    for host in ("0.0.0.0", "192.0.2.10", "::", "fmtrade.example.internal"):
        refused = _fmtrade("serve", "up", "--config", config, "--host", host, "--address", nowhere, env=env)
        assert refused.returncode == 2, refused.stderr[-2000:]
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: host: {host} is reachable beyond this machine") and "--insecure" in last
        assert "Traceback" not in refused.stderr
    allowed = [
        (["--host", "127.0.0.1"], env),
        (["--host", "::1"], env),
        (["--host", "0.0.0.0", "--insecure"], env),
        (["--host", "0.0.0.0"], {**env, "FMTRADE_API_TOKEN": TOKEN}),
    ]
    for args, run_env in allowed:
        done = _fmtrade("serve", "up", "--config", config, *args, "--address", nowhere, env=run_env)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert "no Ray cluster answers" in last and "is reachable beyond" not in last, (args, last)
        assert TOKEN not in done.stderr + done.stdout


def _listening(port: int) -> list[str]:
    """The addresses something on this machine listens on at ``port``."""
    return [
        c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


@pytest.mark.slow
def test_embedded_ray_uses_token_auth_and_a_loopback_dashboard(tmp_path: Path) -> None:
    """The Ray fmtrade embeds (asked for a dashboard, RAY_AUTH_MODE unset): token mode, the
    dashboard on 127.0.0.1 only, its job API refusing a request without the token."""
    probe = """
import json, os, httpx, psutil
from fmtrade.jobs.ray_runtime import init_ray
init_ray("local", num_cpus=1, include_dashboard=True)
import ray
url = ray._private.worker.global_worker.node.address_info["webui_url"]
port = int(url.rsplit(":", 1)[1])
conns = psutil.net_connections("tcp")
hosts = sorted({c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port})
bare = httpx.get(f"http://127.0.0.1:{port}/api/jobs/", timeout=30).status_code
print(json.dumps({"mode": os.environ.get("RAY_AUTH_MODE"), "hosts": hosts, "bare": bare}))
ray.shutdown()
"""
    env = ray_env()
    env.pop("RAY_AUTH_MODE")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"mode": "token", "hosts": ["127.0.0.1"], "bare": 401}


def _session_dir(cluster: LocalCluster) -> Path:
    """The cluster's Ray session directory (its logs, job driver logs), from its GCS command line."""
    for proc in cluster.processes():
        for arg in proc.cmdline():
            if arg.startswith("--log_dir="):
                return Path(arg.split("=", 1)[1]).parent
    raise AssertionError("no session directory found")


@pytest.mark.slow
def test_no_secret_in_anything_a_cluster_submission_writes(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fake secrets in the environment of the operator's shell (so of the cluster's nodes too); a
    backtest submitted through `fmtrade cluster submit`, then its status, jobs and logs: no secret
    in any file under FMTRADE_HOME, the run outputs, the cluster's session (job driver logs), the
    job's metadata on the job server, or anything the commands printed. The job server itself
    listens on loopback only and refuses requests without the cluster token."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    synth = _fmtrade("data", "synth", "--symbols", "SYNAUSDT", "--hours", "1500", "--seed", "3", "--json",
                     env=ray_env())  # fmt: skip
    assert synth.returncode == 0, synth.stderr[-2000:]
    cluster = LocalCluster(workers=0, cpus_per_node=2, gcs_port=free_port(), dashboard_port=free_port())
    out = tmp_path / "run"
    (tmp_path / "job").mkdir()
    texts: dict[str, str] = {"synth": synth.stdout + synth.stderr}
    try:
        cluster.up()
        assert _listening(cluster.dashboard_port) == ["127.0.0.1"]
        assert httpx.get(f"{cluster.dashboard_url}/api/jobs/").status_code == 401
        wrong = httpx.get(f"{cluster.dashboard_url}/api/jobs/", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 403 and "not-the-token" not in wrong.text
        url = cluster.dashboard_url
        entry = ["python", "-m", "fmtrade", "backtest", "--symbols", "SYNAUSDT", "--models", "random-walk,naive",
                 "--start", "2022-02-01", "--end", "2022-02-20", "--out", str(out), "--json"]  # fmt: skip
        done = _fmtrade("cluster", "submit", "--address", url, "--working-dir", str(tmp_path / "job"),
                        "--submission-id", "secrets-1", "--env", f"FMTRADE_HOME={isolated_home}", "--json", "--",
                        *entry, env=ray_env(), timeout=600)  # fmt: skip
        texts["submit"] = done.stdout + done.stderr
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)["status"] == "SUCCEEDED", done.stdout[-3000:]
        assert (out / "summary.json").is_file()
        for args in (["status"], ["jobs"], ["logs", "secrets-1"]):
            shown = _fmtrade("cluster", *args, "--address", url, "--json", env=ray_env())
            assert shown.returncode == 0, shown.stderr[-2000:]
            texts[" ".join(args)] = shown.stdout + shown.stderr
        token = local_token()
        metadata = httpx.get(f"{url}/api/jobs/secrets-1", headers={"Authorization": f"Bearer {token}"})
        assert metadata.status_code == 200
        texts["job metadata"] = metadata.text
        session = _session_dir(cluster)
        assert any("SYNAUSDT" in p.read_text() for p in (session / "logs").glob("job-driver-secrets-1*.log"))
        found = leaks([isolated_home, out, session], texts)
    finally:
        cluster.down()
    assert found == []
