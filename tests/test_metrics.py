"""PSNR, MS-SSIM and BD-rate against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codec.bdrate import bd_rate
from codec.metrics import ms_ssim, ms_ssim_db, psnr


def pair(seed=0, shape=(200, 240, 3), noise=12.0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=shape).astype(np.uint8)
    y = np.clip(x + rng.normal(0, noise, size=shape), 0, 255).astype(np.uint8)
    return x, y


def test_psnr_known_value():
    x = np.zeros((4, 4, 3), dtype=np.uint8)
    y = x.copy()
    y[0, 0, 0] = 48  # MSE = 48² / 48 = 48
    assert psnr(x, y) == pytest.approx(10 * math.log10(255**2 / 48))
    assert psnr(x, x) == math.inf


def test_ms_ssim_identity_and_small_images():
    x, _ = pair()
    assert ms_ssim(x, x) == pytest.approx(1.0)
    assert math.isnan(ms_ssim(x[:100], x[:100]))
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


@pytest.mark.parametrize("shape", [(200, 240, 3), (161, 333, 3), (257, 190, 3)])
def test_ms_ssim_matches_pytorch_msssim(shape):
    torch = pytest.importorskip("torch")
    ref = pytest.importorskip("pytorch_msssim")
    x, y = pair(shape=shape)
    want = ref.ms_ssim(
        torch.from_numpy(x).permute(2, 0, 1)[None].double(), torch.from_numpy(y).permute(2, 0, 1)[None].double(),
        data_range=255,
    ).item()
    assert ms_ssim(x, y) == pytest.approx(want, abs=1e-6)


def test_bd_rate_of_a_constant_factor_is_that_factor():
    psnrs = np.array([28.0, 30.5, 33.0, 35.2, 37.9])
    rates = np.array([0.15, 0.3, 0.55, 0.9, 1.5])
    assert bd_rate(rates, psnrs, rates * 0.8, psnrs) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(rates, psnrs, rates * 1.25, psnrs) == pytest.approx(25.0, abs=1e-9)
    # a test curve sampled at other points of the same shifted curve gives the same answer
    dense = np.linspace(28, 37.9, 9)
    dense_rates = np.exp(np.interp(dense, psnrs, np.log(rates))) * 0.8
    assert bd_rate(rates, psnrs, dense_rates, dense) == pytest.approx(-20.0, abs=1.5)


def test_bd_rate_without_overlap_is_nan():
    assert math.isnan(bd_rate([0.1, 0.2], [20, 22], [0.5, 1.0], [30, 33]))
