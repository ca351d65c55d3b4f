"""The cache service: a three-level cache for reference data and accounts (issue 7).

Where things live:
  l1.py            the near cache (W-TinyLFU), used in the service and in every CacheClient
  l2_redis.py      Redis: versioned writes, promotion without stale set-backs, outages
  l3_sql.py        SQL (SQLite / PostgreSQL): the source of truth for durable entries
  tiered.py        the three as one: read-through, write-through, single-flight, negatives
  invalidation.py  how changes reach every replica's L1 and every near cache
  server.py        gRPC wiring;  client.py  the CacheClient other services embed
  embedded_redis.py, config.py, globs.py, model.py  what the above share
"""
