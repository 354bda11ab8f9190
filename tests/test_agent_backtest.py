"""``fmtrade agent backtest``: the agent's own loop (observe -> decide -> risk -> paper) walk-forward
over a synthetic store, beside buy-and-hold and the forecast-threshold strategy; LLM answers from a real
fake OpenAI server recorded to a cassette and replayed bit-identically; no look-ahead; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from fmtrade.agent.backtest import AgentBacktestRun, backtest_symbol, merge_cassettes, write_agent_run
from fmtrade.backtest.engine import forecast_assets
from fmtrade.config import Settings, load_settings
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.jobs.agent_backtest import AgentJob, prepare
from tests.conftest import run_cli
from tests.fake_openai import FakeOpenAI

SYMBOLS = ("AAAUSDT", "BBBUSDT")
RANGE = {"start": "2023-01-25", "end": "2023-02-05", "category": "linear", "interval": "60"}
MODELS = ["random-walk", "theta"]


def write_store(root: Path, perturb_after: pd.Timestamp | None = None) -> str:
    market = synthesize(list(SYMBOLS), SyntheticSpec(hours=1200, seed=11, start="2023-01-01"))
    store = Store(str(root))
    rng = np.random.default_rng(0)
    for symbol in SYMBOLS:
        bars = market.bars[symbol].copy()
        if perturb_after is not None:  # the future changes wildly: nothing before it may notice
            later = bars.index >= perturb_after
            scale = rng.uniform(0.5, 1.5, later.sum())
            for column in ("open", "high", "low", "close"):
                bars.loc[later, column] *= scale
            bars.loc[later, "volume"] *= scale[::-1]
        store.write_bars("linear", symbol, "60", bars)
        store.write_funding("linear", symbol, market.funding[symbol])
    return str(root)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("agent-bt-store"))


FAKE_KEY = "sk-fake-agent-backtest-0123456789"


def llm_settings(url: str) -> Settings:
    cfg = load_settings()
    update = {"reasoner": "llm", "llm_base_url": url, "llm_timeout_s": 5.0, "llm_api_key": SecretStr(FAKE_KEY)}
    agent = cfg.agent.model_copy(update=update)
    return cfg.model_copy(update={"agent": agent})


def run_local(job: AgentJob, out: Path) -> AgentBacktestRun:
    """``execute`` without Ray: the same per-symbol core, forecasts by the engine's batched path."""
    windows = job.windows()
    forecasts: dict[str, dict] = {}
    walk = None
    if job.selection is not None:
        from fmtrade.jobs.backtest import Job
        from fmtrade.walkforward import WalkForward

        assets = [(job.markets[s], windows[s]) for s in job.markets]
        for name, factory in Job(job.config, job.markets, job.selection, job.settings).factories().items():
            forecasts[name] = forecast_assets(factory(), assets, job.config)
        walk = WalkForward.from_registry(job.selection.specs, job.settings, ensemble=True)
    tape = job.cassette.read_text() if job.cassette is not None and job.cassette.exists() else None
    assets = [
        backtest_symbol(
            job.settings,
            job.histories[s],
            m,
            windows[s],
            job.config,
            {k: fc[s] for k, fc in forecasts.items()} or None,
            walk,
            events=job.events,
            cassette=tape,
        )  # fmt: skip
        for s, m in job.markets.items()
    ]
    if job.cassette is not None:
        merge_cassettes(job.cassette, [a.cassette for a in assets])
    result = AgentBacktestRun.gather(job.config, assets, job.describe())
    write_agent_run(result, out)
    return result


def test_rules_agent_beside_buy_and_hold_and_threshold(store, tmp_path):
    job = prepare(load_settings(), SYMBOLS, MODELS, store, **RANGE)
    result = run_local(job, tmp_path / "run")
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted((r["symbol"], r["model"]) for r in summary) == sorted(
        (s, m) for s in SYMBOLS for m in ("agent", "buy-and-hold", "threshold")
    )
    for row in summary:
        assert {"total_return", "sharpe", "max_drawdown", "trades", "costs"} <= set(row)
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    cycles = len(job.windows()["AAAUSDT"])
    assert len(decisions) == cycles * len(SYMBOLS) == len(pd.read_parquet(out / "decisions.parquet"))
    assert all(d["reasoning"] and d["action"] in ("long", "short", "hold") for d in decisions)
    assert any("forecast.expected_return" in r for d in decisions for r in d["reasoning"])  # the forecast was seen
    report = (out / "report.html").read_text()
    assert "Agent decisions and their reasons" in report and decisions[0]["reasoning"][0].split("=")[0] in report
    # The agent traded and its book reconciles: final equity = initial + pnl - fees - funding.
    positions = pd.read_parquet(out / "positions.parquet")
    for symbol in SYMBOLS:
        book = positions[(positions["symbol"] == symbol) & (positions["model"] == "agent")]
        row = next(r for r in summary if r["symbol"] == symbol and r["model"] == "agent")
        expected = job.config.initial_equity + book["pnl"].sum() - book["cost"].sum() - book["funding"].sum()
        assert book["equity"].iloc[-1] == pytest.approx(expected, rel=1e-9)
        assert row["costs"] == pytest.approx(book["cost"].sum())
    assert sum(r["trades"] for r in summary if r["model"] == "agent") > 0
    trades = pd.read_parquet(out / "trades.parquet")
    assert (trades["model"] == "agent").sum() == sum(r["trades"] for r in summary if r["model"] == "agent")
    assert result.summary == summary


