"""Child process for the kill test: appends records forever and prints every acknowledged sequence number.

Usage: ``python journal_appender.py DIRECTORY SEED``. Prints ``ready <next seq>`` once
the journal is open, then one acknowledged sequence number per line, each flushed
only after its future resolved (i.e. after the covering fdatasync returned).
"""

from __future__ import annotations

import asyncio
import random
import sys

from services.execution.journal import Journal


def payload_for(seq: int, rng: random.Random) -> bytes:
    """A payload that names its sequence number; some are too big for an inline queue slot."""
    size = rng.choice((8, 40, 200, 600, 3000))
    head = f"seq={seq};".encode()
    return head + bytes((seq + i) % 251 for i in range(size))


async def main(directory: str, seed: int) -> None:
    rng = random.Random(seed)
    journal = Journal.open(directory, segment_max_bytes=32 * 1024, slot_bytes=128)
    journal.start()
    sys.stdout.write(f"ready {journal.next_seq}\n")
    sys.stdout.flush()
    in_flight: set[asyncio.Future[int]] = set()
    acked: list[int] = []

    def on_ack(future: asyncio.Future[int]) -> None:
        in_flight.discard(future)
        acked.append(future.result())

    while True:
        for _ in range(rng.randint(1, 60)):
            future = journal.append(payload_for(journal.next_seq, rng), record_type=journal.next_seq % 3)
            future.add_done_callback(on_ack)
            in_flight.add(future)
        await asyncio.sleep(0)
        if acked:
            sys.stdout.write("".join(f"{seq}\n" for seq in acked))
            sys.stdout.flush()
            acked.clear()
        if len(in_flight) > 500:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
