"""Does a spatial checkerboard inside each slice pay on top of the channel context? Measured at fixed transforms.

    python benchmarks/checkerboard.py ../shared/data/kodak export/checkpoints/default.pt \\
        [--train ../shared/data/train] [--minutes 20] [--crops 3000] [--variants channel checkerboard]

ELIC (He et al., CVPR 2022) codes each channel group in two passes, after the
checkerboard context model (He et al., "Checkerboard Context Model for Efficient
Learned Image Compression", CVPR 2021): the anchors (i + j even) with the group's
channel-conditional parameters, then the other half with μ and σ shifted by a
5×5 convolution over the anchors' symbols. Symbols, not ŷ, so that σ's shift
could run in the integer path as the slices' σ networks do.

The measurement trains entropy models only, on latents cached from the
checkpoint's frozen transforms (g_a, h_a, h_s): every step costs a small
fraction of a full training step, so minutes of CPU buy many steps, and since
g_a and g_s are the same for both, equal distortion leaves the rate as the
whole difference. Two copies of the checkpoint's channel context train side by
side for the same minutes, one thread each, on the same batches, with the
rate of y as the loss (uniform noise for rounding, as in training; the latent
residual prediction stays frozen, since it serves distortion):
- ``channel``: the context as it is, continued (the control);
- ``checkerboard``: the same plus the anchors' 5×5 networks (zero output at the start,
  so it starts as the control).

Adam, learning rate 1e-4 for the checkpoint's networks and 1e-3 for new ones.

``--variants slices:16,16,32,32 slices:8,8,16,32,32 …`` instead trains fresh
contexts of the given channel groups (every slice network new, latent residual
prediction left out) for the same minutes: the choice of group sizes.

The table: Kodak's y bits per pixel of each variant with real rounding, at
qualities 0-100, the saving against the first, and the mean squared error of ŷ
against y as a check that distortion did not move. z is the same for all and
left out.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from export.model import SCALE_MIN, ChannelContext, gaussian_likelihood, quality_to_position, scale_lower_bound
from export.train import load_model

QUALITIES = (0, 25, 50, 75, 100)


def anchors(h: int, w: int) -> torch.Tensor:
    """1 at the anchors (i + j even), 0 elsewhere: (1, 1, h, w)."""
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((i + j) % 2 == 0).float()[None, None]


class CheckerboardContext(ChannelContext):
    """ChannelContext plus, per slice, Δμ and Δσ of the non-anchors from the anchors' symbols."""

    def __init__(self, M: int, slices: tuple[int, ...], hidden: int = 32):
        super().__init__(M, slices)
        self.spatial = nn.ModuleList(
            nn.Sequential(nn.Conv2d(b - a, hidden, 5, padding=2), nn.LeakyReLU(), nn.Conv2d(hidden, 2 * (b - a), 1))
            for a, b in self.bounds)
        for net in self.spatial:
            nn.init.zeros_(net[2].weight)
            nn.init.zeros_(net[2].bias)

    def within_slice(self, k: int, y_k: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor):
        mask = anchors(*y_k.shape[2:]).to(y_k)
        r = y_k - mu
        s = r + (torch.round(r) - r).detach()  # the anchors' symbols, final: their μ does not move
        d_mu, d_sigma = self.spatial[k](s * mask).chunk(2, dim=1)
        return mu + d_mu * (1 - mask), sigma + d_sigma * (1 - mask)


