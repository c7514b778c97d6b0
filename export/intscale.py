"""Quantize the σ branch of h_s into the integer scale path (codec/intscale.py).

Post-training quantization with calibration (Ballé, Johnston & Minnen 2019
train the integer network; at 12-bit weights and 16-bit activations the
rounding is small enough that calibration alone keeps the rate cost well
under 1%: ``python benchmarks/intscale_cost.py`` measures it on Kodak).

- weights: per output channel, symmetric; FAST_WEIGHT_BITS (8) bits wherever the
  layer's input is int16, so that the decoder runs it on onnxruntime's 8-bit
  convolutions (codec/intconv.py: the same integers, about 3× faster), and the
  format's WEIGHT_BITS (12) for the first layer, whose input ẑ · inverse gain
  exceeds int16 and runs in float64 anyway (what 8 bits cost against 12:
  ``python benchmarks/bundle_sizes.py``, README: +0.006% to +0.020% for 0.7.0); 7 bits
  (``weight_bits``) run as uint8 × int8 matrix products instead, faster again, for a rate
  cost of their own (README, onic 0.12.1);
- activations: one scale per layer output, from the largest |value| seen on
  calibration images times a 2× headroom;
- requantization: per channel, an integer multiplier in [2**14, 2**15) and the
  matching shift;
- slices (channel-conditional models): the first layer of each slice's σ
  network is split by input (F and the symbols), each half with its own
  weight scales and rescaling into the hidden layer's units; its last layer is
  rescaled into the units of h_s's σ accumulator, whose thresholds it shares.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from codec import intscale
from export.model import Onic

HEADROOM = 2.0


FAST_WEIGHT_BITS = 8


def _weight_scale(w: torch.Tensor, out_axis: int, bits: int) -> np.ndarray:
    dims = [d for d in range(w.dim()) if d != out_axis]
    max_abs = w.abs().amax(dim=dims).double().numpy()
    return np.maximum(max_abs, 1e-12) / (2 ** (bits - 1) - 1)


def _rescaler(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like _multiplier, but a channel whose ratio is negligible (all-zero weights: a slice
    network that has not learnt anything yet) gets multiplier 0."""
    dead = ratio < 2.0**-31
    mult, shift = _multiplier(np.where(dead, 1.0, ratio))
    return np.where(dead, 0, mult), np.where(dead, 1, shift)


