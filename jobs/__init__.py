"""Ray batch jobs: parallel walk-forward backtests, forecast evaluation and
market-data sync, submittable with ``ray job submit`` or ``fmtrade cluster submit``."""
