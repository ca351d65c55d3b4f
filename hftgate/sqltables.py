"""Creating a store's tables when several processes open the same database at once.

``MetaData.create_all(checkfirst=True)`` checks, then creates: two processes that start together
(two shards opening the shard map, two cache replicas, the scaler and a shard) can both find the
table missing, and the second ``CREATE TABLE`` then fails: SQLite says "table ... already
exists", PostgreSQL "already exists" or a unique violation on its catalogue
(``pg_type_typname_nsp_index``). Either way the table is there, made by the other process: the
check is run again rather than the service refusing to start (seen: a shard exited with code 2
when another shard created the shard map table first). SQLite may also answer "database is
locked" at once, without waiting its busy timeout, while another process sets the file up (its
switch to WAL, a checkpoint): seen once in `hftgate bench moves`, a shard exiting at start
while the bench wrote the first shard map. That too is tried again.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

#: Attempts before a creation error is taken for what it says (waiting 20, 40, ... ms between
#: them: ~0.6 s in all).
CREATE_ATTEMPTS = 7

_RACE_WORDS = ("already exists", "pg_type_typname_nsp_index", "duplicate key value", "database is locked")


def lost_creation_race(error: BaseException) -> bool:
    """True when ``error`` says another process created the object first (or, for SQLite, is
    setting the file up right now)."""
    if not isinstance(error, DBAPIError):  # OperationalError, ProgrammingError, IntegrityError...
        return False
    text = str(getattr(error, "orig", None) or error)
    return any(word in text for word in _RACE_WORDS)


async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
    """``metadata.create_all(checkfirst=True)`` on ``engine``, again when another process created
    a table between the check and the creation; any other error is raised as it came."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all, checkfirst=True)
            return
        except DBAPIError as error:
            if attempt + 1 == CREATE_ATTEMPTS or not lost_creation_race(error):
                raise
            await asyncio.sleep(0.02 * (attempt + 1))
