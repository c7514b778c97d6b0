"""The synthesis' gradient as an ONNX graph, for refining latents in the encoder (codec/refine.py).

Encoder-side refinement (Campos et al., "Content Adaptive Optimization for Neural
Image Compression", CVPR Workshops 2019; Yang, Bamler & Mandt, "Improving Inference
for Neural Image Compression", NeurIPS 2020) moves an image's latents y downhill on
its own rate-distortion cost before they are coded. The decoder and the file format
do not change. The torch-free runtime needs dLoss/dŷ of the synthesis, so this module
writes g_s's backward pass out by hand as ordinary forward operators (Conv,
Transpose, Mul, Sqrt), which the exporter turns into a plain graph:

    synthesis_grad.onnx  y_hat (1,M,h,w), inv_gain (1,M,1,1), x (1,3,16h,16w) in [0,1],
                         weight (1,1,16h,16w)
                      →  grad (1,M,h,w) = d/dŷ Σ weight·(clip(g_s(ŷ·inv_gain), 0, 1) − x)²,
                         sse (1,) = that sum

The weight is 0 on stride padding and outside a tile's core, so that the tiles of a
large image add up to the whole image's gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from export.model import FrozenGDN


def _flipped(conv: nn.Conv2d) -> torch.Tensor:
    """The weight of the convolution that is ``conv``'s transpose (stride 1, padding k//2)."""
    return conv.weight.detach().transpose(0, 1).flip(2, 3).contiguous()


def pixel_unshuffle(g: torch.Tensor) -> torch.Tensor:
    """F.pixel_unshuffle(g, 2) (the pixel shuffle's VJP) as two transposes, the inverse of
    export.bundle.pixel_shuffle: the exporter writes F.pixel_unshuffle as a six-dimensional
    Transpose, which onnxruntime ran as slowly as DepthToSpace."""
    n, c, h2, w2 = g.shape
    h, w = h2 // 2, w2 // 2
    rows = g.reshape(n * c, h, 2, w2).transpose(1, 2)  # (n c) a h (w b): rows apart
    cols = rows.reshape(n * c * 2, h * w, 2).transpose(1, 2)  # (n c a) b (h w): columns apart
    return cols.reshape(n, 4 * c, h, w)


class SynthesisGradient(nn.Module):
    """g_s forward, then its vector-Jacobian product written layer by layer.

    ``layers`` is the frozen synthesis of export/bundle.py: sub-pixel convolutions
    (3×3 conv to 4× the channels, then pixel shuffle) alternating with inverse GDN.
    - sub-pixel conv: the VJP of pixel shuffle is pixel unshuffle, that of a stride-1
      3×3 convolution is the convolution with the transposed, flipped kernel;
    - IGDN, o = v·n with n = sqrt(β + γ v²): ∂L/∂v = g·n + v · γᵀ(g·v / n).
    """

    def __init__(self, layers: nn.Sequential):
        super().__init__()
        self.layers = layers
        self.back = nn.ParameterList()
        for m in layers:
            if isinstance(m, FrozenGDN):
                self.back.append(nn.Parameter(m.gamma.detach().transpose(0, 1).contiguous(), requires_grad=False))
            else:
                self.back.append(nn.Parameter(_flipped(m.conv), requires_grad=False))

    def forward(self, y_hat: torch.Tensor, inv_gain: torch.Tensor, x: torch.Tensor, weight: torch.Tensor):
        h = y_hat * inv_gain
        saved = []
        for m in self.layers:
            if isinstance(m, FrozenGDN):
                norm = torch.sqrt(F.conv2d(h * h, m.gamma, m.beta))
                saved.append((h, norm))
                h = h * norm
            else:
                saved.append(None)
                h = m(h)
        err = torch.clamp(h, 0, 1) - x
        inside = ((h >= 0) & (h <= 1)).to(h.dtype)  # clip passes no gradient outside [0, 1]
        g = 2 * weight * err * inside
        for m, back, s in zip(reversed(self.layers), reversed(self.back), reversed(saved), strict=True):
            if isinstance(m, FrozenGDN):
                v, norm = s
                g = g * norm + v * F.conv2d(g * v / norm, back)
            else:
                g = F.conv2d(pixel_unshuffle(g), back, padding=1)
        sse = torch.sum(weight * err * err).reshape(1)
        return g * inv_gain, sse


def example_inputs(M: int) -> tuple[torch.Tensor, ...]:
    """Inputs for exporting the gradient graph of a synthesis of M latent channels."""
    return (torch.randn(1, M, 8, 12), torch.ones(1, M, 1, 1), torch.rand(1, 3, 128, 192), torch.ones(1, 1, 128, 192))
