"""Realised outcomes feed the ensemble's online weights: the agent loop against the replay server over
real HTTP, with fast baseline models in-process; the losses and weights recomputed here from the
journal and the store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fmtrade.agent.journal import Journal
from fmtrade.agent.learning import WeightLearner
from fmtrade.agent.loop import Agent, LiveSource
from fmtrade.agent.members import MemberForecast
from fmtrade.agent.observe import ApiForecasts, DocumentForecasts, InProcessForecasts
from fmtrade.agent.paper import PaperBroker
from fmtrade.agent.reasoners import RulesReasoner
from fmtrade.backtest.simulator import Costs
from fmtrade.config import load_settings
from fmtrade.data.bybit import BybitClient
from fmtrade.data.replay import ReplayServer
from fmtrade.ensemble import OnlineWeights
from fmtrade.live_state import LiveState
from fmtrade.metrics import weighted_quantile_loss
from tests.conftest import run_cli

SYMBOLS = ["AAAUSDT", "BBBUSDT"]
MODELS = ["random-walk", "naive", "theta"]
NOW = pd.Timestamp("2022-02-10T00:00:00Z")
HORIZON = 3


@pytest.fixture(scope="module")
def replay(market_store):
    with ReplayServer(market_store, now=NOW) as server:
        yield server


@pytest.fixture
def source(replay):
    replay.speed, replay.now = 0, NOW
    with BybitClient(replay.url, rate_limiter=None) as client:
        yield LiveSource(client, "linear", "60")


def _agent(source) -> Agent:
    settings = load_settings()
    forecasts = InProcessForecasts(settings, models=MODELS, horizon=HORIZON, context=128)
    journal = Journal(settings.agent_journal())
    broker = PaperBroker(Costs(), 100_000.0)
    return Agent(settings, broker, RulesReasoner(), journal, source, symbols=SYMBOLS, forecasts=forecasts, run_id="ow")


def _recomputed_losses(journal: Journal, market_store, cycle: int, symbol: str) -> dict[str, float]:
    """Each member's WQL from its journaled quantiles and the store's closes at its steps."""
    closes = market_store.read(symbol, "60", category="linear")["close"]
    out = {}
    for row in journal.rows("member_forecasts", "ow"):
        if (row["cycle"], row["symbol"]) == (cycle, symbol):
            realised = closes[pd.DatetimeIndex(json.loads(row["steps"]))].to_numpy()
            quantiles = np.asarray(json.loads(row["quantiles"]))
            assert quantiles.shape == (HORIZON, 5)
            out[row["model"]] = weighted_quantile_loss(quantiles[None], json.loads(row["levels"]), realised[None])
    return out


def _check_folds(journal: Journal, market_store, state: LiveState) -> None:
    """Every outcome folded exactly once, in order: the state equals OnlineWeights replayed on the journal."""
    updates = journal.rows("weight_updates", "ow")
    assert len(updates) == len(journal.rows("outcomes", "ow"))
    for symbol in SYMBOLS:
        mine = [u for u in updates if u["symbol"] == symbol]
        assert mine, f"no outcome of {symbol} was folded"
        replayed = OnlineWeights()
        for update in mine:
            losses = json.loads(update["losses"])
            assert losses == pytest.approx(_recomputed_losses(journal, market_store, update["cycle"], symbol))
            replayed.observe(losses)
            assert json.loads(update["weights"]) == pytest.approx(replayed.weights(MODELS))
        learned = state.symbols[symbol].weights
        assert learned.updates == dict.fromkeys(MODELS, len(mine))
        assert learned.losses == pytest.approx(replayed.losses)


def test_outcomes_fold_into_the_weights_once_and_the_next_forecast_uses_them(source, replay, market_store, capsys):
    agent = _agent(source)
    forecasts = agent.forecasts
    assert isinstance(forecasts, InProcessForecasts) and isinstance(forecasts, DocumentForecasts)
    assert agent.learner is not None and forecasts.state is agent.learner.state  # one object: updates reach it
    replay.now, replay.speed = NOW, 7200.0  # two hours a second
    results = agent.run(every=pd.Timedelta(hours=1), max_cycles=6)
    replay.speed = 0
    assert all(not r.errors for r in results), [r.errors for r in results]
    journal, path = agent.journal, load_settings().live_state_path()
    assert len(journal.rows("member_forecasts", "ow")) == len(results) * len(SYMBOLS) * len(MODELS)
    saved = LiveState.load(path)
    _check_folds(journal, market_store, saved)
    for symbol in SYMBOLS:
        state = saved.symbols[symbol]
        assert state.shifts == {} and state.ensemble_shift is None and state.horizon == HORIZON
        assert state.pairs == [(0.05, 0.95), (0.1, 0.9)]
        assert state.weights.to_dict() == agent.learner.state.symbols[symbol].weights.to_dict()

    # The next forecast is combined with the learned weights (no record: random-walk, the anchor, alone).
    later = replay.now
    for symbol in SYMBOLS:
        closes = source.gather(symbol, later).closes()
        doc = forecasts.document(symbol, closes, "60")
        learned = saved.symbols[symbol].weights
        assert doc["weights"] == pytest.approx(learned.weights(MODELS))
        assert doc["calibration"]["learned_weights"] is True
        best = min(learned.losses, key=learned.losses.__getitem__)
        assert max(doc["weights"], key=doc["weights"].__getitem__) == best

    # A restart on the same journal and run id folds the outcomes still open, never one twice.
    replay.now = later + pd.Timedelta(hours=HORIZON + 1)
    resumed = _agent(source)
    assert resumed.learner is not None and resumed.learner.state.symbols.keys() == set(SYMBOLS)
    before = len(journal.rows("weight_updates", "ow"))
    resumed.run_cycle()
    assert len(journal.rows("weight_updates", "ow")) > before
    _check_folds(journal, market_store, LiveState.load(path))

    code, out, err = run_cli(["agent", "journal", "--run-id", "ow", "--last", "100", "--json"], capsys)
    assert code == 0, err
    shown = json.loads(out)["weight_updates"]
    assert len(shown) == len(journal.rows("weight_updates", "ow")) and set(shown[0]["losses"]) == set(MODELS)
    code, out, err = run_cli(["agent", "journal", "--run-id", "ow", "--last", "100"], capsys)
    assert code == 0 and "online weights" in out and "theta" in out


def _member(center: np.ndarray, steps: tuple[pd.Timestamp, ...]) -> MemberForecast:
    quantiles = np.column_stack([center * 0.99, center, center * 1.01])
    return MemberForecast((0.1, 0.5, 0.9), steps, quantiles)


def test_the_better_members_weight_rises_and_a_gap_folds_nothing(tmp_path) -> None:
    steps = tuple(NOW + pd.Timedelta(hours=k) for k in range(1, 4))
    closes = pd.Series([100.0, 101.0, 102.0], index=pd.DatetimeIndex(steps))
    truth = closes.to_numpy()
    learner = WeightLearner(tmp_path / "live.json", LiveState())
    good, bad = _member(truth, steps), _member(truth * 1.05, steps)
    assert OnlineWeights().weights(["random-walk", "theta"]) == {"random-walk": 1.0, "theta": 0.0}  # the fallback
    fold = learner.fold("XUSDT", {"random-walk": bad, "theta": good}, closes)
    assert fold is not None and fold.losses["theta"] < fold.losses["random-walk"]
    assert fold.losses["theta"] == pytest.approx(weighted_quantile_loss(good.quantiles[None], good.levels, [truth]))
    assert fold.weights["theta"] > 0.99  # from 0 (the anchor alone) to nearly all of it
    learner.save()
    assert LiveState.load(tmp_path / "live.json").symbols["XUSDT"].asof == steps[-1].isoformat()
    for _ in range(30):  # the tables turn: the decayed losses follow
        fold = learner.fold("XUSDT", {"random-walk": good, "theta": bad}, closes)
    assert fold is not None and fold.weights["random-walk"] > 0.99
    assert learner.fold("XUSDT", {"theta": good}, closes.drop(steps[1])) is None  # a step's close is unknown
    assert learner.state.symbols["XUSDT"].weights.updates == {"random-walk": 31, "theta": 31}


def test_the_served_forecasts_show_their_members_too() -> None:
    assert isinstance(ApiForecasts("http://127.0.0.1:1"), DocumentForecasts)
    settings = load_settings()
    learner = WeightLearner.for_forecasts(settings, ApiForecasts("http://127.0.0.1:1"))
    assert learner is not None and learner.path == settings.live_state_path() and learner.state.symbols == {}
    assert WeightLearner.for_forecasts(settings, lambda symbol, closes, interval: None) is None
