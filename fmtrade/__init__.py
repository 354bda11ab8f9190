"""fmtrade: time-series foundation models for crypto trading on Ray.

The library holds the domain logic (config, market data, models, ensemble,
metrics, backtests). The Ray layers, thin over it, live in the repository's
serve/, train/, jobs/ and cluster/ folders and install as fmtrade.serve,
fmtrade.train, fmtrade.jobs and fmtrade.cluster; only fmtrade.cli imports them.
"""

__version__ = "0.1.0"
