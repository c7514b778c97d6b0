"""Entropy coding of integer latents with constriction's range coder.

Every symbol is coded against one of a set of integer probability tables
(``TableSet``), chosen per symbol by a table id: the channel for z, the scale
index for y. Symbols are grouped by table id (stable order), so each group is
one vectorised ``encode`` call with a fixed categorical model.

Each table covers [offset, offset + n − 1]. Its two end entries also stand for
everything beyond them: a symbol that lands on an end entry is followed, after
all groups, by an escape residual r ≥ 0 (its distance past the end), coded as
a 5-bit length with Uniform(25) and then the bits below the leading one with
Uniform(2^(length−1)). Only exact integer models are involved, so the same
tables and ids always give the same symbols.
"""

from __future__ import annotations

from functools import cached_property

import constriction
import numpy as np

from codec.bitstream import OnicError

MAX_ESCAPE_BITS = 24  # residuals must be below 2**24 (constriction's Uniform limit)
PRECISION = 24  # bits of constriction's fixed-point probabilities (its default models)
# A range coder's output holds at least the information content of its symbols under the
# probabilities it codes with, less the bits of its final state. Decoding more than that
# means reading past the end. Per symbol, a little more for float rounding.
SLACK_BITS, SLACK_PER_SYMBOL = 96, 2.0**-10


class TableSet:
    """Ragged integer pmfs: values[starts[k]:starts[k+1]] is table k, its first symbol offsets[k]."""

    def __init__(self, values: np.ndarray, starts: np.ndarray, offsets: np.ndarray):
        self.values = np.asarray(values, dtype=np.uint32)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.lengths = np.diff(self.starts)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if len(self.offsets) != len(self.lengths) or (self.lengths < 2).any():
            raise ValueError("inconsistent entropy tables")

    def __len__(self) -> int:
        return len(self.lengths)

    @cached_property
    def bits(self) -> np.ndarray:
        """Information content −log2 p of every entry under the probabilities the coder uses.

        constriction's Categorical(perfect=False) quantizes a table to 24 bits: entry i
        starts at floor(c_i · (2^24 − n) / total) + i, c_i the sum of the entries before it.
        Every entry gains a slot, so a rare entry costs less than −log2(value / total);
        counting with the table's own ratios overstated a stream of rare symbols (by
        0.02 bits per symbol in a test) and refused valid files as cut short.
        """
        values = self.values.astype(np.float64)
        totals = np.add.reduceat(values, self.starts[:-1])
        first = np.repeat(self.starts[:-1], self.lengths)
        cumulative = np.cumsum(values) - values  # exact: integers below 2^53
        cumulative -= np.repeat(cumulative[self.starts[:-1]], self.lengths)
        scale = np.repeat((2.0**PRECISION - self.lengths) / totals, self.lengths)
        left = np.floor(cumulative * scale) + (np.arange(len(values)) - first)
        right = np.append(left[1:], 0.0)
        right[self.starts[1:] - 1] = 2.0**PRECISION  # each table's last entry ends at 2^24
        return PRECISION - np.log2(right - left)

    @cached_property
    def min_bits(self) -> np.ndarray:
        """The fewest bits any one symbol coded with each table takes (its most probable entry)."""
        return np.minimum.reduceat(self.bits, self.starts[:-1])

    @cached_property
    def models(self) -> list:
        return [
            constriction.stream.model.Categorical(
                self.values[a:b].astype(np.float64), perfect=False
            )
            for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)
        ]


def _groups(ids: np.ndarray, n_tables: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order that groups elements by table id, and each group's [start, stop) in it."""
    order = np.argsort(ids, kind="stable")
    bounds = np.zeros(n_tables + 1, dtype=np.int64)
    bounds[1:] = np.cumsum(np.bincount(ids, minlength=n_tables))
    return order, bounds


def _check_ids(ids: np.ndarray, tables: TableSet) -> np.ndarray:
    ids = ids.ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= len(tables)):
        raise ValueError("table id out of range")
    return ids


