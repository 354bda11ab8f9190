"""Walk-forward backtests: forecast at each rebalance point from the bars strictly
before it, trade on the forecast with realistic costs, and report.

The pieces are plain functions over numpy/pandas (no Ray) so that the Ray job in
``jobs/backtest.py`` can run them in actors and tasks, and tests can run them in-process.
"""
