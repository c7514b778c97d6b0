"""Quantization-aware fine-tuning of the synthesis, for an int8 decoder graph.

    python -m export.qat export/checkpoints/default.pt runs/int8 --minutes 35 --threads 1
    python benchmarks/int8_synthesis.py ../shared/data/kodak --bundle runs/int8/bundle

Only g_s changes. The analysis, the hyperprior, the tables and the integer
path stay as they are, so every symbol (every file) is the base model's. g_s
is fine-tuned with fake int8 quantization where onnxruntime will run int8
(Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018):

- the third of its four sub-pixel convolutions (see export.bundle.SubPixelConv), by default
  (``--int8_convs``; 2,3 also quantizes the second), which holds 60% of its multiply-adds:
  - its input and output are quantized per tensor, uint8, over ranges calibrated on
    training ŷ whose step sizes then train with the weights (``--range_lr``; LSQ below);
  - its weights are quantized per output channel, symmetric, to 7 bits by default
    (``--weight_bits``): on x86 CPUs without VNNI onnxruntime multiplies uint8 by int8 with
    VPMADDUBSW, whose pairwise int16 sums saturate for 8-bit weights (2 · 255 · 127 > 2**15 − 1)
    and never for 7-bit ones (2 · 255 · 64 < 2**15), so the pixels would depend on the CPU;
- the first convolution stays float: its input is ŷ · inverse gain, whose step (the inverse
  gain) shrinks with quality, so one 8-bit grid over every rung's range is coarser than the
  top rungs' own quantization (statically quantized, it alone cost 0.30 of quality 100's
  0.49 dB: benchmarks/int8_synthesis.py --keep_fp32), for 6% of the multiply-adds; the second
  costs quality 100 another 0.05 dB for 15% of them (measured the same way);
- the last convolution (64 → 3 colour channels) and the GDNs stay float. An 8-bit grid over
  the output's range would be coarser than the image's own 8 bits.

Quantized outputs let onnxruntime fuse each DequantizeLinear → Conv →
QuantizeLinear into one QLinearConv. Without them it dequantizes and runs the
float Conv, which is slower than no quantization at all (timed once with a script
not kept: 97 ms against 88 ms for the fp32 graph, and 55 ms with the fusion);
tests/test_qat.py checks that the fusion happens.

The bundle written (OUT/bundle) is the base bundle with this decoder graph. Its
manifest lists the base's ids in also_decodes, since its symbols are the base's.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from codec.session import GRADIENT_GRAPH
from export import bundle as export_bundle
from export import halo
from export.bundle import OPSET, SubPixelConv, frozen, gdn_before_shuffle, pixel_shuffle
from export.model import FrozenGDN, Onic
from export.slim import AnalysisPool, distillation_loss, synthesis_input
from export.train import load_images, load_model, random_batch


class FakeQuant(nn.Module):
    """Per-tensor uint8 fake quantization over a range set by calibration, then fixed or, after
    ``learn()``, trained: the step size is a parameter with the straight-through gradient of
    Esser et al., "Learned Step Size Quantization" (ICLR 2020); the zero point stays."""

    def __init__(self):
        super().__init__()
        self.lo, self.hi = math.inf, -math.inf
        self.scale: float | None = None
        self.zero_point = 0
        self.log_scale: nn.Parameter | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:  # calibrating: the 0.01% and 99.99% quantiles of a sample of x
            sample = x.detach().flatten()[:: max(1, x.numel() // 2**20)].float()
            lo, hi = torch.quantile(sample, torch.tensor([1e-4, 1 - 1e-4])).tolist()
            self.lo, self.hi = min(self.lo, lo, 0.0), max(self.hi, hi, 0.0)
            return x
        if self.log_scale is not None and self.training:
            zero = torch.tensor([float(self.zero_point)], device=x.device)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.log_scale.exp().reshape(1), zero, 0, 255, 1.0)
        return torch.fake_quantize_per_tensor_affine(x, self.current_scale(), self.zero_point, 0, 255)

    def freeze(self) -> None:
        self.scale = max((self.hi - self.lo) / 255, 1e-8)
        self.zero_point = int(min(255, max(0, round(-self.lo / self.scale))))

    def learn(self) -> None:
        self.log_scale = nn.Parameter(torch.tensor(math.log(self.scale)))

    def current_scale(self) -> float:
        return float(self.log_scale.detach().exp()) if self.log_scale is not None else self.scale


class QuantSubPixel(nn.Module):
    """SubPixelConv with int8 fake quantization of its input, weights (``weight_bits`` of them) and output."""

    def __init__(self, sp: SubPixelConv, weight_bits: int = 7):
        super().__init__()
        self.conv = sp.conv
        self.q_in, self.q_out = FakeQuant(), FakeQuant()
        self.weight_max = 2 ** (weight_bits - 1) - 1  # within int8's range, so the export is plain int8

    def quantized_weight(self) -> torch.Tensor:
        """The weights as the int8 graph holds them: per output channel, symmetric, ``weight_bits``."""
        w = self.conv.weight
        scale = (w.detach().abs().amax(dim=(1, 2, 3)) / self.weight_max).clamp(min=1e-8)
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self.q_in(x), self.quantized_weight(), self.conv.bias, padding=1)
        # The shuffle's sizes come from x and the weights, not from y: onnxruntime gives every consumer
        # of a DequantizeLinear a copy of its own, and the exported Shape ops of y dequantized the whole
        # int8 output four times over just to read its shape.
        return pixel_shuffle(self.q_out(y), (x.shape[0], self.conv.out_channels, x.shape[2], x.shape[3]))

    def as_float(self) -> SubPixelConv:
        """This convolution with its quantized weights, in float and without the activation grids."""
        sp = SubPixelConv.__new__(SubPixelConv)
        nn.Module.__init__(sp)
        sp.conv = copy.deepcopy(self.conv)
        with torch.no_grad():
            sp.conv.weight.copy_(self.quantized_weight())
        return sp


INT8_CONVS = (3,)  # which sub-pixel convolutions (1 = the first) run in int8


class SquaringGDN(FrozenGDN):
    """FrozenGDN with x² as Pow(x, 2), the same values: x enters two operators instead of three, so
    after an int8 convolution onnxruntime dequantizes it twice instead of three times."""

    def __init__(self, gdn: FrozenGDN):
        nn.Module.__init__(self)
        self.inverse = gdn.inverse
        self.register_buffer("beta", gdn.beta)
        self.register_buffer("gamma", gdn.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(F.conv2d(x.pow(2), self.gamma, self.beta))
        return x * norm if self.inverse else x / norm


class QuantDecoder(nn.Module):
    """The decoder graph (ŷ · inverse gain → g_s) with the sub-pixel convolutions ``convs`` in int8."""

    def __init__(self, model: Onic, weight_bits: int = 7, convs: tuple[int, ...] = INT8_CONVS):
        super().__init__()
        if not 2 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be 2 to 8, got {weight_bits}")
        layers = list(frozen(model.g_s))
        subpixel = [i for i, m in enumerate(layers) if isinstance(m, SubPixelConv)]
        if not convs or not set(convs) <= set(range(2, len(subpixel))):
            raise ValueError(f"int8 convolutions must be among 2..{len(subpixel) - 1} (the first and the colour "
                             f"convolution stay float), got {convs}")
        self.weight_bits, self.convs = weight_bits, tuple(sorted(convs))
        for c in self.convs:
            i = subpixel[c - 1]
            layers[i] = QuantSubPixel(layers[i], weight_bits)
            if isinstance(layers[i + 1], FrozenGDN):
                layers[i + 1] = SquaringGDN(layers[i + 1])
        self.g_s = nn.Sequential(*layers)

    def forward(self, y_hat: torch.Tensor, inv_gain: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat * inv_gain)

    def quantizers(self) -> list[FakeQuant]:
        return [m for m in self.modules() if isinstance(m, FakeQuant)]

    def float_layers(self) -> nn.Sequential:
        """g_s with the trained weights (the int8 ones as quantized) and float activations: the
        function whose gradient refinement follows (the activation grids have none to follow)."""
        return nn.Sequential(*[m.as_float() if isinstance(m, QuantSubPixel) else copy.deepcopy(m) for m in self.g_s])


def load_state(decoder: QuantDecoder, path: str | Path) -> QuantDecoder:
    """Weights and quantizer ranges from a qat.pt (as train writes it)."""
    state = torch.load(path, weights_only=True)
    bits = state.get("weight_bits", 8)  # runs before the option trained 8-bit weights
    convs = tuple(state.get("convs", (1, 2, 3)))  # and the first three convolutions
    if (bits, convs) != (decoder.weight_bits, decoder.convs):
        raise SystemExit(f"{path} was trained with {bits}-bit weights on convolutions {convs}: resume it with "
                         f"--weight_bits {bits} --int8_convs {','.join(map(str, convs))}")
    decoder.load_state_dict(state["decoder"])
    for q, (scale, zero_point) in zip(decoder.quantizers(), state["quantizers"], strict=True):
        q.scale, q.zero_point = scale, zero_point
    return decoder


def train(ckpt: str, out: Path, data: str, minutes: float, lr: float, batch: int, crop: int, seed: int,
          calibration_batches: int = 16, max_steps: int | None = None, resume: str | None = None,
          weight_bits: int = 7, convs: tuple[int, ...] = INT8_CONVS, range_lr: float = 1e-3,
          decay: float = 0.0, pool: int = 0) -> QuantDecoder:
    """Calibrate the quantizers (or take them from ``resume``, an earlier qat.pt), then fine-tune g_s
    for ``minutes`` (or ``max_steps``); writes OUT/qat.pt.

    The loss is the mean over the batch of log MSE: each image counts by its PSNR, so the high
    rungs, whose errors are small, are not drowned by the low ones (plain MSE left quality 100
    0.21 dB below fp32 while quality 0 gained). With ``range_lr`` > 0 the activations' step
    sizes train too (in log space, at that learning rate). The last ``decay`` of the minutes run
    at a tenth of both learning rates, as export/slim.py's recipe does for its last 20%. With
    ``pool`` > 0 the crops come from export/slim.py's AnalysisPool of that many, so that one new
    crop a step pays for the base's analysis (most of a step for the full-size model's student).
    """
    random.seed(seed)
    torch.manual_seed(seed)
    model, _ = load_model(ckpt)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    decoder = QuantDecoder(model, weight_bits, convs)
    images = [torch.from_numpy(a.copy()) for a in load_images(data, 0, crop)]
    rng = random.Random(seed)
    rungs = len(model.cfg.lambdas)

    analyses = AnalysisPool(model, images, pool, crop, batch, 1.0, rng) if pool else None

    @torch.no_grad()
    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        """Crops and g_s's input for them (ŷ · inverse gain, as a file decodes) at random rungs."""
        if analyses:
            x, y = analyses.batch_of(batch)
        else:
            x = random_batch(images, batch, crop, rng)
            y = model.g_a(x)
        return x, synthesis_input(model, y, torch.rand(batch) * (rungs - 1))[0]

    earlier = 0  # steps of the run resumed, so that qat.pt and the bundle's note count them all
    if resume:
        load_state(decoder, resume)
        earlier = int(torch.load(resume, weights_only=True).get("steps", 0))
    else:
        with torch.no_grad():
            for _ in range(calibration_batches):
                decoder.g_s(sample()[1])
        for q in decoder.quantizers():
            q.freeze()
    if range_lr:
        for q in decoder.quantizers():
            q.learn()
    steps = [q.log_scale for q in decoder.quantizers() if q.log_scale is not None]
    params = [p for p in decoder.parameters() if p.requires_grad and all(p is not s for s in steps)]
    opt = torch.optim.Adam([{"params": params}, {"params": steps, "lr": range_lr}], lr=lr)
    print(f"{len(images)} images; {len(decoder.quantizers())} quantizers "
          f"{'from ' + resume if resume else f'calibrated on {calibration_batches} batches'}; "
          f"training {sum(p.numel() for p in params)} parameters for {minutes} min")
    start, step, losses, decayed = time.time(), 0, [], False
    while time.time() - start < minutes * 60 and (max_steps is None or step < max_steps):
        if decay and not decayed and time.time() - start >= (1 - decay) * minutes * 60:
            for group in opt.param_groups:
                group["lr"] /= 10
            decayed = True
            print(f"step {step}: learning rates / 10 for the last {decay:.0%} of the time", flush=True)
        x, inputs = sample()
        mse = ((decoder.g_s(inputs) - x) ** 2).mean(dim=(1, 2, 3))
        loss = distillation_loss("log", mse)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(-10 * loss.item() / math.log(10))
        if step % 100 == 0:
            print(f"step {step}: mean PSNR {np.mean(losses):.2f} dB {(time.time() - start) / step * 1000:.0f} ms/step",
                  flush=True)
            losses = []
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in decoder.state_dict().items() if not k.endswith("log_scale")}  # in "quantizers"
    decoder.steps = earlier + step
    torch.save({"decoder": weights, "steps": decoder.steps, "weight_bits": weight_bits, "convs": list(convs),
                "quantizers": [(q.current_scale(), q.zero_point) for q in decoder.quantizers()]}, out / "qat.pt")
    return decoder


