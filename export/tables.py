"""Entropy tables frozen from a trained model: integer probabilities, no floats at decode time.

- z: one table per channel from the factorized prior, trimmed to where the
  tails hold less than TAIL_MASS (CompressAI's EntropyBottleneck does the same), plus one
  entry each side for the tails alone.
- y: zero-mean Gaussian tables, one per entry of a log-spaced scale table
  (CompressAI's ``get_scale_table``: 64 scales from 0.11 to 256). The runtime
  picks a table by σ and codes y − μ rounded, so μ never changes decodability. Each
  also has one entry more each side than its tails need, like z's.

The end entries of every table also absorb the tails; the runtime escape-codes
values beyond them (see codec/entropy.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from export.model import Onic

PRECISION = 16  # every table sums to at most 2**16; each symbol gets at least 1
TAIL_MASS = 1e-9
SCALE_TABLE = np.exp(np.linspace(math.log(0.11), math.log(256), 64)).astype(np.float32)


def quantize_pmf(p: np.ndarray) -> np.ndarray:
    """Float probabilities → positive integers summing to at most 2**PRECISION."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    free = 2**PRECISION - len(p)
    return (1 + np.floor(p * free)).astype(np.uint32)


def z_tables(model: Onic, search: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """(lowest symbol per channel, integer pmf per channel) for the factorized prior."""
    pmf = model.entropy_bottleneck.pmf_table(search).double().numpy()  # (C, 2·search + 1)
    offsets, tables = [], []
    for row in pmf:
        cdf = np.cumsum(row)
        total = cdf[-1]
        lo = int(np.searchsorted(cdf, TAIL_MASS / 2 * total))
        hi = int(np.searchsorted(cdf, (1 - TAIL_MASS / 2) * total))
        # One entry more on each side, and always 0: the runtime escape-codes every symbol that
        # lands on an end entry (codec/entropy.py), so an end must hold only the tail's mass. A
        # channel whose prior has collapsed onto 0 otherwise got the table [0, 1] and paid
        # about 4.6 escape bits for each of its symbols (13 of 64 channels of one continuation
        # of the shipped model: z cost 3.5× its likelihoods).
        lo, hi = max(min(lo, search) - 1, 0), min(max(hi, search) + 1, 2 * search)
        kept = row[lo : hi + 1].copy()
        kept[0] += row[:lo].sum()
        kept[-1] += row[hi + 1 :].sum()
        offsets.append(lo - search)
        tables.append(quantize_pmf(kept))
    return np.array(offsets, dtype=np.int32), tables


def gaussian_tables(scales: np.ndarray = SCALE_TABLE) -> list[np.ndarray]:
    """Integer pmf over [−K, K] of a zero-mean quantized Gaussian for each scale."""
    tail = -_ndtri(TAIL_MASS / 2)
    tables = []
    for s in scales.astype(np.float64):
        k = max(1, math.ceil(s * tail)) + 1  # the ends hold the tails alone (see z_tables)
        edges = (np.arange(-k, k + 2) - 0.5) / s
        cdf = 0.5 * _erfc(-edges / math.sqrt(2))
        p = np.diff(cdf)
        p[0] += cdf[0]
        p[-1] += 1 - cdf[-1]
        tables.append(quantize_pmf(p))
    return tables


def _erfc(x: np.ndarray) -> np.ndarray:
    return torch.special.erfc(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def _ndtri(p: float) -> float:
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def pack_tables(tables: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged tables → (concatenated values, start offsets with a final end)."""
    starts = np.zeros(len(tables) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(t) for t in tables])
    return np.concatenate(tables).astype(np.uint32), starts
