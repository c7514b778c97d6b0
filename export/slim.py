"""Train a slimmer synthesis for a trained model: the encoder, entropy model and every symbol stay.

    git show 0dd8dcf:export/checkpoints/default.pt > runs/wide.pt   # onic 0.8.0's N-wide model
    python -m export.slim runs/wide.pt --out runs/slim   # the defaults: widths 64,64,32, 65 min, lr 2e-4
    python -m export.bundle runs/slim/weights.pt runs/slim/bundle --calibration ../shared/data/train \
        --supersedes codec/models/default

(That run made onic 0.9.0's synthesis: export/checkpoints/default_synthesis.log.) On a CPU, the
full-size model's student, kept in the repo so that each session resumes it (its teacher is
full.pt as of 2885b47; full.pt has moved on since):

    git show 2885b47:export/checkpoints/full.pt > runs/teacher.pt
    python -m export.slim runs/teacher.pt --widths 128,64,32 --out runs/slimfull --pool 4096 \
        --synthesis_out export/checkpoints/full_synthesis.pt [--resume export/checkpoints/full_synthesis.pt]
    python -m export.slim runs/teacher.pt --resume export/checkpoints/full_synthesis.pt \
        --max_steps 0 --out runs/slimfull   # the whole model again, for export.bundle
    python -m export.slim runs/teacher.pt --resume export/checkpoints/full_synthesis.pt \
        --grow 128,80,32 --out runs/grow   # a wider student that starts from the narrower one's output

An asymmetric model (Johnston et al., "Computationally efficient neural image
compression", 2019): decoding costs what g_s costs, so g_s gets narrower hidden
stages than g_a. The student starts from the model's own g_s with the least used
channels pruned (mean |activation| times the norm of the weights that read the
channel, on training crops), then learns to map the model's real ŷ (rounded, as
a file holds it) back to the image, at every quality of the ladder:

    loss = mean over the batch of λ(t)·255²·MSE(g_s'(ŷ·inv_gain(t)), x)

the rate-distortion loss with the rate fixed (``--loss rd``), or the mean of
log MSE (``--loss log``): each crop then counts by its PSNR, so every rung weighs
alike in dB, as a BD-rate weighs them, where λ(t) gives the top rung 355 times the
bottom one's weight. Everything but g_s is frozen, so
the bitstream of any image is unchanged and a bundle of the student decodes the
files of the model it came from (``--supersedes``), to its own pixels.
The log compares the student with the teacher on the same batches; judge the
result on all of Kodak with benchmarks/slim.py (the same files through both
decoders), never on the log.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from export.model import GDN, Onic, Synthesis
from export.train import field_help, load_images, load_model, random_batch, save_weights


@dataclass
class SlimConfig:
    teacher: str = ""  # the trained model whose g_s is replaced (required; the shipped default.pt is already
    # narrow since 0.9.0, its N-wide teacher is 0dd8dcf's)
    widths: str = "64,64,32"  # the student's hidden stages, coarse to fine (0.9.0's)
    data: str = "../shared/data/train"  # training photos; never the test set
    out: str = "runs/slim"  # folder for weights.pt: the whole model, with the student as g_s
    crop: int = 256  # pixels per training crop side
    batch_size: int = 8  # crops per step
    lr: float = 2e-4  # Adam; tenfold lower after decay_at of the budget
    decay_at: float = 0.8  # fraction of the budget after which lr drops tenfold
    max_minutes: float = 65.0  # wall-clock budget; weights are saved at it
    max_steps: int = 1_000_000  # or stop after this many steps
    prune_crops: int = 32  # training crops that rank the channels to keep
    resume: str = ""  # continue from an earlier run's weights.pt (its g_s) instead of pruning
    grow: str = ""  # with resume: widen its student to these widths first (each ≥ its own), keeping its output
    log_every: int = 50  # steps between log lines (each also runs the teacher on its batch)
    save_every: int = 500  # steps between saves of weights.pt
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "cpu"  # cuda on a device draw (export/gpu_run.sh's SLIM)
    bf16: bool = False  # bf16 autocast for the student; the teacher's ŷ stays fp32, as files hold it
    half: bool = False  # fp16 weights.pt (the full-size model's, under the device tool's 16 MiB a file)
    pool: int = 0  # crops kept with the teacher's g_a output, drawn from at every step (0: fresh crops each
    # step). On a CPU the teacher's g_a is most of a step: the full-size model's took 494 ms of 8 crops
    pool_refresh: float = 1.0  # pool crops replaced by new ones per step (in batches of batch_size)
    loss: str = "rd"  # rd: λ(t)-weighted MSE, the rate-distortion loss at a fixed rate; log: mean log MSE, each
    # rung alike in dB (what a BD-rate weighs)
    synthesis_out: str = ""  # also save the student alone here, fp16 (what the repo keeps: 1.9 MB for the
    # full-size model's 128-80-32 against 13 MB for the whole model); --resume takes it with the same teacher


def synthesis_input(model: Onic, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŷ · inverse gain, λ) at ladder positions t from g_a's output y: the decoder's input as a
    file holds it (rounded)."""
    y_hat, inv_gain, lam = model.coded_from_analysis(y, t)
    return y_hat * inv_gain, lam