def export_decoder(decoder: QuantDecoder, path: Path, channels: int) -> None:
    """The int8 decoder graph, with the fp32 export's pixel shuffles (transposes) and its float
    sub-pixel convolutions fused with their GDNs (export.bundle.SubPixelGDN): the same values.
    768×512, the graph alone, five alternations of a one-off script: 64 ms with DepthToSpace and separate GDNs,
    52 with the transposes, 47 with both, against 56 for 0.8.0's fp32 graph."""
    decoder = copy.deepcopy(decoder).eval()
    decoder.g_s = gdn_before_shuffle(decoder.g_s)
    args = (torch.randn(1, channels, 8, 12), torch.ones(1, channels, 1, 1))
    spatial = {2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(decoder, args, str(path), input_names=["y_hat", "inv_gain"], output_names=["x_hat"],
                          dynamic_axes={"y_hat": spatial, "x_hat": spatial}, opset_version=max(OPSET, 13),
                          dynamo=False, do_constant_folding=True)


def export_gradient(decoder: QuantDecoder, path: Path, channels: int) -> None:
    """synthesis_grad.onnx (export/refine.py) of the fine-tuned synthesis, so that refinement
    follows the weights the int8 graph runs, not the base's."""
    export_bundle.export_gradient(decoder.float_layers(), channels, path)


def write_bundle(base: Path, decoder_graph: Path, out: Path, note: str, gradient_graph: Path | None = None) -> dict:
    """The base bundle with another decoder graph (and, given one, the gradient graph that goes with
    it) and that graph's decoder_tiles.onnx (export/halo.py); it decodes every file of the base (same symbols)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    shutil.copyfile(decoder_graph, out / "decoder.onnx")
    manifest = json.loads((base / "manifest.json").read_text())
    files = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in sorted(manifest["files"])}
    decodes = [manifest["model_id"], *manifest.get("also_decodes", [])]
    manifest.update(files=files, model_id=hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
                    also_decodes=decodes, name=f"{manifest['name']}-int8", synthesis=note)
    if gradient_graph is not None and "encoder_files" in manifest:
        grad = f"{GRADIENT_GRAPH}.onnx"
        shutil.copyfile(gradient_graph, out / grad)
        manifest["encoder_files"][grad] = hashlib.sha256((out / grad).read_bytes()).hexdigest()
    halo.write_tile_graph(out, manifest)  # the base's tile graph is its decoder's: this decoder's own
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the weights of the base bundle (export/checkpoints/default.pt)")
    p.add_argument("out", help="folder for qat.pt, decoder.onnx and bundle/")
    p.add_argument("--base", default="codec/models/default", help="the bundle those weights were exported to")
    p.add_argument("--data", default="../shared/data/train")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", help="an earlier OUT/qat.pt to continue from (its quantizer ranges too)")
    p.add_argument("--weight_bits", type=int, default=7,
                   help="bits of the int8 weights: 7 never saturates onnxruntime's non-VNNI x86 kernels")
    p.add_argument("--range_lr", type=float, default=1e-3,
                   help="learning rate of the activations' log step sizes (LSQ); 0 keeps the calibrated ones")
    p.add_argument("--decay", type=float, default=0.0,
                   help="fraction of --minutes, at the end, run at a tenth of the learning rates")
    p.add_argument("--pool", type=int, default=0,
                   help="crops kept with the base's analysis, one new a step (export/slim.py's --pool; 0: fresh "
                   "crops every step); for the full-size model, whose analysis is most of a step")
    p.add_argument("--int8_convs", default=",".join(map(str, INT8_CONVS)),
                   help="the sub-pixel convolutions to run in int8, numbered from 1 (the first and last stay float)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    convs = tuple(int(c) for c in a.int8_convs.split(","))
    decoder = train(a.checkpoint, out, a.data, a.minutes, a.lr, a.batch_size, a.crop, a.seed, resume=a.resume,
                    weight_bits=a.weight_bits, convs=convs, range_lr=a.range_lr,
                    decay=a.decay, pool=a.pool)
    channels = decoder.g_s[0].conv.in_channels
    export_decoder(decoder, out / "decoder.onnx", channels)
    export_gradient(decoder, out / "synthesis_grad.onnx", channels)
    m = write_bundle(Path(a.base), out / "decoder.onnx", out / "bundle",
                     f"int8 (QAT, convolutions {a.int8_convs}, {a.weight_bits}-bit weights, {decoder.steps} steps "
                     f"from {Path(a.checkpoint).name})", out / "synthesis_grad.onnx")
    print(f"wrote {out / 'bundle'}: model id {m['model_id']}, decodes {', '.join(m['also_decodes'])}")


if __name__ == "__main__":
    main()
