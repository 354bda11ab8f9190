"""Submit a batch job (``python -m fmtrade backtest ...``) to any Ray cluster's job server.

The same call works for the local development cluster and a remote one: the working
directory is uploaded as the job's ``runtime_env`` (minus the virtualenv, run outputs and
VCS data), and fmtrade's own code travels as a ``py_modules`` package laid out as installed,
so the cluster runs exactly the code on the laptop. A runtime env file
(``cluster/runtime_env.yaml``) adds ``pip`` packages, ``excludes`` and ``env_vars``.

Ray does not retry a job, so resubmitting must be safe: with a ``submission_id``, a second
submission of the same id (a retry after a dropped connection, a re-run script) never starts a
second job. Ray refuses the duplicate; :func:`submit` then attaches to the job already there
(``already_submitted``) and, with ``wait``, waits for that one.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from fmtrade.cluster.dashboard import connect
from fmtrade.cluster.local import ClusterError
from fmtrade.cluster.ops import check_job_id
from fmtrade.cluster.package import is_checkout, package_folders, stage
from fmtrade.errors import InputError

UPLOAD_EXCLUDES = [".venv/", ".git/", "runs/", "**/__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/"]
#: The runtime env keys a file may set; fmtrade sets ``py_modules`` itself.
RUNTIME_ENV_KEYS = {"working_dir", "excludes", "pip", "env_vars"}
_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


@dataclass(frozen=True)
class JobResult:
    job_id: str
    status: str
    logs: str
    already_submitted: bool = False


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """A runtime env YAML file (``working_dir``, ``excludes``, ``pip``, ``env_vars``), checked;
    errors name ``--runtime-env`` and the key."""
    file = Path(path)
    try:
        doc = yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError("--runtime-env", f"cannot read {file}: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise InputError("--runtime-env", f"{file} must be a mapping of runtime env keys")
    unknown = sorted(set(doc) - RUNTIME_ENV_KEYS)
    if unknown:
        raise InputError("--runtime-env", f"{file}: unsupported keys {unknown} (allowed: {sorted(RUNTIME_ENV_KEYS)})")
    for key, kind in (("excludes", list), ("pip", list), ("env_vars", dict), ("working_dir", str)):
        if key in doc and not isinstance(doc[key], kind):
            raise InputError("--runtime-env", f"{file}: {key} must be a {kind.__name__}")
    if "working_dir" in doc:  # relative to the file, so the file works from any directory
        doc["working_dir"] = str((file.parent / doc["working_dir"]).resolve())
    return doc


def submit(
    address: str,
    entrypoint: str,
    working_dir: str | Path | None = ".",
    env_vars: dict[str, str] | None = None,
    wait: bool = True,
    timeout_s: float = 1800,
    runtime_env: dict[str, Any] | None = None,
    submission_id: str | None = None,
) -> JobResult:
    """Submit ``entrypoint``; with ``wait``, block until it ends and return its status and logs.
    ``runtime_env`` (from :func:`load_runtime_env`) adds to what fmtrade ships; its
    ``working_dir`` applies when ``working_dir`` is None."""
    extra = dict(runtime_env or {})
    root = Path(working_dir or extra.pop("working_dir", ".")).resolve()
    extra.pop("working_dir", None)
    if submission_id is not None:
        check_job_id(submission_id)
    with tempfile.TemporaryDirectory(prefix="fmtrade-submit-") as staging:
        package = _package_dir(root, Path(staging))
        # The checkout's own code folders stay behind: the job's cwd comes first on sys.path and a
        # bare fmtrade/ there would hide the package (and its fmtrade.serve, ...) shipped in py_modules.
        layer_dirs = [f"/{d}/" for d in package_folders(root).values()] if is_checkout(root) else []
        env: dict[str, Any] = {**extra, "working_dir": str(root), "py_modules": [str(package)],
                               "excludes": UPLOAD_EXCLUDES + list(extra.get("excludes", [])) + layer_dirs}  # fmt: skip
        if env_vars or extra.get("env_vars"):
            env["env_vars"] = {**extra.get("env_vars", {}), **(env_vars or {})}
        try:
            client = connect(address)
            job_id, already = _submit_once(client, entrypoint, env, submission_id)
        except (ConnectionError, RuntimeError, AuthenticationError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ClusterError(f"address: cannot submit to the job server at {address}: {first}") from exc
    if not wait:
        return JobResult(job_id, client.get_job_status(job_id).value, "", already)
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while status not in _TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise ClusterError(f"job {job_id} did not finish within {timeout_s:.0f} s; stopped it")
        time.sleep(1)
        status = client.get_job_status(job_id)
    return JobResult(job_id, status.value, client.get_job_logs(job_id), already)


def _package_dir(root: Path, staging: Path) -> Path:
    """The ``fmtrade`` package as it is installed (the Ray layers inside it): laid out from the
    checkout at ``root`` when the job is submitted from one, else the installed package itself."""
    import fmtrade

    return stage(root, staging) if is_checkout(root) else Path(fmtrade.__file__).parent


def _submit_once(
    client: JobSubmissionClient, entrypoint: str, runtime_env: dict, submission_id: str | None
) -> tuple[str, bool]:
    """Submit; a ``submission_id`` the cluster already has is that job (Ray starts nothing new)."""
    try:
        return _submit_when_agent_ready(client, entrypoint, runtime_env, submission_id), False
    except RuntimeError as exc:
        if submission_id is None or "already exists" not in str(exc):
            raise
        return submission_id, True


def _submit_when_agent_ready(
    client: JobSubmissionClient, entrypoint: str, runtime_env: dict, submission_id: str | None, wait_s: float = 60
) -> str:
    """A freshly started head answers before its job agent registers ("No available agent"):
    retry that one transient answer for ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
