"""Journal record encoding: the one-order encoder writes exactly what the batch encoder writes."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from hftgate.matching.types import COMMAND_DTYPE
from services.execution.records import (
    META_DTYPE,
    Batch,
    decode_batch,
    encode_batch,
    encode_one_batch,
    struct_of,
)


def _random_row(rng: random.Random, dtype: np.dtype) -> tuple[int, ...]:
    values = []
    for name in dtype.names or ():
        field = dtype.fields[name][0]  # type: ignore[index]
        info = np.iinfo(field)
        values.append(rng.choice((info.min, info.max, 0, 1, rng.randint(int(info.min), int(info.max)))))
    return tuple(values)


def test_one_order_record_is_byte_for_byte_the_batch_record() -> None:
    rng = random.Random(5)
    for _ in range(500):
        command, meta = _random_row(rng, COMMAND_DTYPE), _random_row(rng, META_DTYPE)
        client_id = "".join(rng.choice("abcXYZ019-_") for _ in range(rng.randint(1, 64))).encode("ascii")
        first, received, transact = rng.randint(1, 2**63 - 1), rng.randint(0, 2**62), rng.randint(0, 2**62)
        batch = Batch(
            first,
            received,
            transact,
            np.array([command], COMMAND_DTYPE),
            np.array([meta], META_DTYPE),
            client_id,
        )
        command_row = np.array([command], COMMAND_DTYPE).tobytes()
        meta_row = np.array([meta], META_DTYPE).tobytes()
        payload = encode_one_batch(first, received, transact, command_row, meta_row, client_id)
        assert payload == encode_batch(batch)
        decoded = decode_batch(payload)
        assert decoded.commands[0].item() == command and decoded.meta[0].item() == meta
        assert decoded.client_ids == client_id


def test_struct_of_refuses_layouts_it_cannot_reproduce() -> None:
    assert struct_of(np.dtype([("a", "<u8"), ("b", "u1"), ("c", "<i2")])).format == "<QBh"
    with pytest.raises(TypeError):
        struct_of(np.dtype([("a", "u1"), ("b", "<u8")], align=True))  # a gap before b
    with pytest.raises(TypeError):
        struct_of(np.dtype([("a", ">u4")]))  # big-endian
    with pytest.raises(TypeError):
        struct_of(np.dtype([("a", "<f8")]))  # not an integer
    with pytest.raises(struct.error):
        struct_of(np.dtype([("a", "u1")])).pack(256)