def _quantize_weight(w: torch.Tensor, out_axis: int = 0,
                     bits: int = FAST_WEIGHT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(int16 weights of ``bits`` bits, per-output-channel scale) for a conv weight."""
    sw = _weight_scale(w, out_axis, bits)
    shape = [1] * w.dim()
    shape[out_axis] = -1
    return torch.round(w.double() / torch.from_numpy(sw).view(shape)).to(torch.int64).numpy().astype(np.int16), sw


def _multiplier(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ratio ≈ mult / 2**shift with mult in [2**14, 2**15)."""
    shift = np.array([14 - math.floor(math.log2(r)) for r in ratio], dtype=np.int64)
    if shift.max() > intscale.MAX_SHIFT or shift.min() < 1:
        raise ValueError(f"requantization shifts {shift.min()}–{shift.max()} are outside 1–{intscale.MAX_SHIFT}")
    mult = np.round(ratio * 2.0**shift).astype(np.int64)
    return mult, shift


@torch.no_grad()
def calibrate(model: Onic, z_samples: list[torch.Tensor]) -> list[float]:
    """Largest |activation| after each LeakyReLU of h_s over the calibration ẑ."""
    seen = [0.0, 0.0]
    layers = list(model.h_s)
    for z in z_samples:
        x = z
        k = 0
        for layer in layers[:-1]:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                seen[k] = max(seen[k], float(x.abs().max()))
                k += 1
    return seen


@torch.no_grad()
def calibrate_slices(model: Onic, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[float]]:
    """Largest |σ_h| (the input F) and largest |hidden activation| of each slice's σ network."""
    ctx = model.context
    f_max, hidden = 0.0, [0.0] * len(ctx.scale)
    for y, z in samples:
        mu_h, sigma_h = model.h_s(z).chunk(2, dim=1)
        f_max = max(f_max, float(sigma_h.abs().max()))
        _, mu, _ = ctx(y, mu_h, sigma_h)
        sym = torch.round(y - mu)
        for k, (a, _) in enumerate(ctx.bounds[1:]):
            hidden[k] = max(hidden[k], float(ctx.scale[k].hidden(sigma_h, sym[:, :a]).abs().max()))
    return f_max, hidden


@torch.no_grad()
def quantize_slices(model: Onic, samples: list[tuple[torch.Tensor, torch.Tensor]],
                    sigma_unit: np.ndarray, weight_bits: int = FAST_WEIGHT_BITS) -> dict[str, np.ndarray]:
    """Integer parameters of the slices' σ networks (codec.intscale.slice_indexes)."""
    f_max, hidden = calibrate_slices(model, samples)
    act_f = max(f_max, 1e-6) * HEADROOM / intscale.ACT_MAX
    p: dict[str, np.ndarray] = {"slices": np.array(model.cfg.slices, dtype=np.int64)}
    p["f_m"], p["f_s"] = _multiplier(sigma_unit / act_f)
    for k, ((a, b), net) in enumerate(zip(model.context.bounds[1:], model.context.scale, strict=True), start=1):
        act_h = max(hidden[k - 1], 1e-6) * HEADROOM / intscale.ACT_MAX
        wf, swf = _quantize_weight(net.f.weight, bits=weight_bits)
        ws, sws = _quantize_weight(net.s.weight, bits=weight_bits)
        w2, sw2 = _quantize_weight(net.out.weight, bits=weight_bits)
        mf, sf = _rescaler(act_f * swf / act_h)
        ms, ss = _rescaler(1.0 * sws / act_h)  # symbols enter as plain integers
        m2, s2 = _rescaler(act_h * sw2 / sigma_unit[a:b])
        p |= {f"k{k}_wf": wf, f"k{k}_ws": ws, f"k{k}_w2": w2, f"k{k}_mf": mf, f"k{k}_sf": sf,
              f"k{k}_ms": ms, f"k{k}_ss": ss, f"k{k}_m2": m2, f"k{k}_s2": s2,
              f"k{k}_b1": np.round(net.f.bias.double().numpy() / act_h).astype(np.int64),
              f"k{k}_b2": np.round(net.out.bias.double().numpy() / sigma_unit[a:b]).astype(np.int64)}
    return p


@torch.no_grad()
def quantize(model: Onic, samples: list[tuple[torch.Tensor, torch.Tensor]],
             scale_table: np.ndarray, weight_bits: int = FAST_WEIGHT_BITS) -> dict[str, np.ndarray]:
    """Integer parameters of the σ branch, as codec.intscale.accumulate/indexes expect them.

    ``samples``: (y, h_s's input) pairs from calibration images; ``weight_bits``: of every
    layer but the first (which has the format's WEIGHT_BITS).
    """
    if not 2 <= weight_bits <= intscale.WEIGHT_BITS:
        raise ValueError(f"weight_bits must be 2-{intscale.WEIGHT_BITS}, got {weight_bits}")
    z_samples = [z for _, z in samples]
    d0, _, d1, _, c2 = model.h_s
    M = model.cfg.M
    act = [max(m, 1e-6) * HEADROOM / intscale.ACT_MAX for m in calibrate(model, z_samples)]
    # ẑ enters as integers; times the integer inverse gain on z (Z_INV_BITS fraction bits) if any.
    s_in = [2.0**-intscale.Z_INV_BITS if model.cfg.hyper_gains else 1.0, act[0], act[1]]
    p: dict[str, np.ndarray] = {}
    for i, (w, b, out_axis) in enumerate([
        (d0.weight, d0.bias, 1),
        (d1.weight, d1.bias, 1),
        (c2.weight[M:], c2.bias[M:], 0),  # only the σ half of the last conv
    ]):
        p[f"w{i}"], sw = _quantize_weight(w, out_axis, intscale.WEIGHT_BITS if i == 0 else weight_bits)
        unit = s_in[i] * sw  # value of one accumulator step, per output channel
        p[f"b{i}"] = np.round(b.double().numpy() / unit).astype(np.int64)
        if i < 2:
            p[f"m{i}"], p[f"s{i}"] = _multiplier(unit / act[i])
        else:
            # index = #(table < σ) and σ = acc·unit, so acc > floor(table/unit) ⇔ table < σ.
            p["thresholds"] = np.floor(scale_table.astype(np.float64)[None, :] / unit[:, None]).astype(np.int64)
            if model.cfg.slices:
                p |= quantize_slices(model, samples, unit, weight_bits)
    p["version"] = np.array(intscale.INDEX_PATH_VERSION)
    return p
