"""Train the onic model. One loop: evaluate/checkpoint, step, log.

    python -m export.train --data ../shared/data/train --out runs/cpu --kodak ../shared/data/kodak
    python -m export.train --resume runs/cpu/ckpt.pt --max_minutes 30

Every field of TrainConfig (and N, M of ModelConfig) is a flag of the same name.
Defaults below are the small CPU configuration that trained the shipped bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.model import ModelConfig, Onic, rd_loss


@dataclass
class TrainConfig:
    # data
    data: str = "../shared/data/train"
    crop: int = 128  # 256 on a GPU; 128 keeps CPU steps near 0.25 s
    batch_size: int = 8
    max_images: int = 0  # 0 = every image in the folder
    # model (ModelConfig)
    N: int = 64
    M: int = 96
    # optimizer
    lr: float = 3e-4
    warmup_steps: int = 200
    clip_grad: float = 1.0
    max_steps: int = 1_000_000
    max_minutes: float = 60.0  # wall-clock budget; the run checkpoints and stops at it
    decay_at: float = 0.85  # fraction of the budget after which lr drops tenfold
    # io
    out: str = "runs/cpu"
    resume: str = ""  # a checkpoint to continue from (weights, ladder, step)
    kodak: str = ""  # folder for the periodic evaluation; empty = none
    eval_images: int = 4
    eval_every: int = 1000
    log_every: int = 50
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default


def load_images(folder: str, max_images: int, min_side: int) -> list[np.ndarray]:
    """Decode every image once; training crops come from these arrays."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if max_images:
        paths = paths[:max_images]
    images = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= min_side:
            images.append(a)
    if not images:
        raise SystemExit(f"no usable images (≥{min_side}px) in {folder}")
    return images


def random_batch(images: list[np.ndarray], batch: int, crop: int, rng: random.Random) -> torch.Tensor:
    out = np.empty((batch, crop, crop, 3), dtype=np.uint8)
    for i in range(batch):
        a = images[rng.randrange(len(images))]
        top = rng.randrange(a.shape[0] - crop + 1)
        left = rng.randrange(a.shape[1] - crop + 1)
        c = a[top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        out[i] = c
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


@torch.no_grad()
def evaluate(model: Onic, images: list[np.ndarray]) -> list[tuple[float, float, float]]:
    """(ladder position, bpp, PSNR) estimated from likelihoods with rounding, at three rungs."""
    model.eval()
    rungs = len(model.cfg.lambdas)
    rows = []
    for t in (0.0, (rungs - 1) / 2, float(rungs - 1)):
        bpps, psnrs = [], []
        for a in images:
            x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255
            h, w = x.shape[2:]
            ph, pw = -h % Onic.stride, -w % Onic.stride
            xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
            out = model(xp, torch.tensor([t]))
            bits = -(torch.log2(out["y_likelihood"]).sum() + torch.log2(out["z_likelihood"]).sum())
            x_hat = out["x_hat"][..., :h, :w].clamp(0, 1)
            mse = torch.mean((torch.round(x_hat * 255) - x * 255) ** 2).item()
            bpps.append(bits.item() / (h * w))
            psnrs.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        rows.append((t, float(np.mean(bpps)), float(np.mean(psnrs))))
    model.train()
    return rows


def save_checkpoint(path: Path, model: Onic, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": model.cfg.to_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "config": dataclasses.asdict(cfg),
        },
        tmp,
    )
    tmp.replace(path)


def save_weights(path: Path, model: Onic, step: int) -> None:
    """Weights only (what the repo keeps for later runs to resume from): no optimizer state."""
    torch.save({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "step": step}, path)


def load_model(path: str | Path) -> tuple[Onic, dict]:
    """Rebuild a model from a checkpoint (as written by save_checkpoint)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Onic(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    return model, ckpt


def train(cfg: TrainConfig) -> Path:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    step = 0
    if cfg.resume:
        model, ckpt = load_model(cfg.resume)
        step = int(ckpt["step"])
    else:
        model = Onic(ModelConfig(N=cfg.N, M=cfg.M))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.resume and "optimizer" in ckpt:
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except ValueError:
            print("optimizer state does not match; starting it fresh with a warm-up")
    rungs = len(model.cfg.lambdas)

    t0 = time.time()
    images = load_images(cfg.data, cfg.max_images, cfg.crop)
    kodak = []
    if cfg.kodak:
        kodak = load_images(cfg.kodak, cfg.eval_images, 1)
    print(f"{len(images)} training images loaded in {time.time() - t0:.1f}s; "
          f"model N={model.cfg.N} M={model.cfg.M}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")

    rng = random.Random(cfg.seed + step)
    start, last = time.time(), time.time()
    first_step = step
    model.train()
    while step < cfg.max_steps:
        if kodak and step % cfg.eval_every == 0 and step > first_step:
            for t, bpp, psnr in evaluate(model, kodak):
                print(f"eval step {step} rung {t:.1f}: {bpp:.3f} bpp {psnr:.2f} dB "
                      f"(Kodak, {len(kodak)} images, estimated)")
            save_checkpoint(ckpt_path, model, opt, step, cfg)

        lr = cfg.lr * min(1.0, (step - first_step + 1) / cfg.warmup_steps)
        if time.time() - start > cfg.decay_at * cfg.max_minutes * 60:
            lr *= 0.1  # a final low-rate phase settles the weights (CompressAI's schedulers do the same)
        for g in opt.param_groups:
            g["lr"] = lr
        x = random_batch(images, cfg.batch_size, cfg.crop, rng)
        t = torch.rand(cfg.batch_size) * (rungs - 1)  # λ sampled per example
        losses = rd_loss(model(x, t), x)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        step += 1

        if step % cfg.log_every == 0:
            dt = (time.time() - last) / cfg.log_every
            last = time.time()
            psnr = 10 * math.log10(1 / max(losses["mse"].item(), 1e-10))
            print(f"step {step}: loss {losses['loss'].item():.3f} bpp {losses['bpp'].item():.3f} "
                  f"psnr {psnr:.2f} dB lr {lr:.1e} {dt * 1000:.0f} ms/step {cfg.batch_size / dt:.1f} img/s", flush=True)
        if time.time() - start > cfg.max_minutes * 60:
            print(f"wall-clock budget of {cfg.max_minutes} min reached at step {step}")
            break

    save_checkpoint(ckpt_path, model, opt, step, cfg)
    print(f"saved {ckpt_path} at step {step}")
    return ckpt_path


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
