"""fmtrade: time-series foundation models for crypto trading on Ray.

The library holds the domain logic (config, market data, models, ensemble,
metrics, backtests, agent); serve/, train/, jobs/ and cluster/ are thin Ray
layers over it and are never imported from here.
"""

__version__ = "0.1.0"
