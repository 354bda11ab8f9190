"""Submit a batch job (``python -m fmtrade backtest ...``) to any Ray cluster's job server.

The same call works for the local development cluster and a remote one: the working
directory is uploaded as the job's ``runtime_env`` (minus the virtualenv, run outputs and
VCS data), and fmtrade's own code travels as a ``py_modules`` package laid out as installed,
so the cluster runs exactly the code on the laptop.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from fmtrade.cluster.local import ClusterError
from fmtrade.cluster.package import is_checkout, package_folders, stage

TOKEN_FILE = Path("~/.ray/auth_token").expanduser()
UPLOAD_EXCLUDES = [".venv/", ".git/", "runs/", "**/__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/"]


@dataclass(frozen=True)
class JobResult:
    job_id: str
    status: str
    logs: str


def submit(
    address: str,
    entrypoint: str,
    working_dir: str | Path = ".",
    env_vars: dict[str, str] | None = None,
    wait: bool = True,
    timeout_s: float = 1800,
) -> JobResult:
    """Submit ``entrypoint``; with ``wait``, block until it ends and return its status and logs."""
    root = Path(working_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="fmtrade-submit-") as staging:
        package = _package_dir(root, Path(staging))
        # The checkout's own code folders stay behind: the job's cwd comes first on sys.path and a
        # bare fmtrade/ there would hide the package (and its fmtrade.serve, ...) shipped in py_modules.
        layer_dirs = [f"/{d}/" for d in package_folders(root).values()] if is_checkout(root) else []
        runtime_env: dict = {"working_dir": str(root), "excludes": UPLOAD_EXCLUDES + layer_dirs,
                             "py_modules": [str(package)]}  # fmt: skip
        if env_vars:
            runtime_env["env_vars"] = env_vars
        try:
            client = _connect(address)
            job_id = _submit_when_agent_ready(client, entrypoint, runtime_env)
        except (ConnectionError, RuntimeError, AuthenticationError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ClusterError(f"address: cannot submit to the job server at {address}: {first}") from exc
    if not wait:
        return JobResult(job_id, str(client.get_job_status(job_id)), "")
    deadline = time.monotonic() + timeout_s
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    status = client.get_job_status(job_id)
    while status not in terminal:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise ClusterError(f"job {job_id} did not finish within {timeout_s:.0f} s; stopped it")
        time.sleep(1)
        status = client.get_job_status(job_id)
    return JobResult(job_id, status.value, client.get_job_logs(job_id))


def _package_dir(root: Path, staging: Path) -> Path:
    """The ``fmtrade`` package as it is installed (the Ray layers inside it): laid out from the
    checkout at ``root`` when the job is submitted from one, else the installed package itself."""
    import fmtrade

    return stage(root, staging) if is_checkout(root) else Path(fmtrade.__file__).parent


def _connect(address: str) -> JobSubmissionClient:
    """Connect; if the cluster wants a token, present the one this machine has (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, as Ray documents) as a bearer header."""
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        token = _local_token()
        if token is None:
            raise
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})


def _local_token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    return path.read_text().strip() if path.is_file() else None


def _submit_when_agent_ready(
    client: JobSubmissionClient, entrypoint: str, runtime_env: dict, wait_s: float = 60
) -> str:
    """A freshly started head answers before its job agent registers ("No available agent"):
    retry that one transient answer for ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