class AnalysisPool:
    """Training crops kept with the teacher's g_a output, which every ladder position shares: a
    step draws its batch here and only ``refresh`` new crops a step pay for the teacher's analysis
    (a replay buffer; each crop serves about batch_size / refresh steps, at a new position t each time)."""

    def __init__(self, teacher: Onic, images: list[torch.Tensor], size: int, crop: int, batch: int,
                 refresh: float, rng: random.Random):
        if size < batch:
            raise ValueError(f"a pool of {size} crops cannot give batches of {batch}")
        self.teacher, self.images, self.crop, self.batch, self.refresh, self.rng = \
            teacher, images, crop, batch, refresh, rng
        self.x = torch.empty(size, 3, crop, crop, dtype=torch.uint8, device=images[0].device)
        self.y: torch.Tensor | None = None
        self.credit = 0.0
        for start in range(0, size, batch):
            self._fill(list(range(start, min(size, start + batch))))

    @torch.no_grad()
    def _fill(self, slots: list[int]) -> None:
        x = random_batch(self.images, len(slots), self.crop, self.rng)
        y = self.teacher.g_a(x)
        if self.y is None:
            self.y = torch.empty(len(self.x), *y.shape[1:], device=y.device)
        index = torch.tensor(slots, device=y.device)
        self.x[index] = x.mul(255).round_().to(torch.uint8)  # random_batch's floats are bytes / 255
        self.y[index] = y

    def batch_of(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops in [0, 1], their g_a output) of ``size`` pool entries, after this step's refresh."""
        self.credit += self.refresh
        while self.credit >= self.batch:
            self._fill(self.rng.sample(range(len(self.x)), self.batch))
            self.credit -= self.batch
        index = torch.tensor(self.rng.sample(range(len(self.x)), size), device=self.x.device)
        return self.x[index].float().div_(255), self.y[index]