@torch.no_grad()
def latents(model, rgb: np.ndarray, position: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y · gain, μ_h, raw σ_h) of an RGB image at a ladder position, from the frozen transforms."""
    x = torch.tensor(rgb).permute(2, 0, 1).float()[None] / 255
    t = torch.tensor([position])
    gain, _, _ = model.gains(t)
    z_gain, z_inv = model.z_gains(t)
    y = model.g_a(x) * gain
    z_hat = torch.round(model.h_a(y) * z_gain)
    mu_h, sigma_h = model.h_s(z_hat * z_inv).chunk(2, dim=1)
    return y[0], mu_h[0], sigma_h[0]


def training_latents(model, folder: str, crops: int, crop: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Latents of random crops of the training photos at random ladder positions."""
    rng = np.random.default_rng(seed)
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    rungs = len(model.cfg.lambdas)
    out = []
    for _ in range(crops):
        with Image.open(paths[rng.integers(len(paths))]) as im:
            rgb = np.asarray(im.convert("RGB"))
        if min(rgb.shape[:2]) < crop:
            continue
        r, c = rng.integers(rgb.shape[0] - crop + 1), rng.integers(rgb.shape[1] - crop + 1)
        out.append(latents(model, rgb[r : r + crop, c : c + crop], float(rng.uniform(0, rungs - 1))))
    return {name: torch.stack(v) for name, v in zip(("y", "mu_h", "sigma_h"), zip(*out, strict=True), strict=True)}


