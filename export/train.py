"""Train the onic model. One loop: evaluate/checkpoint, step, log.

    python -m export.train --data ../shared/data/train --out runs/cpu --kodak ../shared/data/kodak
    python -m export.train --resume export/checkpoints/default.pt --max_minutes 30
    python -m export.train --device cuda --crop 256 --batch_size 64 --lr 4e-4 --bf16 1 --compile 1 ...

Every field of TrainConfig is a flag of the same name (booleans as 0/1).
Defaults are the small CPU configuration that trained the shipped bundle.
Training images are decoded once and kept (as uint8) on the training device;
crops and flips happen there too, so a GPU never waits for the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import json
import math
import os
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from codec.api import reference
from export.model import DEFAULT_LAMBDAS, ModelConfig, Onic, rd_loss


@dataclass
class TrainConfig:
    # data
    data: str = "../shared/data/train"  # folder of training photos (subfolders too); never the test set
    crop: int = 128  # 256 on a GPU; 128 keeps CPU steps near 0.2 s
    batch_size: int = 8  # crops per step
    max_images: int = 0  # 0 = every image in the folder
    # model (ModelConfig)
    N: int = 64  # channels of the transforms and of z
    M: int = 96  # channels of the latent y
    lambdas: str = ""  # comma-separated λ ladder for a new model; empty = model.DEFAULT_LAMBDAS
    hyper_gains: bool = False  # gain units on z too; also adds them (as identity) to a resumed model without
    slices: str = ""  # channel slices of y, e.g. "16,16,32,32": the channel-conditional entropy model;
    # also adds it (its networks start at zero, so as identity) to a resumed hyperprior model
    context_only: bool = False  # train only the slice networks; the transforms, gains and priors stay fixed
    # optimizer
    lr: float = 3e-4  # Adam learning rate after warm-up
    warmup_steps: int = 200  # linear warm-up of the learning rate
    gain_lr_mult: float = 1.0  # learning-rate factor for the gain tables (one scalar per rung and channel)
    clip_grad: float = 1.0  # gradient norm clip
    balance_rungs: bool = False  # weight each example by 1 / its rung's running mean loss (RungBalance)
    max_steps: int = 1_000_000  # stop after this step (the budget usually ends a run first)
    max_minutes: float = 60.0  # wall-clock budget; the run checkpoints and stops at it
    decay_at: float = 0.85  # fraction of the budget after which lr drops tenfold
    decay_step: int = 0  # or: the step from which it drops (0 = by decay_at); comparisons at equal steps use it
    # speed (GPU): bf16 autocast for the transforms (likelihoods stay fp32), channels-last, torch.compile
    device: str = "auto"  # auto = cuda when available
    bf16: bool = False  # bf16 autocast for the transforms
    fp32_hyper: bool = False  # with bf16: keep h_a, h_s and the gains (the rate side) in fp32
    channels_last: bool = False  # channels-last memory format
    compile: bool = False  # torch.compile the model
    # io
    out: str = "runs/cpu"  # folder for ckpt.pt, weights.pt, log and eval.jsonl
    resume: str = ""  # a checkpoint to continue from (weights, ladder, step)
    kodak: str = ""  # folder for the periodic evaluation; empty = none
    eval_images: int = 4  # Kodak images per periodic evaluation (judge checkpoints on all 24 later)
    eval_every: int = 1000  # steps between evaluations and checkpoints
    snapshots: bool = False  # also keep fp16 weights of every evaluated step (weights_STEP.pt), to pick the best later
    log_every: int = 50  # steps between log lines
    seed: int = 0  # seed of crops, λ draws and initial weights
    threads: int = 0  # torch threads; 0 = torch's default


def load_images(folder: str, max_images: int, min_side: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Decode every image under ``folder`` (subfolders too) once; training crops come from these arrays.

    With several ranks, each decodes and keeps only its shard (every ``world``-th image).
    """
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if max_images:
        paths = paths[:max_images]
    paths = paths[rank::world]
    images = []
    for p in paths:
        a = np.asarray(reference(p).convert("RGB"))  # 16-bit PNGs scaled; Pillow's RGB conversion clips them
        if min(a.shape[:2]) >= min_side:
            images.append(a)
    if not images:
        raise SystemExit(f"no usable images (≥{min_side}px) in {folder}")
    return images