@torch.no_grad()
def channel_importance(g_s: nn.Sequential, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Per hidden stage (after each IGDN): mean |activation| × the norm of the next layer's weights on it."""
    scores = []
    h = inputs
    for i, layer in enumerate(g_s):
        h = layer(h)
        if i in (1, 3, 5):
            reader = g_s[i + 1].weight  # ConvTranspose2d: (in, out, k, k)
            scores.append(h.abs().mean(dim=(0, 2, 3)) * reader.flatten(1).norm(dim=1))
    return scores


@torch.no_grad()
def pruned(g_s: nn.Sequential, keep: list[torch.Tensor], N: int, M: int) -> Synthesis:
    """A narrower copy of g_s holding the channels ``keep`` of each hidden stage."""
    student = Synthesis(N, M, tuple(len(k) for k in keep))
    rows = [None, *keep]  # input channels of each deconv: all of ŷ's, then the kept ones
    for j, i in enumerate((0, 2, 4, 6)):
        w = g_s[i].weight if rows[j] is None else g_s[i].weight[rows[j]]
        out = keep[j] if j < 3 else slice(None)
        student[i].weight.copy_(w[:, out])
        student[i].bias.copy_(g_s[i].bias[out])
    for j, i in enumerate((1, 3, 5)):
        k = keep[j]
        student[i].beta.copy_(g_s[i].beta[k])
        student[i].gamma.copy_(g_s[i].gamma[k][:, k])
    return student


@torch.no_grad()
def widened(student: Synthesis, widths: tuple[int, ...], N: int, M: int) -> Synthesis:
    """``student`` with more channels in its hidden stages and the same output (Net2Net's function-
    preserving widening; Chen, Goodfellow & Shlens, ICLR 2016, here with zeros rather than copies).

    A new channel is read through freshly initialised weights, like those of a new model, and
    is read by nothing: the next layer's weights on it are zero, and so is its weight in the
    inverse GDN of the old channels. Training then grows into it from the student's own quality
    instead of from a pruned teacher's.
    """
    wide = Synthesis(N, M, widths)
    old = [M, *(student[i].weight.shape[1] for i in (0, 2, 4))]  # the student's in-channels of each deconv
    for j, i in enumerate((0, 2, 4, 6)):
        cin, cout = old[j], student[i].weight.shape[1]
        wide[i].weight[cin:] = 0  # nothing reads the new input channels yet
        wide[i].weight[:cin, :cout] = student[i].weight
        wide[i].bias[:cout] = student[i].bias
    for j, i in enumerate((1, 3, 5)):
        c = old[j + 1]
        wide[i].beta[:c] = student[i].beta
        wide[i].gamma[:c, :c] = student[i].gamma
        wide[i].gamma[:c, c:] = GDN.pedestal**0.5  # γ's reparametrization: an effective weight of 0
    return wide


def prune(model: Onic, widths: tuple[int, ...], images: list[torch.Tensor], crops: int, crop: int,
          rng: random.Random) -> Synthesis:
    """The model's g_s cut to ``widths`` by channel importance over a spread of qualities."""
    x = random_batch(images, crops, crop, rng)
    t = torch.linspace(0, len(model.cfg.lambdas) - 1, crops, device=x.device)
    inputs, _ = synthesis_input(model, model.g_a(x), t)
    scores = channel_importance(model.g_s, inputs)
    keep = [torch.sort(torch.topk(s, w).indices).values for s, w in zip(scores, widths, strict=True)]
    return pruned(model.g_s, keep, model.cfg.N, model.cfg.M)


LOSSES = ("rd", "log")


def distillation_loss(kind: str, mse: torch.Tensor, lam: torch.Tensor | None = None) -> torch.Tensor:
    """The batch's loss from per-crop MSE (images in [0, 1]) and λ (rd only): see the module docstring."""
    if kind == "rd" and lam is not None:
        return (lam * 255**2 * mse).mean()
    if kind == "log":
        return torch.log(mse + 1e-10).mean()
    raise ValueError(f"--loss is one of {', '.join(LOSSES)}, not {kind!r}" if kind != "rd" else "rd needs λ")


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _psnr(mse: float) -> float:
    return 10 * math.log10(1 / max(mse, 1e-12))


def distill(cfg: SlimConfig) -> Path:
    torch.manual_seed(cfg.seed)  # the quality draws; the crops have their own rng
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    widths = _widths(cfg.widths)
    if cfg.loss not in LOSSES:
        raise SystemExit(f"--loss is one of {', '.join(LOSSES)}, not {cfg.loss!r}")
    device = torch.device(cfg.device)
    torch.backends.cudnn.allow_tf32 = False  # the teacher's ŷ in full fp32, as the ONNX encoder makes it
    teacher, ckpt = load_model(cfg.teacher)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    first = 0
    digest = teacher_digest(teacher)
    if cfg.resume:
        student, widths, first = resumed(cfg.resume, teacher, digest)
        if student is None:
            raise SystemExit(f"{cfg.resume} was not distilled from {cfg.teacher}")
        if cfg.grow:
            wider = _widths(cfg.grow)
            if len(wider) != len(widths) or any(n < o for n, o in zip(wider, widths, strict=True)):
                raise SystemExit(f"--grow {cfg.grow} must be {len(widths)} widths, each at least {widths}'s")
            student, widths = widened(student, wider, teacher.cfg.N, teacher.cfg.M), wider
    elif cfg.grow:
        raise SystemExit("--grow widens a resumed student: give --resume too")
    # the photos after the checks above, which then refuse at once instead of after loading them
    t0 = time.time()
    images = [torch.from_numpy(a.copy()).to(device) for a in load_images(cfg.data, 0, cfg.crop)]
    rng = random.Random(cfg.seed + first)  # new crops after a resume
    if not cfg.resume:
        student = prune(teacher, widths, images, cfg.prune_crops, cfg.crop, rng)
    model = Onic(dataclasses.replace(teacher.cfg, synthesis=widths))
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("g_s.")}
    state.update({f"g_s.{k}": v for k, v in student.state_dict().items()})
    model.load_state_dict(state)
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    params = [sum(p.numel() for p in s.parameters()) for s in (teacher.g_s, model.g_s)]
    print(f"{len(images)} training images in {time.time() - t0:.1f}s; teacher g_s {params[0] / 1e3:.0f}k params, "
          f"student {widths} {params[1] / 1e3:.0f}k{f', from step {first}' if first else ''}; "
          f"crop {cfg.crop} batch {cfg.batch_size} lr {cfg.lr} on {device}{' (bf16)' if cfg.bf16 else ''}", flush=True)

    pool = AnalysisPool(teacher, images, cfg.pool, cfg.crop, cfg.batch_size, cfg.pool_refresh, rng) \
        if cfg.pool else None
    if pool is not None:
        print(f"pool of {cfg.pool} crops and their analysis in {time.time() - t0:.1f}s, "
              f"{cfg.pool_refresh} new a step", flush=True)
    opt = torch.optim.Adam(model.g_s.parameters(), lr=cfg.lr)
    rungs = len(teacher.cfg.lambdas)
    start = last = time.time()
    step, gaps = 0, []
    while step < cfg.max_steps:
        elapsed = time.time() - start
        if elapsed > cfg.max_minutes * 60:
            print(f"wall-clock budget of {cfg.max_minutes} min reached at step {step}")
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.1 if elapsed > cfg.decay_at * cfg.max_minutes * 60 else 1.0)
        t = torch.rand(cfg.batch_size, device=device) * (rungs - 1)
        with torch.no_grad():
            if pool is None:
                x = random_batch(images, cfg.batch_size, cfg.crop, rng)
                y = teacher.g_a(x)
            else:
                x, y = pool.batch_of(cfg.batch_size)
            inputs, lam = synthesis_input(teacher, y, t)
        with autocast:
            x_hat = model.g_s(inputs)
        mse = (x_hat.float() - x).pow(2).mean(dim=(1, 2, 3))
        loss = distillation_loss(cfg.loss, mse, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % cfg.log_every == 0:
            with torch.no_grad():
                ref = (teacher.g_s(inputs) - x).pow(2).mean(dim=(1, 2, 3))
            # Per-crop dB differences on the same crops, so that qualities weigh alike.
            ratio = ref.clamp_min(1e-12) / mse.detach().clamp_min(1e-12)
            gaps = [*gaps[-9:], float(torch.mean(10 * torch.log10(ratio)))]
            dt = (time.time() - last) / cfg.log_every
            last = time.time()
            print(f"step {step}: loss {loss.item():.3f} psnr {_psnr(mse.mean().item()):.2f} dB, student − teacher "
                  f"{gaps[-1]:+.3f} dB (last {len(gaps)} logs {sum(gaps) / len(gaps):+.3f}) "
                  f"lr {opt.param_groups[0]['lr']:.0e} {dt * 1000:.0f} ms/step {cfg.batch_size / dt:.1f} img/s",
                  flush=True)
        if step % cfg.save_every == 0:
            save(model, ckpt, first + step, out, cfg.half, cfg.synthesis_out, digest)
    save(model, ckpt, first + step, out, cfg.half, cfg.synthesis_out, digest)
    print(f"saved {out / 'weights.pt'}: {step} steps in {(time.time() - start) / 60:.1f} min "
          f"({first + step} in all)")
    return out / "weights.pt"


def save(model: Onic, ckpt: dict, synthesis_steps: int, out: Path, half: bool = False,
         synthesis_out: str = "", digest: str = "") -> None:
    """The whole model with the student as g_s. Its step stays the teacher's: the step names the
    encoder and entropy model that decide the symbols (export.bundle's ``--supersedes`` checks it);
    the student's own steps are kept beside it, and the teacher's run settings for a resume.
    With ``synthesis_out``, the student alone there too (fp16), named by its teacher's ``digest``."""
    kept = {"config": ckpt["config"]} if "config" in ckpt else {}
    save_weights(out / "weights.pt", model, int(ckpt["step"]), half=half,
                 extra={"synthesis_steps": synthesis_steps, **kept})
    if synthesis_out:
        path = Path(synthesis_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"synthesis": {k: v.detach().cpu().half() for k, v in model.g_s.state_dict().items()},
                    "widths": list(model.cfg.synthesis), "teacher": digest, "step": int(ckpt["step"]),
                    "synthesis_steps": synthesis_steps}, tmp)
        tmp.replace(path)


