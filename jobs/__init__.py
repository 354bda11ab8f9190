"""Ray batch jobs: walk-forward backtests and zero-shot evaluation across assets, run by
``fmtrade backtest`` / ``fmtrade evaluate --address`` on an embedded Ray or a cluster (submitted
with ``fmtrade cluster submit``), and the one Ray runtime module every Ray layer starts Ray through."""
