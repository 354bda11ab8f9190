"""Talking to a Ray cluster's dashboard (its job server and REST API) with the cluster's token.

One place for the address and the token, so ``submit``, ``status``, ``jobs``, ``logs`` and
``stop`` connect alike and fail alike: one line naming ``address`` and the reason, never Ray's
traceback. The token is read where Ray documents it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
``~/.ray/auth_token``) and only ever sent as a header: it is never part of a message or result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from fmtrade.cluster.local import ClusterError
from fmtrade.errors import first_line

TOKEN_FILE = Path("~/.ray/auth_token").expanduser()
_TIMEOUT_S = 30.0


def local_token() -> str | None:
    """This machine's token for the cluster, as Ray looks it up, or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or TOKEN_FILE).expanduser()
    return path.read_text().strip() if path.is_file() else None


def auth_headers() -> dict[str, str]:
    """The bearer header for this machine's token (none without one; a cluster without token
    authentication ignores it)."""
    token = local_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str) -> JobSubmissionClient:
    """Ray's job client for the job server at ``address``, presenting the token if the cluster wants one."""
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        headers = auth_headers()
        if not headers:
            raise
        return JobSubmissionClient(address, headers=headers)


def client(address: str) -> JobSubmissionClient:
    """:func:`connect` with its failures as one :class:`ClusterError` line naming ``address``."""
    try:
        return connect(address)
    except (ConnectionError, RuntimeError, AuthenticationError) as exc:
        raise ClusterError(f"address: no job server answers at {address}: {first_line(exc)}") from None


def get_json(address: str, path: str) -> Any:
    """GET ``path`` of the dashboard's REST API at ``address`` (JSON), with the token."""
    url = address.rstrip("/") + path
    try:
        response = httpx.get(url, headers=auth_headers(), timeout=_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ClusterError(f"address: no Ray dashboard answers at {address}: {first_line(exc)}") from None
    if response.status_code in (401, 403):
        raise ClusterError(
            f"address: the dashboard at {address} refused this machine's token (HTTP {response.status_code}): "
            "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
        )
    if response.status_code != 200:
        raise ClusterError(f"address: GET {path} at {address} answered HTTP {response.status_code}")
    return response.json()
