"""Market data: Bybit v5 client, parquet store, replay server, synthetic markets."""
