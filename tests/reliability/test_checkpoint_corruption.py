"""A damaged zoo checkpoint: detected at load with the file and the rebuild command; in Serve the
member reports that reason on every answer while the other members keep answering.

The Serve part uses the shared application of tests/reliability/conftest.py, whose Chronos-Bolt
member's weights file is truncated after the zoo is built.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from fmtrade.config import Settings, load_settings
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.recipes import RECIPE_FILE
from fmtrade.models.registry import active_specs, build_forecaster, select_specs
from fmtrade.models.zoo import build_zoo
from tests.conftest import run_cli
from tests.reliability.conftest import BROKEN, HEALTHY, replica_pids, truncate

CONTEXT = [100.0 + (i % 7) for i in range(64)]


@pytest.mark.slow
def test_served_member_with_damaged_weights_reports_why_while_the_others_answer(served: dict[str, Any]) -> None:
    url, weights = served["url"], str(served["weights"])

    def ask(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{url}/v1/forecast", json=body, timeout=60)

    with ThreadPoolExecutor(8) as pool:  # every member asked, concurrently
        answers = list(pool.map(ask, [{"context": CONTEXT, "horizon": 4}] * 16))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert sorted(doc["models"]) == sorted(HEALTHY)
        reason = doc["failed"][BROKEN]
        assert weights in reason and "fmtrade models build" in reason, reason
    alone = ask({"context": CONTEXT, "horizon": 4, "models": [BROKEN]})
    assert alone.status_code == 503  # the documented answer when no requested member answered
    assert weights in alone.json()["detail"]["failed"][BROKEN]
    listing = httpx.get(f"{url}/v1/models", timeout=60)
    assert listing.status_code == 200 and {m["name"] for m in listing.json()} == {*HEALTHY, BROKEN}
    assert replica_pids() == served["replicas"]  # the broken member's replica is not restart-looping


def flip_bytes(path: Path) -> None:
    """Same size, different bytes inside the tensor data: only the recorded sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
    path.write_bytes(bytes(data))


def append_garbage(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 16)


def drop_hash_record(checkpoint: Path) -> None:
    """A checkpoint built here (``--pretrain-minutes``) carries no sha256 record."""
    stamp = json.loads((checkpoint / RECIPE_FILE).read_text())
    stamp.pop("sha256")
    (checkpoint / RECIPE_FILE).write_text(json.dumps(stamp))


@pytest.fixture
def zoo(isolated_home: Path) -> tuple[Settings, Path]:
    settings = load_settings(None, {"home": str(isolated_home)})
    build_zoo(settings, only=[BROKEN], use_shipped=True)
    return settings, settings.zoo_dir() / BROKEN


def load(settings: Settings) -> Any:
    return build_forecaster(select_specs(active_specs(settings), [BROKEN])[0], settings)


@pytest.mark.parametrize(
    ("damage", "recorded", "problem"),
    [
        (truncate, True, "truncated safetensors"),
        (truncate, False, "truncated safetensors"),
        (lambda p: truncate(p, keep=0.0001), False, "truncated safetensors"),
        (flip_bytes, True, "sha256 does not match the checkpoint's record"),
        (append_garbage, False, "damaged safetensors (16 bytes beyond"),
    ],
)
def test_damaged_zoo_weights_are_refused_at_load_naming_the_file_and_the_rebuild(
    capsys, zoo, damage, recorded, problem
) -> None:
    settings, checkpoint = zoo
    assert load(settings).forecast([np.linspace(100, 101, 64)], 2, (0.5,)).mean.shape == (1, 2)  # sound before
    if not recorded:
        drop_hash_record(checkpoint)
    damage(checkpoint / "model.safetensors")
    with pytest.raises(ModelLoadError) as info:
        load(settings)
    message = str(info.value)
    assert message.startswith(f"{checkpoint / 'model.safetensors'}: {problem}"), message
    assert message.endswith(f"rebuild it with `fmtrade models build --only {BROKEN} --force`"), message
    # the command in the message repairs it
    code, out, err = run_cli(["models", "build", "--only", BROKEN, "--force", "--json"], capsys)
    assert code == 0, err
    assert load(settings).forecast([np.linspace(100, 101, 64)], 2, (0.5,)).mean.shape == (1, 2)