def random_batch(images: list[torch.Tensor], batch: int, crop: int, rng: random.Random) -> torch.Tensor:
    """(batch, 3, crop, crop) floats in [0, 1] from random crops and flips of uint8 HWC tensors."""
    crops = []
    for _ in range(batch):
        a = images[rng.randrange(len(images))]
        top = rng.randrange(a.shape[0] - crop + 1)
        left = rng.randrange(a.shape[1] - crop + 1)
        c = a[top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            c = c.flip(1)
        if rng.random() < 0.5:
            c = c.flip(0)
        crops.append(c)
    return torch.stack(crops).permute(0, 3, 1, 2).float().div_(255)


class RungBalance:
    """Per-example loss weights that give every rung of the ladder an equal share of the gradient.

    One batch mixes λ over the whole ladder (0.0009–0.32 for the full-size model), and
    a top rung's loss (bpp + λ·255²·MSE) is about ten times a bottom rung's, so the
    shared weights serve the top rungs (DRAWS.md: the low rungs drift upward in rate
    as training goes on). Each example's loss is divided by a running mean of its
    nearest rung's loss and multiplied by the mean over rungs, so the total keeps its
    scale (the gradient clip stays meaningful) while each rung's relative improvement
    counts the same. The same idea as loss normalisation in multi-task learning
    (Chen et al., "GradNorm", ICML 2018, balances gradient norms; this balances losses).
    """

    def __init__(self, rungs: int, decay: float = 0.99):
        self.mean = torch.full((rungs,), float("nan"))
        self.decay = decay

    def weights(self, t: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Update the running means with this batch (positions t, per-example losses) and weigh it."""
        rung = t.detach().round().long().cpu()
        value = loss.detach().float().cpu()
        finite = torch.isfinite(value)  # a bf16 overflow skips its step; it must not poison the means for good
        for r in rung[finite].unique().tolist():
            seen = value[finite & (rung == r)].mean()
            old = self.mean[r]
            self.mean[r] = seen if torch.isnan(old) else self.decay * old + (1 - self.decay) * seen
        known = self.mean[~torch.isnan(self.mean)]
        return (known.mean() / self.mean[rung]).to(loss.device)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), which bf16 autocast needs to
    beat fp32; elsewhere oneDNN emulates it, slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) on the right and bottom to multiples of the model's stride."""
    h, w = x.shape[2:]
    return torch.nn.functional.pad(x, (0, -w % Onic.stride, 0, -h % Onic.stride), mode="replicate")


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    mse = torch.mean((torch.round(x_hat.clamp(0, 1) * 255) - x * 255) ** 2).item()
    return 10 * math.log10(255**2 / max(mse, 1e-10))


@torch.no_grad()
def evaluate(model: Onic, images: list[np.ndarray], positions: list[float] | None = None) -> list[dict]:
    """Per ladder position (default: ends and middle): bpp from likelihoods and from the real
    range coder, and PSNR.

    The real bpp codes ẑ and y − μ with codec.entropy against tables frozen from
    the current weights, as an export would (indexes from the float σ here).
    """
    from codec import entropy, intscale
    from export import tables

    model.eval()
    device = next(model.parameters()).device
    offsets, z_pmfs = tables.z_tables(model)
    z_tables = entropy.TableSet(*tables.pack_tables(z_pmfs), offsets)
    y_values, y_starts = tables.pack_tables(tables.gaussian_tables())
    y_tables = entropy.TableSet(y_values, y_starts, -(np.diff(y_starts) - 1) // 2)
    rungs = len(model.cfg.lambdas)
    rows = []
    for t in positions or (0.0, (rungs - 1) / 2, float(rungs - 1)):
        est, real, psnr = [], [], []
        for a in images:
            x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float().to(device) / 255
            h, w = x.shape[2:]
            out = model(pad_to_stride(x), torch.tensor([t], device=device))
            bits = -(torch.log2(out["y_likelihood"]).sum() + torch.log2(out["z_likelihood"]).sum())
            est.append(bits.item() / (h * w))
            psnr.append(_psnr(out["x_hat"][..., :h, :w], x))
            gain, _, _ = model.gains(torch.tensor([t], device=device))
            z_gain, z_inv_gain = model.z_gains(torch.tensor([t], device=device))
            y = model.g_a(pad_to_stride(x)) * gain
            z_sym = torch.round(model.h_a(y) * z_gain)
            _, mu, sigma = model.entropy_parameters(y, z_sym * z_inv_gain)
            idx = intscale.float_indexes(sigma[0].float().cpu().numpy(), tables.SCALE_TABLE)
            z_np = z_sym[0].cpu().numpy().astype(np.int64)
            z_ids = np.broadcast_to(np.arange(z_np.shape[0])[:, None, None], z_np.shape)
            n_bytes = len(entropy.encode(z_np, z_ids, z_tables)) + len(
                entropy.encode(torch.round(y - mu)[0].cpu().numpy().astype(np.int64), idx, y_tables))
            real.append(8 * (n_bytes + 36) / (h * w))
        rows.append({"rung": t, "bpp_estimated": float(np.mean(est)), "bpp_real": float(np.mean(real)),
                     "psnr": float(np.mean(psnr))})
    model.train()
    return rows


def log_evaluation(model: Onic, kodak: list[np.ndarray], step: int, minutes: float, path: Path) -> None:
    """Print the evaluation and append it to eval.jsonl."""
    for row in evaluate(model, kodak):
        print(f"eval step {step} rung {row['rung']:.1f}: {row['bpp_real']:.3f} bpp real "
              f"({row['bpp_estimated']:.3f} estimated) {row['psnr']:.2f} dB (Kodak, {len(kodak)} images)")
        with path.open("a") as f:
            f.write(json.dumps({"step": step, "minutes": minutes, **row}) + "\n")


def save_checkpoint(path: Path, model: Onic, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    extra: dict | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": model.cfg.to_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "config": dataclasses.asdict(cfg),
            **(extra or {}),
        },
        tmp,
    )
    tmp.replace(path)


def save_weights(path: Path, model: Onic, step: int, half: bool = False, cfg: TrainConfig | None = None,
                 extra: dict | None = None) -> None:
    """Weights only (what the repo keeps for later runs to resume from): no optimizer state.

    ``half`` stores floats as fp16 so that the full-size model stays under 16 MiB a file
    (the device tool's limit on what comes back); load_model widens them again.
    ``extra``: more top-level fields (export/slim.py's own step count, a teacher's run settings).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tmp = Path(path).with_suffix(".tmp")
    settings = {"config": {k: getattr(cfg, k) for k in RESUMED}} if cfg else {}
    torch.save({"model": state, "model_config": model.cfg.to_dict(), "step": step, **settings, **(extra or {})}, tmp)
    tmp.replace(path)


def add_hyper_gains(model: Onic) -> Onic:
    """The same model with gain units on z, set to identity: it computes exactly what it did."""
    new = Onic(dataclasses.replace(model.cfg, hyper_gains=True))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert sorted(missing) == ["log_z_gain", "log_z_inv_gain"] and not unexpected, (missing, unexpected)
    return new


def add_slices(model: Onic, slices: tuple[int, ...]) -> Onic:
    """The same model with the channel-conditional entropy model, whose networks start at zero:
    it computes exactly what it did, and training can only add to it."""
    new = Onic(dataclasses.replace(model.cfg, slices=slices))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert all(k.startswith("context.") for k in missing) and not unexpected, (missing, unexpected)
    return new


def load_model(path: str | Path) -> tuple[Onic, dict]:
    """Rebuild a model from a checkpoint (as written by save_checkpoint or save_weights)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Onic(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    return model, ckpt


def restore_run_settings(cfg: TrainConfig, ckpt: dict, log=print) -> None:
    """A resumed run keeps the crop, batch and loss weighting of the run it continues, unless given again."""
    saved = ckpt.get("config", {})
    given = getattr(cfg, "given", frozenset(RESUMED))  # called from Python: cfg is as meant
    for key in RESUMED:
        if key in given:
            continue
        if key in saved:
            setattr(cfg, key, type(getattr(cfg, key))(saved[key]))
            log(f"resume: {key} {getattr(cfg, key)} from the checkpoint")
        else:
            log(f"resume: the checkpoint does not record its {key}; using {getattr(cfg, key)}")


def start_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) this joins the process group:
    NCCL with one GPU per rank (LOCAL_RANK), gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if world == 1:
        return 0, 1, torch.device("cuda" if cfg.device == "auto" and cuda else "cpu" if cfg.device == "auto"
                                  else cfg.device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu")


def _agree(flags: list[bool], device: torch.device, world: int) -> list[bool]:
    """Each flag true on any rank is true on all: ranks must take the same branch (stop, decay)."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def replica_difference(model: torch.nn.Module, world: int) -> float:
    """Largest difference between any rank's weights and rank 0's (0.0 when DDP kept them in step)."""
    if world == 1:
        return 0.0
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


def train(cfg: TrainConfig) -> Path:
    rank, world, device = start_distributed(cfg)
    main_rank = rank == 0  # rank 0 alone writes checkpoints, logs and evaluations
    log = print if main_rank else (lambda *a, **k: None)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"

    step, ckpt = 0, {}
    slices = tuple(int(v) for v in cfg.slices.split(",")) if cfg.slices else ()
    if cfg.resume:
        model, ckpt = load_model(cfg.resume)
        step = int(ckpt["step"])
        restore_run_settings(cfg, ckpt, log)
        if cfg.hyper_gains and not model.cfg.hyper_gains:
            model = add_hyper_gains(model)
            ckpt.pop("optimizer", None)
        if slices and not model.cfg.slices:
            model = add_slices(model, slices)
            ckpt.pop("optimizer", None)
    else:
        lambdas = tuple(float(v) for v in cfg.lambdas.split(",")) if cfg.lambdas else DEFAULT_LAMBDAS
        model = Onic(ModelConfig(N=cfg.N, M=cfg.M, lambdas=lambdas, hyper_gains=cfg.hyper_gains, slices=slices))
    model.to(device)
    model.fp32_hyper = cfg.fp32_hyper
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.context_only:
        if not model.cfg.slices:
            raise SystemExit("--context_only needs a model with --slices")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("context."))
    gain_names = {"log_gain", "log_inv_gain", "log_z_gain", "log_z_inv_gain"}
    groups = [
        {"params": [p for n, p in model.named_parameters() if n not in gain_names and p.requires_grad], "mult": 1.0},
        {"params": [p for n, p in model.named_parameters() if n in gain_names and p.requires_grad],
         "mult": cfg.gain_lr_mult},
    ]
    opt = torch.optim.Adam(groups, lr=cfg.lr, fused=device.type == "cuda")
    if "optimizer" in ckpt:
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except ValueError:
            log("optimizer state does not match; starting it fresh with a warm-up")
    forward = model
    if world > 1:
        # DDP averages the gradients over ranks in backward: every rank steps the same weights.
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index
                                                            is not None else None)
    forward = torch.compile(forward) if cfg.compile else forward
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    if cfg.bf16 and device.type == "cpu" and not native_bf16_cpu():
        log("note: this CPU has no AVX512-BF16 or AMX, so bf16 is emulated and slower than fp32 "
            "(2 such cores: 2.4 s against 1.1 s a full-size step at 256², batch 4)")
    rungs = len(model.cfg.lambdas)
    balance = RungBalance(rungs) if cfg.balance_rungs else None
    if balance is not None and len(ckpt.get("rung_means", ())) == rungs:
        # A resumed run weighs its first steps as the last run ended, not by one batch's losses.
        balance.mean = torch.tensor(ckpt["rung_means"], dtype=torch.float32)
        log("rung means from the checkpoint: " + " ".join(f"{v:.3f}" for v in ckpt["rung_means"]))

    def kept() -> dict:  # what a checkpoint keeps of the run beyond weights and optimizer
        return {"rung_means": balance.mean.tolist()} if balance is not None else {}

    t0 = time.time()
    images = [torch.from_numpy(a.copy()).to(device)
              for a in load_images(cfg.data, cfg.max_images, cfg.crop, rank, world)]
    if not images:
        raise SystemExit(f"rank {rank}: no training images in its shard of {cfg.data}")
    kodak = load_images(cfg.kodak, cfg.eval_images, 1) if cfg.kodak and main_rank else []
    if world > 1:
        log(f"{world} ranks ({dist.get_backend()}): each has its shard of the images and its own crops; "
            f"batch {cfg.batch_size} per rank, {cfg.batch_size * world} per step")
    log(f"{len(images)} training images on {device} in {time.time() - t0:.1f}s; model N={model.cfg.N} "
          f"M={model.cfg.M} slices {list(model.cfg.slices) or 'none'}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; "
          f"crop {cfg.crop} batch {cfg.batch_size} bf16 {cfg.bf16} compile {cfg.compile}")

    rng = random.Random(cfg.seed + step + 1_000_003 * rank)  # crops: per rank, and new after a resume
    torch.manual_seed(cfg.seed + step + 1_000_003 * rank + 1)  # λ draws likewise
    start = last = time.time()
    first_step = step
    skipped = 0
    eval_log = out / "eval.jsonl"
    model.train()
    while step < cfg.max_steps:
        if cfg.kodak and main_rank and step % cfg.eval_every == 0 and step > first_step:
            log_evaluation(model, kodak, step, (time.time() - start) / 60, eval_log)
            save_checkpoint(ckpt_path, model, opt, step, cfg, kept())
            save_weights(out / "weights.pt", model, step, half=True, cfg=cfg, extra=kept())
            if cfg.snapshots:
                save_weights(out / f"weights_{step}.pt", model, step, half=True, cfg=cfg, extra=kept())

        lr = cfg.lr * min(1.0, (step - first_step + 1) / cfg.warmup_steps)
        elapsed = time.time() - start
        late, over = _agree([elapsed > cfg.decay_at * cfg.max_minutes * 60, elapsed > cfg.max_minutes * 60],
                            device, world)
        if step >= cfg.decay_step if cfg.decay_step else late:
            lr *= 0.1  # a final low-rate phase settles the weights (CompressAI's schedulers do the same)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        x = random_batch(images, cfg.batch_size, cfg.crop, rng)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.rand(cfg.batch_size, device=device) * (rungs - 1)  # λ sampled per example
        with autocast:
            result = forward(x, t)
        losses = rd_loss(result, x)
        loss = losses["loss"]
        if balance is not None:
            loss = (balance.weights(t, losses["per_example"]) * losses["per_example"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        if not torch.isfinite(norm):
            # One bad batch (a bf16 overflow, say) must not poison Adam's state and lose the run.
            skipped += 1  # the same on every rank: DDP made the gradients equal
            log(f"step {step}: non-finite gradient, update skipped ({skipped} so far)")
            if skipped > 100:
                raise SystemExit("more than 100 non-finite gradients: stopping with the last checkpoint")
            continue
        opt.step()
        step += 1

        if step % cfg.log_every == 0:
            dt = (time.time() - last) / cfg.log_every
            last = time.time()
            psnr = 10 * math.log10(1 / max(losses["mse"].item(), 1e-10))
            log(f"step {step}: loss {losses['loss'].item():.3f} bpp {losses['bpp'].item():.3f} "
                f"psnr {psnr:.2f} dB lr {lr:.1e} {dt * 1000:.0f} ms/step {world * cfg.batch_size / dt:.1f} img/s",
                flush=True)
        if over:
            log(f"wall-clock budget of {cfg.max_minutes} min reached at step {step}")
            break

    if world > 1:
        difference = replica_difference(model, world)
        log(f"replicas: largest weight difference from rank 0 across {world} ranks {difference:g}")
    if main_rank:
        if kodak and step % cfg.eval_every:  # the final state too, so that a run's last numbers are logged
            log_evaluation(model, kodak, step, (time.time() - start) / 60, eval_log)
        save_checkpoint(ckpt_path, model, opt, step, cfg, kept())
        save_weights(out / "weights.pt", model, step, half=True, cfg=cfg, extra=kept())
    minutes = (time.time() - start) / 60
    log(f"saved {ckpt_path} at step {step}: {step - first_step} steps in {minutes:.1f} min, "
        f"{(step - first_step) * world * cfg.batch_size / max(minutes * 60, 1e-9):.0f} img/s overall")
    if world > 1:
        # The DDP wrapper goes before its process group: left to the interpreter's exit, its
        # teardown now and then aborted a rank with "terminate called without an active exception"
        # (torch 2.13, gloo; `pytest tests/test_ddp.py -k two_ranks` in a loop: 2 of 29 runs
        # failed so, 0 of 20 with this).
        del forward
        gc.collect()
        dist.barrier()  # the others wait until rank 0 has written
        dist.destroy_process_group()
    return ckpt_path


def field_help(config: type) -> dict[str, str]:
    """Each field's comment in a config dataclass's source: the one place its meaning is written."""
    helps: dict[str, str] = {}
    last = None
    for line in inspect.getsource(config).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", line)
        if m:
            last = m.group(1)
            helps[last] = m.group(2) or ""
        elif last and re.match(r"\s+#\s*(.*)$", line) and helps[last]:
            helps[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return helps


RESUMED = ("crop", "batch_size", "balance_rungs")  # run settings a resumed run keeps unless given again


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m export.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = (lambda v: bool(int(v))) if isinstance(f.default, bool) else type(f.default)
        metavar = "0|1" if isinstance(f.default, bool) else f.name.upper()
        parser.add_argument(f"--{f.name}", type=kind, default=None, metavar=metavar,
                            help=f"{helps.get(f.name, '')} (default: {f.default!r})")
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    cfg = TrainConfig(**given)
    cfg.given = frozenset(given)  # what the command line set, so that --resume can restore the rest
    return cfg


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
