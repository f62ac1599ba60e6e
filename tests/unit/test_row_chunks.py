"""row_chunks: multi-row statements in a few shapes, so SQLite compiles each once."""

from __future__ import annotations

import pytest

from tidegate.store.sqlite.database import MAX_PARAMETERS, row_chunks


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 100, 255, 256, 257, 500, 1_000, 5_000])
@pytest.mark.parametrize("columns", [1, 4, 9, 11])
def test_runs_are_powers_of_two_in_order(count: int, columns: int) -> None:
    items = list(range(count))
    runs = [list(run) for run in row_chunks(items, columns)]
    assert [item for run in runs for item in run] == items
    for run in runs:
        assert len(run) & (len(run) - 1) == 0  # a power of two
        assert len(run) * columns <= MAX_PARAMETERS
    assert len(runs) <= count.bit_length() + count * columns // MAX_PARAMETERS + 1


def test_every_length_uses_a_handful_of_shapes() -> None:
    shapes = {len(run) for count in range(1, 2_000) for run in row_chunks(range(count), 9)}
    assert shapes == {1, 2, 4, 8, 16, 32, 64, 128, 256}