def teacher_digest(model: Onic) -> str:
    """Names the weights a student was distilled for: sha256 of every tensor but g_s's, as fp16 bytes
    (how the full-size checkpoints are stored), so that an fp32 copy of an fp16 checkpoint matches."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if not k.startswith("g_s."):
            v = v.detach().cpu()
            h.update(k.encode() + (v.half() if v.is_floating_point() else v).numpy().tobytes())
    return h.hexdigest()[:16]


def resumed(path: str, teacher: Onic, digest: str) -> tuple[Synthesis | None, tuple[int, ...], int]:
    """(student, widths, steps so far) of an earlier run, from its whole weights.pt or its student
    alone (``synthesis_out``); student None where it was distilled from another teacher."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if "synthesis" in ck:
        widths = tuple(int(w) for w in ck["widths"])
        if ck["teacher"] != digest:
            return None, widths, 0
        student = Synthesis(teacher.cfg.N, teacher.cfg.M, widths)
        student.load_state_dict({k: v.float() for k, v in ck["synthesis"].items()})
        return student, widths, int(ck["synthesis_steps"])
    earlier, done = load_model(path)
    if any(not torch.equal(v.cpu(), earlier.state_dict()[k]) for k, v in teacher.state_dict().items()
           if not k.startswith("g_s.")):
        return None, earlier.cfg.synthesis, 0
    return earlier.g_s, earlier.cfg.synthesis, int(done.get("synthesis_steps", 0))


def parse_args(argv: list[str] | None = None) -> SlimConfig:
    parser = argparse.ArgumentParser(prog="python -m export.slim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="the trained model's checkpoint (an N-wide one, e.g. 0dd8dcf's default.pt)")
    helps = field_help(SlimConfig)
    for f in dataclasses.fields(SlimConfig):
        if f.name != "teacher":
            kind = (lambda v: bool(int(v))) if isinstance(f.default, bool) else type(f.default)
            parser.add_argument(f"--{f.name}", type=kind, default=f.default, metavar="0|1" if kind is not type(
                f.default) else None, help=f"{helps.get(f.name, '')} (default: {f.default!r})")
    return SlimConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    distill(parse_args())
