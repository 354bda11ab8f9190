"""Forecasting models behind one batch-first, probabilistic interface
(:class:`fmtrade.models.base.Forecaster`)."""
