"""The client order id index in C (native/src/client_ids.c) against a dict model: random adds,
removals (only of ids that still name the order), look-ups and batch checks, through growth and
deletions in the middle of probe runs; a small index hint forces both."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hftgate.native.client_ids import MAX_LENGTH, ROW_DTYPE, ClientIdIndex, ids_to_rows, joined

OK, INVALID, USED = 0, 1, 2


def _valid(client_id: str) -> bool:
    return 0 < len(client_id) <= MAX_LENGTH and client_id.isascii() and client_id.isprintable()


def _model_states(model: dict[tuple[int, str], int], account: int, ids: list[str]) -> list[int]:
    seen: set[str] = set()
    states = []
    for client_id in ids:
        if not _valid(client_id):
            states.append(INVALID)
        elif (account, client_id) in model or client_id in seen:
            states.append(USED)
        else:
            states.append(OK)
        seen.add(client_id)
    return states


def test_the_index_answers_as_a_dict_does() -> None:
    rng = random.Random(9)
    index = ClientIdIndex(capacity_hint=4)
    model: dict[tuple[int, str], int] = {}
    pool = [f"c{n}" for n in range(400)] + ["x" * MAX_LENGTH, "x" * (MAX_LENGTH + 1), "", "é", "t\tb", " "]
    next_id = 1
    for _ in range(3000):
        roll = rng.random()
        account = rng.randint(1, 3)
        if roll < 0.4:  # index a batch of valid ids, as an accepted batch does
            ids = [c for c in rng.sample(pool, rng.randint(1, 20)) if _valid(c)]
            text, lengths = joined(ids)
            order_ids = np.arange(next_id, next_id + len(ids), dtype=np.int64)
            next_id += len(ids)
            index.add(np.full(len(ids), account, np.uint64), text, lengths, order_ids)
            model.update({(account, c): int(o) for c, o in zip(ids, order_ids.tolist(), strict=True)})
        elif roll < 0.7 and model:  # retire some: those still naming their order go
            keys = rng.sample(sorted(model), min(len(model), rng.randint(1, 30)))
            stale = [(a, c, o + rng.choice((0, 0, 1))) for (a, c), o in ((k, model[k]) for k in keys)]
            text, lengths = joined([c for _, c, _ in stale])
            removed = index.remove(
                np.array([a for a, _, _ in stale], np.uint64),
                text,
                lengths,
                np.array([o for _, _, o in stale], np.int64),
            )
            expected = 0
            for a, c, o in stale:
                if model.get((a, c)) == o:
                    del model[(a, c)]
                    expected += 1
            assert removed == expected
        else:  # check a batch, repeats and invalid ids included
            ids = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
            states = index.check(account, ids)
            want = _model_states(model, account, ids)
            assert (states.tolist() if states is not None else [OK] * len(ids)) == want
        assert len(index) == len(model)
        probe = rng.choice(pool)
        assert index.get(account, probe) == model.get((account, probe), 0)
    assert index.items() == sorted((a, c, o) for (a, c), o in model.items())


def test_bad_batches_are_refused_whole() -> None:
    index = ClientIdIndex()
    text, lengths = joined(["ok", "not ok\n"])
    try:
        index.add(np.ones(2, np.uint64), text, lengths, np.array([1, 2], np.int64))
    except ValueError:
        pass
    else:
        raise AssertionError("an invalid id was indexed")
    assert len(index) == 0
    try:
        index.add(np.ones(1, np.uint64), b"ab", np.array([3], np.int64), np.array([1], np.int64))
    except ValueError:
        pass
    else:
        raise AssertionError("lengths past the text were taken")
    assert len(index) == 0


def test_forget_rows_reads_the_ids_in_place_and_frees_rows_on_request() -> None:
    from services.execution.state import ORDER_DTYPE

    index = ClientIdIndex()
    table = np.zeros(4, ORDER_DTYPE)
    table["account_id"] = [1, 1, 2, 2]
    slot_ids = np.array([11, 12, 13, 0], np.int64)
    text, lengths = joined(["a", "bb", "a", ""][:3])
    id_rows = np.zeros(4, ROW_DTYPE)
    id_rows[:3] = ids_to_rows(text, lengths)
    index.add(np.array([1, 1, 2], np.uint64), text, lengths, slot_ids[:3].copy())
    assert index.forget_rows(table, slot_ids, id_rows, np.array([0, 3], np.int64), free=False) == 1
    assert index.get(1, "a") == 0 and index.get(2, "a") == 13 and slot_ids[0] == 11  # kept
    assert index.forget_rows(table, slot_ids, id_rows, np.array([1, 2], np.int64), free=True) == 2
    assert len(index) == 0 and slot_ids.tolist() == [11, 0, 0, 0] and id_rows.tolist()[1:] == [b"", b"", b""]
    with pytest.raises(ValueError):
        index.forget_rows(table, slot_ids, id_rows, np.array([4], np.int64), free=True)
    with pytest.raises(TypeError):
        index.forget_rows(table, slot_ids, id_rows, np.array([0], np.int32), free=True)
    with pytest.raises(TypeError):
        index.forget_rows(table, slot_ids[:3], id_rows, np.array([0], np.int64), free=True)