class Encoder:
    """One range-coded stream of parts in sequence; each part is its symbols grouped by
    table id, then its escape residuals. A part's tables may depend on the parts before
    it (the slices of a channel-conditional model): the decoder reads them in order."""

    def __init__(self):
        self._enc = constriction.stream.queue.RangeEncoder()

    def add(self, symbols: np.ndarray, ids: np.ndarray, tables: TableSet) -> None:
        """Append integer ``symbols`` (any shape), each with table ``ids`` (same shape)."""
        order, bounds = _groups(_check_ids(ids, tables), len(tables))
        # int32 throughout (symbols of a 50 MP full-size image take 150 MB each way); only the
        # escapes, few, widen to int64 for their distances.
        symbols = np.asarray(symbols)
        if symbols.dtype != np.int32 and symbols.size and (symbols.min() < -(2**31) or symbols.max() >= 2**31):
            raise OnicError("latent value out of the codable range")
        s = symbols.astype(np.int32, copy=False).ravel()[order]
        del order
        residuals = []
        for k in np.flatnonzero(np.diff(bounds)):
            seg = s[bounds[k] : bounds[k + 1]]
            lo, hi = int(tables.offsets[k]), int(tables.offsets[k] + tables.lengths[k] - 1)
            idx = np.clip(seg, lo, hi)
            idx -= lo
            self._enc.encode(idx, tables.models[k])
            del idx
            esc = seg[(seg <= lo) | (seg >= hi)].astype(np.int64)
            residuals.append(np.where(esc <= lo, lo - esc, esc - hi))
        residual = np.concatenate(residuals) if residuals else np.zeros(0, dtype=np.int64)
        if residual.size and residual.max() >= 2**MAX_ESCAPE_BITS:
            raise OnicError("latent value out of the codable range")
        _encode_residuals(self._enc, residual)

    def finish(self) -> bytes:
        return self._enc.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads the parts of an ``Encoder``'s stream in the order they were added."""

    def __init__(self, data: bytes):
        if len(data) % 4:
            raise OnicError("corrupt entropy-coded data (not whole 32-bit words)")
        self._dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        self._room = 8 * len(data) + SLACK_BITS  # bits the stream can hold
        self._read = 0.0  # information content decoded so far

    def _spend(self, bits: float, count: int) -> None:
        # constriction reads zeros past the end of the data instead of failing; a stream too
        # short for its symbols shows up as more information decoded than it has room for.
        self._read += bits - SLACK_PER_SYMBOL * count
        if self._read > self._room:
            raise OnicError(f"corrupt entropy-coded data: {self._room - SLACK_BITS} bits cannot hold the "
                            f"symbols of this image (the stream ends early)")

    def read(self, ids: np.ndarray, tables: TableSet) -> np.ndarray:
        """The next part: int32 symbols of the shape of ``ids``."""
        shape = ids.shape
        order, bounds = _groups(_check_ids(ids, tables), len(tables))
        s = np.empty(bounds[-1], dtype=np.int32)
        below = np.zeros(bounds[-1], dtype=bool)
        above = np.zeros(bounds[-1], dtype=bool)
        try:
            for ks in _batches(np.flatnonzero(np.diff(bounds)), bounds):
                self._read_tables(ks, bounds, tables, s, below, above)
            esc = np.flatnonzero(below | above)
            residual, bits = _decode_residuals(self._dec, len(esc))
            self._spend(bits, len(esc))
        except OnicError:
            raise
        except BaseException as e:
            # constriction reports invalid data as AssertionError or ValueError, and a Rust panic
            # as pyo3's PanicException (a BaseException); only interrupts pass through.
            if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise OnicError(f"corrupt entropy-coded data ({e})") from None
        s[esc] += np.where(below[esc], -residual, residual).astype(np.int32)
        out = np.empty_like(s)
        out[order] = s
        return out.reshape(shape)

    def _read_tables(self, ks: np.ndarray, bounds: np.ndarray, tables: TableSet, s: np.ndarray,
                     below: np.ndarray, above: np.ndarray) -> None:
        """The groups of tables ``ks``, consecutive in the grouped order, into s, their end entries
        marked: the decoding one call per table, the rest once for all of them.

        The errors are those of a table-by-table read (the web decoder's): a stream that ends
        early is reported at the first table whose symbols it cannot hold, before any error of
        the range decoder on a later one.
        """
        counts = bounds[ks + 1] - bounds[ks]
        parts, failure = [], None
        for k, n in zip(ks.tolist(), counts.tolist(), strict=True):
            try:
                parts.append(self._dec.decode(tables.models[k], n))
            except BaseException as e:
                failure = e
                break
        done, counts = ks[: len(parts)], counts[: len(parts)]
        if len(parts):
            a = int(bounds[ks[0]])
            b = a + int(counts.sum())
            # A batch of one table (a large image's big ones) takes scalars, as a table-by-table read.
            idx = parts[0] if len(parts) == 1 else np.concatenate(parts)
            table = int(done[0]) if len(done) == 1 else np.repeat(done, counts)
            bits = np.add.reduceat(tables.bits[tables.starts[table] + idx], np.cumsum(counts) - counts)
            for table_bits, n in zip(bits.tolist(), counts.tolist(), strict=True):  # each table in turn
                self._spend(table_bits, n)
            np.equal(idx, 0, out=below[a:b])
            np.equal(idx, tables.lengths[table] - 1, out=above[a:b])
            np.add(idx, tables.offsets[table], out=s[a:b], casting="unsafe")
        if failure is not None:
            raise failure


