"""Export a trained checkpoint as a model bundle: four ONNX graphs, entropy tables, a manifest.

    python -m export.bundle runs/cpu/ckpt.pt codec/models/default

Graphs (dynamic height and width, checked with onnx.checker):
- analysis.onnx       x (1,3,H,W) in [0,1], gain (1,M,1,1)  → y (1,M,H/16,W/16)
- hyper_encoder.onnx  y                                      → z (1,N,H/64,W/64)
- hyper_decoder.onnx  z_hat                                  → mu (1,M,H/16,W/16) (σ: the integer path)
- decoder.onnx        y_hat, inv_gain (1,M,1,1)              → x_hat (1,3,H,W)
and, for a channel-conditional model (slices [a_k, b_k) of y; C = the slice networks' width):
- slice_priorK.onnx   mu_h (1,M,h,w)                         → prior (1,2C,h,w)  (C for K = 0)
- slice_meanK.onnx    mu_h, prior (its first C channels), y_prev (1,a_k,h,w) → mu (1,b_k−a_k,h,w)  (K ≥ 1)
- slice_lrpK.onnx     prior (its last C channels), y_upto (1,b_k,h,w) → y_hat (1,b_k−a_k,h,w)
where slice_priorK holds the part of slice K's networks' first convolutions that reads μ_h
(bias included): slice_meanK's, then slice_lrpK's (``SlicePrior``).
The encoder is analysis + hyper_encoder, two graphs so that the analysis can
run in overlapping tiles on large images (codec/tiling.py). Encoder-only, for
refinement (codec/refine.py), listed under encoder_files and outside the model id:
- synthesis_grad.onnx y_hat, inv_gain, x (1,3,H,W), weight (1,1,H,W) → grad (like y_hat), sse (1,)
and, listed under tile_files, likewise outside it (export/halo.py):
- decoder_tiles.onnx  y_hat, inv_gain, halo (4,) int64        → x_hat, less decoder_halo pixels per flagged side

tables.npz holds the gain ladder and the integer entropy tables, scale_path.npz the
integer σ branch of h_s (export/intscale.py); manifest.json
lists every file with its SHA-256, and the model id is the hash of that list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from codec import intscale as codec_intscale
from codec.api import reference
from codec.session import GRADIENT_GRAPH
from export import halo, intscale, phases, refine, tables
from export.model import GDN, FrozenGDN, Onic
from export.train import load_model, pad_to_stride

OPSET = 17
PHASE_CROP = ("decoder", "hyper_decoder")  # their phase convolutions are cropped to their taps (export/phases.py)
BUNDLE_FORMAT = 1


class AnalysisGraph(nn.Module):
    def __init__(self, m: Onic):
        super().__init__()
        self.g_a = frozen(m.g_a)

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.g_a(x) * gain


class HyperEncoder(nn.Module):
    def __init__(self, m: Onic):
        super().__init__()
        self.h_a = m.h_a

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.h_a(y)


class HyperDecoder(nn.Module):
    """h_s's μ half: the runtime takes σ from the integer path (codec/intscale.py), so the float σ
    channels of h_s's last convolution are left out of the graph. Computed and thrown away, they were
    half of that convolution, which holds most of h_s's multiply-adds (the same μ, bit for bit)."""

    def __init__(self, m: Onic):
        super().__init__()
        h_s = [PhaseSubPixel(x) if isinstance(x, SubPixelConv) else x for x in frozen(m.h_s)]
        last, M = h_s[-1], m.cfg.M
        mu = nn.Conv2d(last.in_channels, M, last.kernel_size, padding=last.padding)
        with torch.no_grad():
            mu.weight.copy_(last.weight[:M])
            mu.bias.copy_(last.bias[:M])
        self.h_s = nn.Sequential(*h_s[:-1], mu)

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.h_s(z_hat)


