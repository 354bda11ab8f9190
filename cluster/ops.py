"""Day-to-day operations on a running Ray cluster: what runs where, and the jobs on it.

All through the head's dashboard (the job server address, ``http://host:8265``), with Ray's
own APIs: the job client (:class:`ray.job_submission.JobSubmissionClient`) for jobs, the state
API (``/api/v0/nodes``) for nodes and Serve's REST API (``/api/serve/applications/``) for
applications. Job listings carry no ``runtime_env``: its ``env_vars`` may hold secrets.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from fmtrade.cluster.dashboard import client, get_json
from fmtrade.cluster.local import ClusterError
from fmtrade.errors import InputError

_GIB = 1024**3
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def nodes(address: str) -> list[dict[str, Any]]:
    """Every node the cluster knows (dead ones too, with their state), head first."""
    doc = get_json(address, "/api/v0/nodes?detail=1&limit=10000")
    rows = []
    for node in doc["data"]["result"]["result"]:
        total = node.get("resources_total") or {}
        rows.append({
            "node_id": node["node_id"],
            "ip": node.get("node_ip"),
            "head": bool(node.get("is_head_node")),
            "state": node.get("state"),
            "cpus": total.get("CPU", 0.0),
            "gpus": total.get("GPU", 0.0),
            "memory_gib": round(total.get("memory", 0.0) / _GIB, 2),
            "object_store_gib": round(total.get("object_store_memory", 0.0) / _GIB, 2),
        })  # fmt: skip
    return sorted(rows, key=lambda r: (not r["head"], r["state"] != "ALIVE", r["node_id"]))


def serve_applications(address: str) -> dict[str, Any]:
    """Serve applications with each deployment's status and replica count per state ({} without Serve)."""
    doc = get_json(address, "/api/serve/applications/")
    apps = {}
    for name, app in (doc.get("applications") or {}).items():
        deployments = {
            dep: {
                "status": info.get("status"),
                "target_replicas": info.get("target_num_replicas"),
                "replicas": dict(Counter(r.get("state") for r in info.get("replicas") or [])),
            }
            for dep, info in (app.get("deployments") or {}).items()
        }
        apps[name] = {"status": app.get("status"), "route_prefix": app.get("route_prefix"),
                      "deployments": deployments}  # fmt: skip
    return apps


def job_row(job: JobDetails) -> dict[str, Any]:
    """What a listing shows of a job: never its runtime_env (env_vars may hold secrets)."""
    return {
        "job_id": job.submission_id or job.job_id,
        "type": job.type.value,
        "status": job.status.value,
        "entrypoint": job.entrypoint,
        "message": job.message,
        "start_time": job.start_time,
        "end_time": job.end_time,
    }


def jobs(address: str) -> list[dict[str, Any]]:
    """Every job the cluster has run or runs, newest first."""
    listed = client(address).list_jobs()
    return sorted((job_row(j) for j in listed), key=lambda r: r["start_time"] or 0, reverse=True)


def status(address: str) -> dict[str, Any]:
    """Nodes, running jobs and Serve applications in one document."""
    listed = nodes(address)
    running = [j for j in jobs(address) if j["status"] in ("PENDING", "RUNNING")]
    return {
        "address": address,
        "nodes": listed,
        "alive": sum(n["state"] == "ALIVE" for n in listed),
        "running_jobs": running,
        "serve": serve_applications(address),
    }


def check_job_id(job_id: str) -> str:
    """A job or submission id as Ray makes them (also keeps the id a single URL path segment)."""
    if not _JOB_ID.fullmatch(job_id):
        raise InputError(
            "job_id", f"{job_id!r} is not a job id (letters, digits, '_', '.', '-'; see `fmtrade cluster jobs`)"
        )
    return job_id


def _existing(jobs_client: JobSubmissionClient, address: str, job_id: str) -> JobDetails:
    try:
        return jobs_client.get_job_info(check_job_id(job_id))
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise InputError(
                "job_id", f"no job {job_id!r} on the cluster at {address} (`fmtrade cluster jobs` lists them)"
            ) from None
        raise ClusterError(f"address: the job server at {address} failed: {str(exc).splitlines()[0]}") from None


def job(address: str, job_id: str) -> dict[str, Any]:
    """One job's row; an unknown id is an :class:`InputError` naming ``job_id``."""
    return job_row(_existing(client(address), address, job_id))


def logs(address: str, job_id: str, follow: bool = False, write: Callable[[str], None] | None = None) -> str:
    """The job's logs so far; with ``follow``, stream them to ``write`` until the job ends."""
    jobs_client = client(address)
    _existing(jobs_client, address, job_id)
    if not follow:
        return jobs_client.get_job_logs(job_id)

    async def tail() -> str:
        chunks = []
        async for chunk in jobs_client.tail_job_logs(job_id):
            chunks.append(chunk)
            if write is not None:
                write(chunk)
        return "".join(chunks)

    return asyncio.run(tail())


def stop(address: str, job_id: str) -> dict[str, Any]:
    """Ask the job to stop; ``stopped`` says whether it was still running."""
    jobs_client = client(address)
    before = _existing(jobs_client, address, job_id)
    stopped = before.status not in _TERMINAL and jobs_client.stop_job(job_id)
    return {"job_id": job_id, "stopped": bool(stopped), "status": job_row(jobs_client.get_job_info(job_id))["status"]}
