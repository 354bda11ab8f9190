"""``fmtrade cluster status|jobs|logs|stop`` and ``submit --runtime-env/--submission-id`` against a
real two-node local cluster (one for the module, always torn down), through the CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmtrade.cluster.local import LocalCluster, ray_env
from fmtrade.cluster.submit import RUNTIME_ENV_KEYS, load_runtime_env
from fmtrade.errors import InputError
from tests.conftest import REPO, free_port


def _fmtrade(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fmtrade", *args], capture_output=True, text=True, timeout=timeout, env=ray_env()
    )


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(workers=1, cpus_per_node=1, gcs_port=free_port(), dashboard_port=free_port())
    try:
        local.up()
        yield local
    finally:
        local.down()
    assert local.processes() == []


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A small job working directory (uploading the whole checkout would cost every test seconds)."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept\n")
    (folder / "secret-notes.txt").write_text("excluded\n")
    return folder


def _wait_status(url: str, job_id: str, wanted: set[str], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (row,) = [j for j in _json(_fmtrade("cluster", "jobs", "--address", url, "--json")) if j["job_id"] == job_id]
        if row["status"] in wanted:
            return row["status"]
        time.sleep(1)
    raise AssertionError(f"job {job_id} not in {wanted} after {timeout_s} s")


@pytest.mark.slow
def test_status_jobs_logs_and_stop(cluster: LocalCluster, workdir: Path, tmp_path: Path) -> None:
    url = cluster.dashboard_url
    sleeper = _json(_fmtrade("cluster", "submit", "--address", url, "--working-dir", str(workdir), "--no-wait",
                             "--submission-id", "ops-sleeper", "--json", "--",
                             "python", "-c", "import time; print('started', flush=True); time.sleep(300)"))  # fmt: skip
    assert sleeper["job_id"] == "ops-sleeper" and sleeper["already_submitted"] is False
    assert _wait_status(url, "ops-sleeper", {"RUNNING"}) == "RUNNING"

    status = _json(_fmtrade("cluster", "status", "--address", url, "--json"))
    assert status["alive"] == 2 and [n["head"] for n in status["nodes"]] == [True, False]
    assert all(n["state"] == "ALIVE" and n["cpus"] == 1 and n["memory_gib"] > 0 for n in status["nodes"])
    assert [j["job_id"] for j in status["running_jobs"]] == ["ops-sleeper"]
    assert status["serve"] == {}
    text = _fmtrade("cluster", "status", "--address", url)
    assert text.returncode == 0 and "2/2 nodes alive" in text.stdout and "ops-sleeper RUNNING" in text.stdout

    stopped = _json(_fmtrade("cluster", "stop", "ops-sleeper", "--address", url, "--json"))
    assert stopped["job_id"] == "ops-sleeper" and stopped["stopped"] is True
    assert _wait_status(url, "ops-sleeper", {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"
    again = _json(_fmtrade("cluster", "stop", "ops-sleeper", "--address", url, "--json"))
    assert again == {"job_id": "ops-sleeper", "stopped": False, "status": "STOPPED"}

    # --follow streams a running job's output until it ends.
    ticks = "import time\nfor i in range(3): print('tick', i, flush=True); time.sleep(1)"
    counter = _json(_fmtrade("cluster", "submit", "--address", url, "--working-dir", str(workdir), "--no-wait",
                             "--json", "--", "python", "-c", ticks))  # fmt: skip
    follow = _fmtrade("cluster", "logs", counter["job_id"], "--address", url, "--follow")
    assert follow.returncode == 0, follow.stderr[-2000:]
    assert [line for line in follow.stdout.splitlines() if line.startswith("tick")] == ["tick 0", "tick 1", "tick 2"]
    logs = _json(_fmtrade("cluster", "logs", counter["job_id"], "--address", url, "--json"))
    assert logs["status"] == "SUCCEEDED" and "tick 2" in logs["logs"]

    listed = _json(_fmtrade("cluster", "jobs", "--address", url, "--json"))
    assert {j["job_id"]: j["status"] for j in listed} == {"ops-sleeper": "STOPPED", counter["job_id"]: "SUCCEEDED"}
    assert all("runtime_env" not in j for j in listed)  # env_vars may hold secrets


@pytest.mark.slow
def test_bad_job_ids_exit_2_naming_the_field(cluster: LocalCluster) -> None:
    url = cluster.dashboard_url
    for command in ("logs", "stop"):
        unknown = _fmtrade("cluster", command, "no-such-job", "--address", url)
        assert unknown.returncode == 2
        assert unknown.stderr.strip().splitlines()[-1].startswith("error: job_id: no job 'no-such-job'")
        malformed = _fmtrade("cluster", command, "../api/version", "--address", url)
        assert malformed.returncode == 2
        assert malformed.stderr.strip().splitlines()[-1].startswith("error: job_id: '../api/version' is not a job id")


@pytest.mark.slow
def test_same_submission_id_never_runs_twice(cluster: LocalCluster, workdir: Path, tmp_path: Path) -> None:
    """The job appends one line per run to a file: a second and a third submission of the same id
    (one while it runs, one after it ended) attach to it, exit 0 with its status, run nothing."""
    runs = tmp_path / "runs.txt"
    url = cluster.dashboard_url
    entry = ["--", "python", "-c",
             f"import time; open({str(runs)!r}, 'a').write('run\\n'); time.sleep(3); print('done once')"]  # fmt: skip
    args = ["cluster", "submit", "--address", url, "--working-dir", str(workdir), "--submission-id", "once-1"]
    first = _json(_fmtrade(*args, "--no-wait", "--json", *entry))
    assert first["already_submitted"] is False and first["job_id"] == "once-1"
    second = _fmtrade(*args, *entry)  # waits for the job already there
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already submitted: once-1" in second.stderr and "done once" in second.stdout
    third = _json(_fmtrade(*args, "--json", *entry))
    assert third["already_submitted"] is True and third["status"] == "SUCCEEDED" and "done once" in third["logs"]
    assert runs.read_text() == "run\n"


@pytest.mark.slow
def test_runtime_env_file_sets_env_vars_and_excludes(cluster: LocalCluster, workdir: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text(yaml.safe_dump({"working_dir": "job", "excludes": ["secret-notes.txt"],
                                        "env_vars": {"FMTRADE_JOB_TAG": "from-file"}}))  # fmt: skip
    probe = ("import os; print('tag', os.environ['FMTRADE_JOB_TAG'], os.path.exists('kept.txt'), "
             "os.path.exists('secret-notes.txt'))")  # fmt: skip
    done = _json(_fmtrade("cluster", "submit", "--address", cluster.dashboard_url, "--runtime-env", str(env_file),
                          "--json", "--", "python", "-c", probe))  # fmt: skip
    assert done["status"] == "SUCCEEDED", done["logs"][-2000:]
    assert "tag from-file True False" in done["logs"]


def test_committed_runtime_env_is_valid_for_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    path = REPO / "cluster" / "runtime_env.yaml"
    raw = yaml.safe_load(path.read_text())
    assert {"working_dir", "excludes", "pip"} <= set(raw) <= RUNTIME_ENV_KEYS
    doc = load_runtime_env(path)
    assert doc["working_dir"] == str(REPO)  # relative to the file: the checkout
    RuntimeEnv(**doc)  # Ray's own validation of the fields


def test_bad_runtime_env_file_names_the_option(tmp_path: Path) -> None:
    bad = tmp_path / "env.yaml"
    bad.write_text("py_modules: [x]\n")
    with pytest.raises(InputError, match=r"--runtime-env: .*unsupported keys \['py_modules'\]"):
        load_runtime_env(bad)
    bad.write_text("pip: numpy\n")
    with pytest.raises(InputError, match="--runtime-env: .*pip must be a list"):
        load_runtime_env(bad)
    done = _fmtrade("cluster", "submit", "--runtime-env", str(tmp_path / "missing.yaml"), "--", "python", "-V")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: --runtime-env: cannot read")


def test_status_of_nothing_is_a_clear_error() -> None:
    done = _fmtrade("cluster", "status", "--address", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: address: no Ray dashboard answers at")
    jobs = _fmtrade("cluster", "jobs", "--address", f"http://127.0.0.1:{free_port()}")
    assert jobs.returncode == 2 and jobs.stderr.strip().splitlines()[-1].startswith("error: address: no job server")