def float_sigma(model: Onic, z_hat: np.ndarray) -> np.ndarray:
    """h_s's float σ (M, 4h, 4w) of ẑ (N, h, w) as fed to h_s: what CompressAI would index the scale
    table with, and what the integer path approximates (tests and benchmarks/intscale_cost.py)."""
    with torch.no_grad():
        return model.hyper(torch.from_numpy(np.ascontiguousarray(z_hat, dtype=np.float32))[None])[1][0].numpy()


class Decoder(nn.Module):
    def __init__(self, m: Onic):
        super().__init__()
        self.g_s = gdn_before_shuffle(frozen(m.g_s))

    def forward(self, y_hat: torch.Tensor, inv_gain: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat * inv_gain)


def slice_networks(m: Onic, k: int) -> list[nn.Sequential]:
    """Slice k's networks in the order its slice_priorK channels hold them: mean (k ≥ 1), then lrp."""
    return [*([m.context.mean[k - 1]] if k else []), m.context.lrp[k]]


class SlicePrior(nn.Module):
    """The part of slice k's networks' first convolutions that reads μ_h, as one convolution.

    Each slice network's first layer is a 3×3 convolution of (μ_h, ŷ of earlier slices),
    and μ_h is known long before any ŷ: the decoder has it once h_s has run, while the
    symbols of slice 0 still wait for the integer path. Split by input channels, the
    convolution is conv(μ_h) + conv(ŷ); running every slice's conv(μ_h) up front takes
    two thirds of the slice networks' multiply-adds (M = 96) off the chain that runs
    slice after slice once symbols arrive (README, Speed and memory, onic 0.11.0). One graph
    per slice, so that a large image holds one slice's prior at a time.
    """

    def __init__(self, m: Onic, k: int):
        super().__init__()
        M = m.cfg.M
        firsts = [net[0] for net in slice_networks(m, k)]
        self.conv = nn.Conv2d(M, sum(c.out_channels for c in firsts), 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([c.weight[:, :M] for c in firsts]))
            self.conv.bias.copy_(torch.cat([c.bias for c in firsts]))

    def forward(self, mu_h: torch.Tensor) -> torch.Tensor:
        return self.conv(mu_h)


