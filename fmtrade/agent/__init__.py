"""The trading agent: observe, decide (rules or an LLM), apply hard risk limits, execute (paper or
Bybit), journal everything. The core never imports the Ray layers (docs/AGENT.md)."""