def y_bits(context: ChannelContext, y, mu_h, sigma_h, noise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(bits of y, ŷ): uniform noise in the likelihood for training, the rounded symbols for evaluation."""
    y_hat, mu, sigma = context(y, mu_h, sigma_h)
    sigma = scale_lower_bound(sigma, SCALE_MIN)
    value = y + torch.empty_like(y).uniform_(-0.5, 0.5) if noise else mu + torch.round(y - mu)
    return -torch.log2(gaussian_likelihood(value, mu, sigma).clamp_min(1e-9)).sum(), y_hat


def make_context(variant: str, model) -> ChannelContext:
    """``channel`` and ``checkerboard`` start from the checkpoint's context (the checkerboard's
    new networks at their zero init); ``slices:16,16,32,32`` is a fresh context of those groups,
    which starts as the plain hyperprior (every slice network's output is zero at first)."""
    cfg = model.cfg
    if variant.startswith("slices:"):
        slices = tuple(int(n) for n in variant.split(":", 1)[1].split(","))
        if sum(slices) != cfg.M:
            raise SystemExit(f"{variant}: the groups must add up to M = {cfg.M}")
        return ChannelContext(cfg.M, slices)
    if variant not in ("channel", "checkerboard"):
        raise SystemExit(f"unknown variant {variant!r}: channel, checkerboard or slices:A,B,...")
    context = (CheckerboardContext if variant == "checkerboard" else ChannelContext)(cfg.M, cfg.slices)
    context.load_state_dict(model.context.state_dict(), strict=False)  # the new networks keep their zero init
    return context


def train(variant: str, ckpt: str, cache: str, minutes: float, out: str, batch: int, seed: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, _ = load_model(ckpt)
    context = make_context(variant, model)
    for p in context.lrp.parameters():
        p.requires_grad_(False)
    data = torch.load(cache, weights_only=True)
    fresh = variant.startswith("slices:")  # every network new: the higher learning rate for all of them
    new = [p for n, p in context.named_parameters() if p.requires_grad and (fresh or n.startswith("spatial"))]
    old = [p for p in context.parameters() if p.requires_grad and all(p is not q for q in new)]
    groups = ([{"params": old, "lr": 1e-4}] if old else []) + ([{"params": new, "lr": 1e-3}] if new else [])
    opt = torch.optim.Adam(groups)
    rng = np.random.default_rng(seed)  # the same batches for every variant
    count = data["y"].shape[0]
    steps, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 60 * minutes:
        pick = torch.from_numpy(rng.choice(count, size=batch, replace=False))
        bits, _ = y_bits(context, data["y"][pick], data["mu_h"][pick], data["sigma_h"][pick], noise=True)
        loss = bits / (batch * 256 * 256)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    torch.save({"context": context.state_dict(), "steps": steps}, out)


@torch.no_grad()
def test_latents(model, images: list[np.ndarray]) -> dict[int, list[tuple[torch.Tensor, ...]]]:
    rungs = len(model.cfg.lambdas)
    return {q: [latents(model, rgb, quality_to_position(q, rungs)) for rgb in images] for q in QUALITIES}


@torch.no_grad()
def evaluate(variant: str, model, state: dict, test: dict, pixels: int) -> dict[int, tuple[float, float]]:
    """Quality → (y bits per pixel, mean squared error of ŷ against y) over the test latents."""
    context = make_context(variant, model)
    context.load_state_dict(state["context"])
    context.eval()
    out = {}
    for q, items in test.items():
        bits, err, elements = 0.0, 0.0, 0
        for y, mu_h, sigma_h in items:
            b, y_hat = y_bits(context, y[None], mu_h[None], sigma_h[None], noise=False)
            bits += float(b)
            err += float(F.mse_loss(y_hat[0], y, reduction="sum"))
            elements += y.numel()
        out[q] = (bits / pixels, err / elements)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="test images (Kodak)")
    p.add_argument("checkpoint", help="a channel-conditional checkpoint (slices)")
    p.add_argument("--train", default="../shared/data/train")
    p.add_argument("--variants", nargs="+", default=["channel", "checkerboard"],
                   help="the first is the reference: channel, checkerboard, slices:A,B,... (fresh groups)")
    p.add_argument("--minutes", type=float, default=20.0, help="training minutes of each variant (side by side)")
    p.add_argument("--crops", type=int, default=3000, help="256² training crops whose latents are cached")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    model, _ = load_model(a.checkpoint)
    model.eval()
    if not model.cfg.slices:
        raise SystemExit(f"{a.checkpoint} has no slices: train one with --slices first")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        cache = str(Path(tmp) / "latents.pt")
        torch.save(training_latents(model, a.train, a.crops, seed=a.seed), cache)
        print(f"cached the latents of {a.crops} crops in {time.monotonic() - t0:.0f} s; "
              f"training {len(a.variants)} variants for {a.minutes:g} minutes, side by side")
        ctx = mp.get_context("spawn")
        files = [str(Path(tmp) / f"{i}.pt") for i in range(len(a.variants))]
        procs = [ctx.Process(target=train, args=(v, a.checkpoint, cache, a.minutes, f, a.batch, a.seed))
                 for v, f in zip(a.variants, files, strict=True)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
            if proc.exitcode:
                raise SystemExit(f"a training process failed (exit code {proc.exitcode})")
        states = [torch.load(f, weights_only=True) for f in files]
    images = []
    for f in sorted(Path(a.folder).glob("*.png")):
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB")))
    test = test_latents(model, images)
    pixels = sum(rgb.shape[0] * rgb.shape[1] for rgb in images)
    results = [evaluate(v, model, st, test, pixels) for v, st in zip(a.variants, states, strict=True)]
    base = evaluate("channel", model, {"context": model.context.state_dict()}, test, pixels)
    print(f"\n{len(images)} images, y bits per pixel; steps: "
          + ", ".join(f"{v} {st['steps']}" for v, st in zip(a.variants, states, strict=True)))
    print(f"{'quality':>7} {'checkpoint':>11} " + " ".join(f"{v:>16}" for v in a.variants)
          + "   MSE(ŷ) of each")
    savings = {v: [] for v in a.variants[1:]}
    for q in QUALITIES:
        ref = results[0][q][0]
        cells = [f"{results[0][q][0]:>16.4f}"]
        for v, r in zip(a.variants[1:], results[1:], strict=True):
            savings[v].append(100 * (1 - r[q][0] / ref))
            cells.append(f"{r[q][0]:>8.4f} ({savings[v][-1]:+5.2f}%)")
        print(f"{q:>7} {base[q][0]:>11.4f} " + " ".join(cells) + "   "
              + " / ".join(f"{r[q][1]:.4f}" for r in results))
    for v, s in savings.items():
        print(f"mean saving of y bits, {v} against {a.variants[0]} at equal minutes: {np.mean(s):.2f}%")


if __name__ == "__main__":
    main()