class SliceRest(nn.Module):
    """A slice network given its prior (SlicePrior's channels for it): the first convolution's
    ŷ part added to the prior, then the network's activation and last convolution."""

    def __init__(self, m: Onic, net: nn.Sequential):
        super().__init__()
        first, M = net[0], m.cfg.M
        self.conv_y = nn.Conv2d(first.in_channels - M, first.out_channels, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv_y.weight.copy_(first.weight[:, M:])
        self.act, self.out = net[1], net[2]

    def forward(self, prior: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(prior + self.conv_y(y)))


class SliceMean(nn.Module):
    """μ of slice k ≥ 1 of a channel-conditional model: μ_h's slice plus its network of (μ_h, ŷ_<k)."""

    def __init__(self, m: Onic, k: int):
        super().__init__()
        self.a, self.b = m.context.bounds[k]
        self.net = SliceRest(m, m.context.mean[k - 1])

    def forward(self, mu_h: torch.Tensor, prior: torch.Tensor, y_prev: torch.Tensor) -> torch.Tensor:
        return mu_h[:, self.a : self.b] + self.net(prior, y_prev)


class SliceLRP(nn.Module):
    """Latent residual prediction of slice k: ŷ_k = (μ_k + symbol) + 0.5·tanh(net(μ_h, ŷ_≤k))."""

    def __init__(self, m: Onic, k: int):
        super().__init__()
        self.a, self.b = m.context.bounds[k]
        self.net = SliceRest(m, m.context.lrp[k])

    def forward(self, prior: torch.Tensor, y_upto: torch.Tensor) -> torch.Tensor:
        return y_upto[:, self.a : self.b] + 0.5 * torch.tanh(self.net(prior, y_upto))


class SubPixelConv(nn.Module):
    """A stride-2 transposed convolution rewritten as a 3×3 convolution to 4× the channels + pixel shuffle.

    The two compute the same function (Shi et al., "Is the deconvolution layer
    the same as a convolutional layer?", arXiv:1609.07009, 2016): output pixel
    (2m + a, 2n + b) only ever meets the kernel taps of parity (a, b), so each
    of the four output phases is an ordinary convolution of the input. onnxruntime
    runs Conv with its blocked (NCHWc) kernels but ConvTranspose through a
    column buffer 25× its input: the synthesis got faster and its arena smaller.
    """

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        w = deconv.weight.detach()  # (in, out, k, k)
        cin, cout, k, _ = w.shape
        p = deconv.padding[0]
        if deconv.stride != (2, 2) or deconv.output_padding != (1, 1) or k % 2 == 0 or k > 5 or p != k // 2:
            raise ValueError("SubPixelConv handles odd kernels up to 5, stride 2, padding k//2, output padding 1")
        kernel = torch.zeros(cout, 2, 2, cin, 3, 3)
        for a in (0, 1):
            for b in (0, 1):
                for j in range(3):
                    for i in range(3):
                        # output 2m + a takes input m + j − 1 through tap 2(1 − j) + a + p
                        ty, tx = 2 * (1 - j) + a + p, 2 * (1 - i) + b + p
                        if 0 <= ty < k and 0 <= tx < k:
                            kernel[:, a, b, :, j, i] = w[:, :, ty, tx].T
        self.conv = nn.Conv2d(cin, 4 * cout, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(kernel.reshape(4 * cout, cin, 3, 3))
            self.conv.bias.copy_(deconv.bias.detach().repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(self.conv(x))


def pixel_shuffle(x: torch.Tensor, shape: tuple | None = None) -> torch.Tensor:
    """F.pixel_shuffle(x, 2) as two transposes, which export as Transpose instead of DepthToSpace.
    ``shape``, x's (n, 4c, h, w) when the graph should not read it from x (export.qat.QuantSubPixel).

    Channel 4c + 2a + b moves to pixel (2h + a, 2w + b) of channel c. onnxruntime's
    DepthToSpace moved the synthesis' largest tensor (256 × 192 × 128 at 768×512) in
    12–19 ms, about as long as the convolution before it; interleaving the columns
    (b) first, then the rows (a), whole rows at a time, takes two transposes of a
    few ms each (the same values: the export's test compares the graphs).
    """
    n, c4, h, w = x.shape if shape is None else shape
    c = c4 // 4
    cols = x.reshape(n * c * 2, 2, h * w).transpose(1, 2)  # (n c a) (h w) b: columns interleaved
    rows = cols.reshape(n * c, 2, h, 2 * w).transpose(1, 2)  # (n c) h a (w b): rows interleaved
    return rows.reshape(n, c, 2 * h, 2 * w)


def interleave(phases: list[torch.Tensor]) -> torch.Tensor:
    """The pixel shuffle of four phase outputs (n, C, h, w), in the order (a, b) = (0, 0), (0, 1),
    (1, 0), (1, 1): phase (a, b) moves to pixels (2h + a, 2w + b). Two stacks, each one copy: the
    columns of each row phase, then the rows (the transposes of ``pixel_shuffle`` need a
    concatenation of the phases first)."""
    n, c, h, w = phases[0].shape
    rows = [torch.stack(phases[2 * a : 2 * a + 2], dim=4).reshape(n, c, h, 2 * w) for a in (0, 1)]
    return torch.stack(rows, dim=3).reshape(n, c, 2 * h, 2 * w)


def _phase_convs(sp: SubPixelConv) -> nn.ModuleList:
    """The four phases of a SubPixelConv (channel 4c + phase) as convolutions of their own, 3×3 with
    their zero taps: export/phases.py crops each to its own taps in the ONNX graph."""
    w, b = sp.conv.weight.detach(), sp.conv.bias.detach()
    convs = nn.ModuleList()
    for phase in range(4):
        conv = nn.Conv2d(w.shape[1], w.shape[0] // 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(w[phase::4])
            conv.bias.copy_(b[phase::4])
        convs.append(conv)
    return convs


class PhaseSubPixel(nn.Module):
    """A SubPixelConv as one convolution per output phase and ``interleave``: the same function, in
    the form export/phases.py crops (Shi et al., arXiv:1609.07009: each phase is a convolution)."""

    def __init__(self, sp: SubPixelConv):
        super().__init__()
        self.convs = _phase_convs(sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interleave([conv(x) for conv in self.convs])


class SubPixelGDN(nn.Module):
    """A sub-pixel convolution and the (inverse) GDN after it, the GDN run on each phase before the
    pixel shuffle.

    GDN acts on each pixel's channels alone, so it commutes with the shuffle. onnxruntime then
    keeps the convolution, x² and the GDN's own convolution in its blocked layout, and the
    synthesis reorders one tensor fewer per layer (README, Speed and memory:
    benchmarks/ab_speed.py --synthesis-threads against acb293c). Each phase is a convolution of
    its own (``PhaseSubPixel``), which export/phases.py crops to the phase's taps.
    """

    def __init__(self, sp: SubPixelConv, gdn: FrozenGDN):
        super().__init__()
        self.convs = _phase_convs(sp)
        self.inverse = gdn.inverse
        self.register_buffer("gamma", gdn.gamma.detach().clone())
        self.register_buffer("beta", gdn.beta.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for conv in self.convs:
            v = conv(x)
            norm = torch.sqrt(F.conv2d(v * v, self.gamma, self.beta))
            out.append(v * norm if self.inverse else v / norm)
        return interleave(out)


def gdn_before_shuffle(seq: nn.Sequential) -> nn.Sequential:
    """A frozen transform with each SubPixelConv + FrozenGDN pair fused into a SubPixelGDN."""
    layers, out = list(seq), []
    while layers:
        m = layers.pop(0)
        if isinstance(m, SubPixelConv) and layers and isinstance(layers[0], FrozenGDN):
            m = SubPixelGDN(m, layers.pop(0))
        out.append(m)
    return nn.Sequential(*out)


def frozen(seq: nn.Sequential) -> nn.Sequential:
    """A copy of a transform for export: GDN reparametrizations evaluated once, transposed convs as sub-pixel."""

    def freeze(m: nn.Module) -> nn.Module:
        if isinstance(m, GDN):
            return FrozenGDN(m)
        if isinstance(m, nn.ConvTranspose2d):
            return SubPixelConv(m)
        return m

    return nn.Sequential(*[freeze(m) for m in seq])


def graphs(model: Onic) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[str]]]:
    """name → (module, example inputs, input names, output names)."""
    N, M = model.cfg.N, model.cfg.M
    gain = torch.ones(1, M, 1, 1)
    out = {
        "analysis": (AnalysisGraph(model), (torch.rand(1, 3, 128, 192), gain), ["x", "gain"], ["y"]),
        "hyper_encoder": (HyperEncoder(model), (torch.randn(1, M, 8, 12),), ["y"], ["z"]),
        "hyper_decoder": (HyperDecoder(model), (torch.randn(1, N, 2, 3),), ["z_hat"], ["mu"]),
        "decoder": (Decoder(model), (torch.randn(1, M, 8, 12), gain), ["y_hat", "inv_gain"], ["x_hat"]),
    }
    for k, (a, b) in enumerate(model.context.bounds if model.cfg.slices else []):
        mu_h = torch.randn(1, M, 8, 12)
        out[f"slice_prior{k}"] = (SlicePrior(model, k), (mu_h,), ["mu_h"], ["prior"])
        prior = torch.randn(1, model.context.lrp[k][0].out_channels, 8, 12)
        if k:
            out[f"slice_mean{k}"] = (SliceMean(model, k), (mu_h, prior, torch.randn(1, a, 8, 12)),
                                     ["mu_h", "prior", "y_prev"], ["mu"])
        out[f"slice_lrp{k}"] = (SliceLRP(model, k), (prior, torch.randn(1, b, 8, 12)), ["prior", "y_upto"], ["y_hat"])
    return out


def export_graph(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], path: Path,
                 dynamic: dict[str, dict[int, str]] | None = None) -> None:
    spatial = {2: "height", 3: "width"}
    if dynamic is None:
        dynamic = {n: spatial for n in inputs + outputs if n not in ("gain", "inv_gain")}
    with warnings.catch_warnings():
        # dynamo=False is deprecated but still gives the plain Conv graphs we want, with dynamic axes.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            module.eval(), args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def export_gradient(layers: nn.Sequential, channels: int, path: Path) -> None:
    """synthesis_grad.onnx (export/refine.py): the squared-error gradient, for refinement, of a
    synthesis of ``channels`` latent channels given as frozen g_s layers (``frozen(model.g_s)``, or
    export.qat's fine-tuned ones)."""
    latent, pixels = {2: "height", 3: "width"}, {2: "pixel_height", 3: "pixel_width"}
    export_graph(refine.SynthesisGradient(layers), refine.example_inputs(channels),
                 ["y_hat", "inv_gain", "x", "weight"], ["grad", "sse"], path,
                 dynamic={"y_hat": latent, "grad": latent, "x": pixels, "weight": pixels})


def quality_positions(rungs: int, position_floor: float) -> torch.Tensor:
    """Ladder position of each quality 0–100, as codec.session.Bundle.gains maps them."""
    q = torch.arange(101, dtype=torch.float64)
    return (position_floor + q / 100 * (rungs - 1 - position_floor)).float()


@torch.no_grad()
def z_gain_tables(model: Onic, position_floor: float) -> dict[str, np.ndarray]:
    """Per quality: the gain on z (float32, encoder only) and the inverse gain on ẑ as an integer
    with Z_INV_BITS fraction bits (it enters the integer scale path, so the decoder must not compute it)."""
    if not model.cfg.hyper_gains:
        return {}
    z_gain, z_inv = model.z_gains(quality_positions(len(model.cfg.lambdas), position_floor))
    return {"z_gain": z_gain[:, :, 0, 0].numpy().astype(np.float32),
            "z_inv_gain_q": _fixed_point(z_inv[:, :, 0, 0]).numpy().astype(np.int32)}


def _fixed_point(z_inv: torch.Tensor) -> torch.Tensor:
    """Inverse gains on z as the integers (Z_INV_BITS fraction bits) that the bundle stores."""
    q = torch.round(z_inv.double() * 2**codec_intscale.Z_INV_BITS).clamp_min(1)
    if q.max() > codec_intscale.Z_INV_MAX:
        raise ValueError(f"an inverse gain on z of {z_inv.max():.1f} is beyond the integer path's range")
    return q


def z_inv_gain(model: Onic, t: float) -> torch.Tensor | None:
    """The inverse gain on ẑ (1, N, 1, 1) that the runtime applies at position t, rounded as it rounds it."""
    if not model.cfg.hyper_gains:
        return None
    _, zi = model.z_gains(torch.tensor([t]))
    return _fixed_point(zi).float() / 2**codec_intscale.Z_INV_BITS


def write_tables(model: Onic, path: Path, position_floor: float = 0.0) -> None:
    z_offsets, z_pmfs = tables.z_tables(model)
    z_values, z_starts = tables.pack_tables(z_pmfs)
    y_values, y_starts = tables.pack_tables(tables.gaussian_tables())
    with torch.no_grad():
        np.savez(
            path,
            **z_gain_tables(model, position_floor),
            log_gain=model.log_gain.numpy().astype(np.float32),
            log_inv_gain=model.log_inv_gain.numpy().astype(np.float32),
            lambdas=model.lambdas.numpy().astype(np.float64),
            position_floor=np.float64(position_floor),
            z_offsets=z_offsets,
            z_values=z_values,
            z_starts=z_starts,
            scale_table=tables.SCALE_TABLE,
            y_values=y_values,
            y_starts=y_starts,
        )


@torch.no_grad()
def calibration_latents(model: Onic, images: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(y, h_s's input: ẑ times the inverse gain on z if any) for each calibration image at the
    ladder's ends and middle: what the scale path will see."""
    rungs = len(model.cfg.lambdas)
    out = []
    for a in images:
        x = torch.from_numpy(np.array(a[:512, :512])).permute(2, 0, 1)[None].float() / 255
        x = pad_to_stride(x)
        for t in (0.0, (rungs - 1) / 2, float(rungs - 1)):
            gain, _, _ = model.gains(torch.tensor([t]))
            z_gain, _ = model.z_gains(torch.tensor([t]))
            y = model.g_a(x) * gain
            z_hat = torch.round(model.h_a(y) * z_gain)
            z_inv = z_inv_gain(model, t)
            out.append((y, z_hat if z_inv is None else z_hat * z_inv))
    return out


def calibration_images(folder: str | Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """A fixed random choice of ``count`` images from a folder, decoded to RGB arrays."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    picks = np.random.default_rng(seed).choice(len(paths), size=min(count, len(paths)), replace=False)
    out = []
    for i in sorted(picks):
        out.append(np.asarray(reference(paths[i]).convert("RGB")))  # 16-bit PNGs scaled, not clipped
    return out


def architecture(model: Onic) -> str:
    """The manifest's one-line description of the model."""
    gains = "on y and z (Minnen 2018, Cui 2021)" if model.cfg.hyper_gains else "(Minnen 2018, Cui 2021)"
    # Only a slimmer synthesis says so: the N-wide models' manifests stay as they were.
    slim = f", synthesis widths {list(model.cfg.synthesis)} (export/slim.py)" if model.cfg.synthesis else ""
    if model.cfg.slices:
        return (f"channel-conditional hyperprior, slices {list(model.cfg.slices)} with latent residual "
                f"prediction (Minnen & Singh 2020), gain units {gains}{slim}")
    return f"mean-scale hyperprior with gain units {gains}{slim}"


# The files that decide which symbols a file holds; the graphs only move pixel values.
DECODABILITY_FILES = ("tables.npz", "scale_path.npz")


def superseded_ids(old: Path, files: dict[str, str], trained_steps: int) -> list[str]:
    """Model ids whose files this bundle decodes: ``old``'s own and those it already decoded.

    Only a re-export of the same weights qualifies: the same training step and
    byte-identical entropy tables and integer scale path, so every symbol
    decodes the same and only float rounding of μ and the pixels can differ.
    """
    m = json.loads((old / "manifest.json").read_text())
    same = all(m["files"].get(f) == files[f] for f in DECODABILITY_FILES) and m["trained_steps"] == trained_steps
    if not same:
        raise ValueError(f"{old} is not the same model (tables, scale path or training step differ)")
    return [m["model_id"], *m.get("also_decodes", [])]


def export_bundle(ckpt: str | Path, out: str | Path, name: str = "default",
                  calibration: list[np.ndarray] | None = None, position_floor: float = 0.0,
                  supersedes: str | Path | None = None,
                  scale_weight_bits: int = intscale.FAST_WEIGHT_BITS) -> dict:
    """Write a complete bundle folder; returns its manifest.

    ``calibration``: RGB uint8 images (training images, never the test set) that
    set the integer scale path's activation ranges; random noise if none.
    ``position_floor``: the ladder position quality 0 maps to; raise it when the
    lowest rungs are not yet trained to give smaller files than the ones above.
    ``supersedes``: an earlier bundle of the same weights whose files this one
    must keep decoding (see ``superseded_ids``).
    ``scale_weight_bits``: bits of the integer scale path's weights after its first layer:
    8 runs on onnxruntime's 8-bit convolutions, 7 on its uint8 × int8 matrix products (faster,
    codec/intconv.py), 12 (the format's limit) tracks the float σ more closely and runs in float64.
    """
    model, ck = load_model(ckpt)
    model.eval()
    if not calibration:
        rng = np.random.default_rng(0)
        calibration = [rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)]
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for graph, (module, args, inputs, outputs) in graphs(model).items():
            export_graph(module, args, inputs, outputs, tmp / f"{graph}.onnx")
            if graph in PHASE_CROP:
                phases.crop_file(tmp / f"{graph}.onnx")
        write_tables(model, tmp / "tables.npz", position_floor)
        np.savez(tmp / "scale_path.npz",
                 **intscale.quantize(model, calibration_latents(model, calibration), tables.SCALE_TABLE,
                                     scale_weight_bits))
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir())}
        # Encoder-only, outside the model id: it changes which latents an encoder picks, never a symbol.
        grad = tmp / f"{GRADIENT_GRAPH}.onnx"
        export_gradient(frozen(model.g_s), model.cfg.M, grad)
        encoder_files = {grad.name: hashlib.sha256(grad.read_bytes()).hexdigest()}
        model_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "name": name,
            "model_id": model_id,
            "architecture": architecture(model),
            "config": model.cfg.to_dict(),
            "stride": Onic.stride,
            "index_path_version": intscale.intscale.INDEX_PATH_VERSION,
            "trained_steps": int(ck["step"]),
            "files": files,
            "encoder_files": encoder_files,
        }
        # Outside the model id too: the decoder graph for a large image's tiles, the same pixels.
        halo.write_tile_graph(tmp, manifest)
        if supersedes:  # less this bundle's own id, where a re-export changed no file
            ids = superseded_ids(Path(supersedes), files, int(ck["step"]))
            manifest["also_decodes"] = [i for i in ids if i != model_id]
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for f in tmp.iterdir():
            shutil.copyfile(f, out / f.name)
    return manifest


SHIPPED = Path(__file__).resolve().parents[1] / "codec" / "models" / "default"


def check_out(out: Path, force: bool) -> None:
    """Refuse to replace an existing bundle without ``force``, and anything but a bundle ever.

    Replacing the shipped model changes its id: every file made with it then fails
    to decode (unless ``--supersedes`` shows the new bundle decodes them).
    """
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file()):
        raise SystemExit(f"export.bundle: {out} exists and is not a model bundle; refusing to replace it")
    if any(out.iterdir()) and not force:
        shipped = " the shipped model (files made with it will stop decoding)" if out.resolve() == SHIPPED else ""
        raise SystemExit(f"export.bundle: {out} holds{shipped or ' a bundle'}; pass --force to replace it")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Export a checkpoint as an onic model bundle.")
    p.add_argument("checkpoint")
    p.add_argument("out", help="bundle folder to write, e.g. runs/cpu/bundle (an existing bundle needs --force)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle, the shipped codec/models/default included")
    p.add_argument("--name", default="default")
    p.add_argument("--calibration", default="../shared/data/train",
                   help="folder of training images for the integer scale path's ranges (never Kodak)")
    p.add_argument("--calibration_images", type=int, default=32)
    p.add_argument("--position_floor", type=float, default=0.0,
                   help="ladder position of quality 0 (0 = the lowest rung)")
    p.add_argument("--supersedes", help="an earlier bundle of the same weights whose files must still decode "
                   "(may be OUT itself; read before OUT is rewritten)")
    p.add_argument("--scale_weight_bits", type=int, choices=(7, 8, 12), default=intscale.FAST_WEIGHT_BITS,
                   help="weights of the integer scale path after its first layer: 8 decodes faster than 12 "
                   "(onnxruntime's 8-bit convolutions), 7 faster again (uint8 x int8 matrix products) at "
                   "some cost in rate, 12 tracks the float σ most closely")
    a = p.parse_args(argv)
    check_out(Path(a.out), a.force)
    m = export_bundle(a.checkpoint, a.out, a.name, calibration_images(a.calibration, a.calibration_images),
                      a.position_floor, a.supersedes, a.scale_weight_bits)
    print(f"wrote {a.out}: model id {m['model_id']}, N={m['config']['N']} M={m['config']['M']}")


if __name__ == "__main__":
    main()
