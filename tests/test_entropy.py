"""Range coding with integer tables, escapes included."""

from __future__ import annotations

import numpy as np
import pytest

from codec import entropy
from codec.bitstream import OnicError
from codec.entropy import TableSet


def gaussian_tables(scales=(0.2, 1.0, 5.0, 40.0)) -> TableSet:
    tables = []
    for s in scales:
        k = max(1, int(np.ceil(6 * s)))
        v = np.arange(-k, k + 1)
        p = np.exp(-0.5 * (v / s) ** 2)
        tables.append((1 + np.floor(p / p.sum() * (2**16 - len(p)))).astype(np.uint32))
    starts = np.concatenate([[0], np.cumsum([len(t) for t in tables])])
    lengths = np.diff(starts)
    return TableSet(np.concatenate(tables), starts, -(lengths - 1) // 2)


@pytest.mark.parametrize("small, batch", [(entropy.SMALL_TABLE, entropy.BATCH_SYMBOLS), (100, 2**20), (2**20, 150),
                                          (2**20, 1)])
@pytest.mark.parametrize("seed", range(3))
def test_round_trip_with_escapes(seed, small, batch, monkeypatch):
    """Decoded in batches of tables of every size (all at once, the larger tables alone, a few,
    one table each): the same symbols."""
    monkeypatch.setattr(entropy, "SMALL_TABLE", small)
    monkeypatch.setattr(entropy, "BATCH_SYMBOLS", batch)
    rng = np.random.default_rng(seed)
    tables = gaussian_tables()
    ids = rng.integers(0, len(tables), size=(6, 9, 11))
    symbols = np.round(rng.normal(0, np.array([0.2, 1.0, 5.0, 40.0])[ids] * 2)).astype(np.int64)
    symbols.flat[:4] = [10**6, -(10**6), 2**24 - 1 - 1000, 0]  # far past every table
    data = entropy.encode(symbols, ids, tables)
    assert np.array_equal(entropy.decode(data, ids, tables), symbols)


def test_empty():
    tables = gaussian_tables()
    ids = np.zeros((0, 3), dtype=np.int64)
    data = entropy.encode(np.zeros((0, 3)), ids, tables)
    assert entropy.decode(data, ids, tables).shape == (0, 3)


def test_values_beyond_the_escape_range_are_refused():
    tables = gaussian_tables()
    with pytest.raises(OnicError, match="codable range"):
        entropy.encode(np.array([2**30]), np.array([0]), tables)


def test_cost_matches_the_table():
    tables = gaussian_tables()
    ids = np.full(10_000, 1)
    data = entropy.encode(np.zeros(10_000, dtype=np.int64), ids, tables)
    table = tables.values[tables.starts[1] : tables.starts[2]].astype(np.float64)
    ideal = -np.log2(table[len(table) // 2] / table.sum())  # about 1.38 bits for σ = 1
    assert ideal * 10_000 <= len(data) * 8 <= ideal * 10_000 * 1.01 + 64


@pytest.mark.parametrize("seed", range(4))
def test_streams_of_rare_symbols_are_not_mistaken_for_cut_ones(seed):
    """The overread guard counts bits with the coder's own 24-bit probabilities: a valid
    stream made only of each skewed table's rarest entry decodes (the table's own ratios
    overstated it by about 0.02 bits a symbol and refused it as cut short)."""
    rng = np.random.default_rng(seed)
    tables = []
    for _ in range(8):
        n = int(rng.integers(50, 300))
        tables.append(np.maximum(1, 65535 * np.exp(-12 * np.abs(np.linspace(-1, 1, n)))).astype(int))
    starts = np.concatenate([[0], np.cumsum([len(v) for v in tables])])
    t = TableSet(np.concatenate(tables), starts, np.zeros(len(tables), dtype=int))
    ids = rng.integers(0, len(tables), 20000)
    rarest = np.array([np.argmin(v[1:-1]) + 1 for v in tables])  # not an end entry: no escape
    symbols = rarest[ids]
    assert (entropy.decode(entropy.encode(symbols, ids, t), ids, t) == symbols).all()


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_a_cut_stream_fails_as_a_table_by_table_read_does(cut, monkeypatch):
    """Tables decoded in batches report a stream cut short with the error, and at the table, of a
    read one table at a time (the web decoder's): batches change the speed, never the error."""
    rng = np.random.default_rng(7)
    tables = gaussian_tables((0.3, 0.8, 2.0, 6.0, 15.0, 40.0))
    ids = rng.integers(0, len(tables), 30000)
    symbols = np.round(rng.normal(0, np.array([0.3, 0.8, 2.0, 6.0, 15.0, 40.0])[ids])).astype(np.int64)
    data = entropy.encode(symbols, ids, tables)
    data = data[: int(len(data) * cut) // 4 * 4]
    errors = []
    for size in (1, 2**20):  # one table at a time; all six in one batch
        monkeypatch.setattr(entropy, "SMALL_TABLE", size)
        monkeypatch.setattr(entropy, "BATCH_SYMBOLS", size)
        with pytest.raises(OnicError) as e:
            entropy.decode(data, ids, tables)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_bits_are_those_of_the_quantized_tables():
    t = TableSet(np.array([1, 1000, 1, 5, 7]), np.array([0, 3, 5]), np.array([0, 0]))
    for a, b in zip(t.starts[:-1], t.starts[1:], strict=True):
        v = t.values[a:b].astype(float)
        scale = (2**24 - len(v)) / v.sum()
        cdf = [np.floor(c * scale) + i for i, c in enumerate(np.cumsum(v) - v)] + [2**24]
        assert np.allclose(t.bits[a:b], 24 - np.log2(np.diff(cdf)))
