"""Replay of recorded market data into the market data service (``hftgate replay PATH...``).

``readers`` turns each file format into ticks (:mod:`hftgate.replay.ticks`), ``source``
merges files into one time-ordered stream, and ``publisher`` sends it over gRPC at
recorded speed, a multiple of it, or as fast as possible.
"""