def test_llm_run_replays_from_the_cassette_bit_identically(store, tmp_path):
    tape = tmp_path / "answers.jsonl"
    kinds = ["valid", "malformed", "out_of_range", "refusal", "valid", "429", "valid", "uncited"]
    feed = tmp_path / "events.jsonl"
    stamps = pd.date_range("2023-01-24T12:00", "2023-02-06", freq="30h", tz="UTC")
    feed.write_text(
        "".join(json.dumps({"time": t.isoformat(), "text": f"headline {i}"}) + "\n" for i, t in enumerate(stamps))
    )
    options = {"forecast": False, "cassette": str(tape), "events": str(feed), **RANGE}
    with FakeOpenAI(kinds * 10) as llm:
        job = prepare(llm_settings(llm.url), SYMBOLS, None, store, **options)
        run_local(job, tmp_path / "first")
        asked = [json.loads(r["body"]["messages"][1]["content"].split("\n", 1)[1].split("\n")[0]) for r in llm.requests]
    assert len(asked) >= len(job.windows()["AAAUSDT"]) * len(SYMBOLS)
    # The LLM saw the headlines published before each decision, and none after it.
    for observation in asked:
        seen = [pd.Timestamp(e["time"]) for e in observation["events"]]
        assert seen == [t for t in stamps if t < pd.Timestamp(observation["time"])]
    assert any(observation["events"] for observation in asked)
    reasoners = {json.loads(x)["reasoner"] for x in (tmp_path / "first" / "decisions.jsonl").read_text().splitlines()}
    assert reasoners == {"llm", "llm->rules"}  # answers taken and bad ones replaced by the rules
    recorded = tape.read_bytes()
    # The server is gone: a live call would fail and fall back differently; the cassette answers instead.
    job = prepare(llm_settings(llm.url), SYMBOLS, None, store, **options)
    run_local(job, tmp_path / "second")
    first = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "second") for p in (tmp_path / "second").rglob("*") if p.is_file())
    assert first == second and Path("decisions.jsonl") in first
    for name in first:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    assert tape.read_bytes() == recorded
    # The key went to the endpoint (Authorization header) and nowhere else.
    assert all(r["headers"]["Authorization"] == f"Bearer {FAKE_KEY}" for r in llm.requests)
    files = [tape, *(p for p in tmp_path.rglob("*") if p.is_file())]
    assert not [p for p in files if FAKE_KEY.encode() in p.read_bytes()]


def test_perturbing_later_bars_leaves_earlier_decisions_unchanged(store, tmp_path):
    cut = pd.Timestamp("2023-01-31", tz="UTC")
    changed = write_store(tmp_path / "perturbed", perturb_after=cut)
    runs = []
    for root, name in ((store, "a"), (changed, "b")):
        job = prepare(load_settings(), SYMBOLS, MODELS, root, **RANGE)
        run_local(job, tmp_path / name)
        rows = [json.loads(x) for x in (tmp_path / name / "decisions.jsonl").read_text().splitlines()]
        runs.append(rows)
    before = [[d for d in rows if pd.Timestamp(d["time"]) <= cut] for rows in runs]
    after = [[d for d in rows if pd.Timestamp(d["time"]) > cut] for rows in runs]
    assert len(before[0]) >= 2 * len(SYMBOLS) and before[0] == before[1]
    assert after[0] != after[1]  # the perturbation did reach the decisions it may reach


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--start": "2023-02-05", "--end": "2023-02-01"}, "error: end: "),
        ({"--symbols": "AAAUSDT,NOPEUSDT"}, "error: symbols: NOPEUSDT: no linear/60 bars"),
        ({"--every": "0"}, "error: --every: must be a positive number of bars"),
        ({"--reasoner": "oracle"}, "error: --reasoner: expected one of rules, llm"),
        ({"--cassette": "x.jsonl"}, "error: --cassette: records LLM answers"),
    ],
)
def test_bad_input_exits_2_naming_the_field(store, tmp_path, capsys, change, message):
    import ray

    args = {"--symbols": ",".join(SYMBOLS), "--start": "2023-01-25", "--end": "2023-02-05", "--every": "24"} | change
    out_dir = tmp_path / "run"
    argv = ["agent", "backtest", *[x for kv in args.items() for x in kv], "--category", "linear", "--store", store,
            "--out", str(out_dir), "--no-forecast"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out_dir.exists() and not ray.is_initialized()


@pytest.mark.slow
def test_cli_runs_the_ray_job_and_matches_the_local_core(store, tmp_path, capsys):
    import ray

    argv = ["agent", "backtest", "--symbols", ",".join(SYMBOLS), "--start", RANGE["start"], "--end", RANGE["end"],
            "--category", "linear", "--models", ",".join(MODELS), "--store", store, "--out", str(tmp_path / "ray"),
            "--address", "local", "--json"]  # fmt: skip
    try:
        code, out, err = run_cli(argv, capsys)
    finally:
        ray.shutdown()
    assert code == 0, err
    summary = json.loads(out)
    assert {(r["symbol"], r["model"]) for r in summary} == {
        (s, m) for s in SYMBOLS for m in ("agent", "buy-and-hold", "threshold")
    }
    run_local(prepare(load_settings(), SYMBOLS, MODELS, store, **RANGE), tmp_path / "local")
    assert summary == json.loads((tmp_path / "local" / "summary.json").read_text())
    # Ray's tasks made the same decisions, in the same order, with the same books as the core alone.
    for name in ("decisions.jsonl", "summary.json", "positions.parquet", "trades.parquet"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert "report.html" in err
