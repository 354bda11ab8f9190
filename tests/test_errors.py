"""Every FmtradeError survives pickling, and a real Ray task, as itself: its type, message and fields
(the CLI's one line and the API's status code depend on the type, InputError's field on its fields)."""

from __future__ import annotations

import ast
import pickle
from collections.abc import Iterator

import pytest
import ray

from fmtrade.agent.bybit import AuthError, ClockSkewError, InsufficientBalanceError, QuantityError
from fmtrade.client import RemoteError
from fmtrade.cluster.local import ClusterError
from fmtrade.data.bybit import BybitError, BybitUnavailableError
from fmtrade.data.importer import BadFileError
from fmtrade.data.store import CorruptPartition
from fmtrade.ensemble import EnsembleError
from fmtrade.errors import ConfigError, DataError, FmtradeError, InputError
from fmtrade.jobs.ray_runtime import ClusterUnreachable, UnsupportedRay, get, init_ray
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.serve.api import UnknownSeries
from fmtrade.serve.deployments import ModelUnavailable
from fmtrade.serve.runner import NotReadyInTime
from tests.conftest import REPO

EXAMPLES: list[FmtradeError] = [
    FmtradeError("something went wrong"),
    InputError("horizon", "must be a positive number of bars, got 0"),
    UnknownSeries("symbol", "no linear/60 bars stored for NOPEUSDT"),
    ConfigError("invalid configuration (environment): data.interval: must be one of Bybit's intervals"),
    DataError("no bars stored for linear/NOPE/60"),
    BadFileError("bars.csv", "high 0.9 is below max(open, close)", row=2),
    BybitError(10001, "params error: symbol invalid", "/v5/market/kline", {"symbol": "NOPE"}),
    BybitUnavailableError("/v5/market/kline", 6, "HTTP 503"),
    EnsembleError({"chronos-bolt": "timed out", "naive": "no data"}),
    ModelLoadError("no checkpoint at /zoo/chronos-bolt-tiny"),
    RemoteError(422, "horizon: must be positive"),
    ClusterUnreachable("no Ray cluster answers at 127.0.0.1:1"),
    UnsupportedRay("fmtrade runs on Ray >=2.50,<2.61, found Ray 2.61.0"),
    NotReadyInTime("the service at http://127.0.0.1:8000 was not ready after 60s: no answer"),
    ClusterError("job server at http://127.0.0.1:8265 not ready after 120 s"),
    ClockSkewError(10002, "invalid request, please check your server timestamp", "/v5/order/create"),
    AuthError(10004, "error sign!", "/v5/order/create"),
    InsufficientBalanceError(110007, "ab not enough for new order", "/v5/order/create"),
    QuantityError(110017, "orderQty will be truncated to zero", "/v5/order/create", {"qty": "0.0001"}),
    CorruptPartition("store/linear/BTCUSDT/60/2024-01.parquet", "not a parquet file", "re-sync 2024-01"),
    ModelUnavailable("chronos-bolt-fm-tiny: model.safetensors is truncated; rebuild it"),
]


def _subclasses_in_the_source() -> set[str]:
    """Names of every FmtradeError subclass defined in the code (by reading it: nothing to import)."""
    classes: dict[str, set[str]] = {}
    for folder in ("fmtrade", "serve", "train", "jobs", "cluster"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    classes[node.name] = bases
    found = {"FmtradeError"}
    while grown := {name for name, bases in classes.items() if bases & found} - found:
        found |= grown
    return found


def test_the_examples_cover_every_subclass() -> None:
    assert {type(e).__name__ for e in EXAMPLES} == _subclasses_in_the_source()


def _same(restored: BaseException, original: FmtradeError) -> None:
    assert type(restored) is type(original)
    assert str(restored) == str(original) and restored.args == original.args
    assert vars(restored) == vars(original)  # InputError's field and reason, BybitError's ret_code, ...


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("protocol", [0, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip(error: FmtradeError, protocol: int) -> None:
    _same(pickle.loads(pickle.dumps(error, protocol=protocol)), error)


@ray.remote
def _raise(error: FmtradeError) -> None:
    raise error


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    init_ray("local", num_cpus=1)
    yield
    ray.shutdown()


def test_a_ray_task_error_reaches_the_driver_as_itself(local_ray: None) -> None:
    refs = [_raise.remote(error) for error in EXAMPLES]
    for ref, error in zip(refs, EXAMPLES, strict=True):
        with pytest.raises(FmtradeError) as info:
            get(ref)
        _same(info.value, error)