# Decoder.read batches tables of up to SMALL_TABLE symbols, up to BATCH_SYMBOLS in all: the
# bookkeeping of a small table costs more than its decoding (kodim23), while per-symbol table ids
# cost a large table more than one call does (a 12 MP decode's reads: 104 against 122 ms batched).
SMALL_TABLE, BATCH_SYMBOLS = 2**12, 2**16


def _batches(ks: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """The non-empty tables ks in order, in runs of small tables of at most BATCH_SYMBOLS symbols
    in all; a larger table alone."""
    out, start, total = [], 0, 0
    for i, k in enumerate(ks.tolist()):
        n = int(bounds[k + 1] - bounds[k])
        if total and (total + n > BATCH_SYMBOLS or n > SMALL_TABLE):
            out.append(ks[start:i])
            start, total = i, 0
        total += n
        if n > SMALL_TABLE:
            out.append(ks[i : i + 1])
            start, total = i + 1, 0
    if start < len(ks):
        out.append(ks[start:])
    return out


def check_room(data: bytes, min_bits: float, count: int, section: str) -> None:
    """Refuse a section shorter than the fewest bits its ``count`` symbols can take (``min_bits``).

    A cheap test before any decoding: a 36-byte file claiming a huge image fails here.
    """
    room = 8 * len(data) + SLACK_BITS + SLACK_PER_SYMBOL * count
    if min_bits > room:
        raise OnicError(f"truncated file: the {section} section has {len(data)} bytes, "
                        f"an image of this size needs at least {int(min_bits - SLACK_BITS) // 8}")


def encode(symbols: np.ndarray, ids: np.ndarray, tables: TableSet) -> bytes:
    """Code integer ``symbols`` (any shape), each with table ``ids`` (same shape); returns bytes."""
    enc = Encoder()
    enc.add(symbols, ids, tables)
    return enc.finish()


def decode(data: bytes, ids: np.ndarray, tables: TableSet) -> np.ndarray:
    """Inverse of ``encode``: int32 symbols of the shape of ``ids``."""
    return Decoder(data).read(ids, tables)


def _encode_residuals(enc, r: np.ndarray) -> None:
    if not r.size:
        return
    _, nbits = np.frexp(r.astype(np.float64))  # bit length, 0 for r = 0
    uniform = constriction.stream.model.Uniform()
    enc.encode(nbits.astype(np.int32), uniform, np.full(r.size, MAX_ESCAPE_BITS + 1, dtype=np.int32))
    long = nbits >= 2
    if long.any():
        size = np.left_shift(1, nbits[long] - 1).astype(np.int64)
        enc.encode((r[long] - size).astype(np.int32), uniform, size.astype(np.int32))


def _decode_residuals(dec, count: int) -> tuple[np.ndarray, float]:
    """The residuals and their information content in bits."""
    if not count:
        return np.zeros(0, dtype=np.int64), 0.0
    uniform = constriction.stream.model.Uniform()
    nbits = dec.decode(uniform, np.full(count, MAX_ESCAPE_BITS + 1, dtype=np.int32)).astype(np.int64)
    r = np.where(nbits >= 1, np.left_shift(1, np.maximum(nbits - 1, 0)), 0).astype(np.int64)
    long = nbits >= 2
    if long.any():
        size = np.left_shift(1, nbits[long] - 1).astype(np.int32)
        r[long] += dec.decode(uniform, size)
    return r, count * float(np.log2(MAX_ESCAPE_BITS + 1)) + float(np.maximum(nbits - 1, 0).sum())
