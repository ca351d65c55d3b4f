"""The market data service: quotes, depth and trades in; books, VWAP, bars, conflated streams and
arbitrage opportunities out. ``python -m services.marketdata`` runs it."""
