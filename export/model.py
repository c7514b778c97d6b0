"""The onic model: a mean-scale hyperprior with gain units for variable rate.

Transforms (CompressAI names):

    x ──g_a──▶ y ·gain ──▶ y' ──h_a──▶ z ·z_gain ──Q──▶ ẑ ·z_inv_gain ──h_s──▶ (μ, σ)
                            │                                                 │
                            └──────────Q(y' − μ) + μ = ŷ' ◀───────────────────┘
    x̂ ◀──g_s── ŷ' · inv_gain

- g_a/g_s: Ballé, Laparra, Simoncelli, "End-to-end optimized image compression"
  (ICLR 2017), with GDN; h_a/h_s and the factorized prior on z: Ballé et al.,
  "Variational image compression with a scale hyperprior" (ICLR 2018); the
  Gaussian conditional with a mean: Minnen, Ballé, Toderici, "Joint
  autoregressive and hierarchical priors" (NeurIPS 2018), without the
  autoregressive part so that decoding stays parallel.
- Gain units: Cui et al., "Asymmetric gained deep image compression with
  continuous rate adaptation" (CVPR 2021). A ladder of λ values each owns a
  per-channel gain and inverse gain on y; positions between rungs interpolate
  both exponentially, so one model serves every quality. With
  ``hyper_gains`` the rungs own gains on z as well (Cui et al.'s hyperprior
  gain units): without them h_a sees y·gain, so at small gains z rounds to zero
  and h_s can only answer every low rung with its biases.
- Channel-conditional entropy model (``slices``): Minnen & Singh, "Channel-wise
  autoregressive entropy models for learned image compression" (ICIP 2020),
  with ELIC's uneven groups (He et al., CVPR 2022). y is split into channel
  slices; slice k's μ comes from h_s's μ and the ŷ of earlier slices, its σ
  from h_s's σ and the integer *symbols* round(y − μ) of earlier slices (never
  float ŷ: the decoder's scale indexes must be exact, codec/intscale.py), and
  latent residual prediction adds 0.5·tanh(·) of (μ_h, ŷ_≤k) to ŷ_k. Every
  slice network is a residual on h_s's output whose last layer starts at zero,
  so a hyperprior model continued with slices starts out computing exactly
  what it did.
- Quantization in training: additive uniform noise for the rate terms and
  straight-through rounding of y − μ for the synthesis input (Minnen & Singh,
  "Channel-wise autoregressive entropy models", ICIP 2020).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# CompressAI's default λ ladder for MSE models (compressai/zoo/image.py, quality 1..6),
# which spans roughly 0.1–1.5 bpp on Kodak for a hyperprior model.
DEFAULT_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483)


@dataclass
class ModelConfig:
    N: int = 128  # channels of the transforms and of z
    M: int = 192  # channels of y
    lambdas: tuple[float, ...] = field(default_factory=lambda: DEFAULT_LAMBDAS)
    hyper_gains: bool = False  # per-rung gain and inverse gain on z (False: the 0.x models)
    slices: tuple[int, ...] = ()  # channel-slice sizes of y (summing to M); () = the plain hyperprior
    synthesis: tuple[int, ...] = ()  # widths of g_s's three hidden stages, coarse to fine; () = N each

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        d["slices"] = list(self.slices)
        if self.synthesis:  # absent for N-wide ones, so their manifests stay as they were
            d["synthesis"] = list(self.synthesis)
        else:
            del d["synthesis"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(N=int(d["N"]), M=int(d["M"]), lambdas=tuple(float(v) for v in d["lambdas"]),
                   hyper_gains=bool(d.get("hyper_gains", False)), slices=tuple(int(v) for v in d.get("slices", ())),
                   synthesis=tuple(int(v) for v in d.get("synthesis", ())))

    def __post_init__(self):
        if self.slices and (sum(self.slices) != self.M or min(self.slices) < 1):
            raise ValueError(f"slices {self.slices} must be positive and sum to M={self.M}")
        if self.synthesis and (len(self.synthesis) != 3 or min(self.synthesis) < 1):
            raise ValueError(f"synthesis widths {self.synthesis} must be three positive numbers")


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé, Laparra, Simoncelli, ICLR 2016).

    y_i = x_i / sqrt(β_i + Σ_j γ_ij x_j²); with ``inverse=True`` (IGDN) the
    square root multiplies instead. β and γ are kept non-negative by a squared
    reparametrization with a small pedestal, as in CompressAI's ``layers/gdn.py``.
    """

    pedestal = 2.0**-36  # from Ballé's tensorflow_compression

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(β, γ as a 1×1 conv weight) after the reparametrization."""
        c = self.beta.shape[0]
        beta = _lower_bound(self.beta, self.beta_bound) ** 2 - self.pedestal
        gamma = _lower_bound(self.gamma, self.pedestal**0.5) ** 2 - self.pedestal
        return beta, gamma.view(c, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective()
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


class FrozenGDN(nn.Module):
    """GDN with β and γ computed once: what the ONNX graphs hold (plain Conv weights)."""

    def __init__(self, gdn: GDN):
        super().__init__()
        self.inverse = gdn.inverse
        beta, gamma = gdn.effective()
        self.register_buffer("beta", beta.detach().clone())
        self.register_buffer("gamma", gamma.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(F.conv2d(x * x, self.gamma, self.beta))
        return x * norm if self.inverse else x / norm


def _lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """max(x, bound) whose gradient still flows below the bound (so it can recover)."""
    return x + (torch.clamp(x, min=bound) - x).detach()


class _LowerBoundFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return torch.clamp(x, min=bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # Below the bound only gradients that would raise x pass (descent moves x by −grad).
        return grad * ((x >= ctx.bound) | (grad < 0)).to(grad.dtype), None


def scale_lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """max(x, bound) for σ, as CompressAI's LowerBound: below the bound, gradients may raise x but
    not push it further down. Passing every gradient (as _lower_bound does) lets the rate of the
    zeros drive a raw σ ever lower while the forward value stays at the bound, until a nonzero
    symbol there costs tens of bits and its gradient needs many steps to climb back: training only
    the slice networks that way diverged (bpp 0.6 → 2.6, non-finite gradients, ~6,000 steps);
    with this bound the same run did not (export/checkpoints/DRAWS.md)."""
    return _LowerBoundFn.apply(x, bound)


def conv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=s, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, s: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=s, padding=k // 2, output_padding=s - 1)


class EntropyBottleneck(nn.Module):
    """Factorized (non-parametric) density for z, one per channel.

    Ballé et al. 2018, appendix 6.1: the cumulative c(x) of each channel is a
    small monotone network (filters 3-3-3), so p(ẑ) = c(ẑ + ½) − c(ẑ − ½).
    Tables of integer probabilities are frozen from it at export time.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def _logits_cumulative(self, x: torch.Tensor) -> torch.Tensor:
        # x: (C, 1, n) → (C, 1, n)
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """p(z) of shape z.shape for z of shape (B, C, H, W) (already noisy or rounded)."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self._logits_cumulative(v - 0.5)
        upper = self._logits_cumulative(v + 0.5)
        # Flip to the side of the median so that differences of sigmoids stay precise. At the
        # median itself (lower + upper = 0, a cumulative symmetric about a symbol) either side
        # will do, where -torch.sign (CompressAI's) gives 0 and with it p = 0.
        sign = torch.where(lower + upper > 0, -1.0, 1.0).to(lower.dtype).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def pmf_table(self, support: int) -> torch.Tensor:
        """p(k) for integers k in [-support, support], shape (C, 2·support + 1)."""
        c = self.matrices[0].shape[0]
        k = torch.arange(-support, support + 1, dtype=torch.float32, device=self.matrices[0].device)
        z = k.view(1, 1, 1, -1).expand(1, c, 1, -1)
        return self.likelihood(z).reshape(c, -1).cpu()


def gaussian_likelihood(y: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """P(y) under N(μ, σ²) integrated over [y − ½, y + ½]."""
    v = torch.abs(y - mu)
    upper = _std_cdf((0.5 - v) / sigma)
    lower = _std_cdf((-0.5 - v) / sigma)
    return upper - lower


def _std_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x * (2**-0.5))


SCALE_MIN = 0.11  # lower bound on σ, as CompressAI's GaussianConditional
LIKELIHOOD_MIN = 1e-9


class Analysis(nn.Sequential):
    """g_a: four stride-2 5×5 convolutions with GDN (x → y, 16× smaller)."""

    def __init__(self, N: int, M: int):
        super().__init__(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


class Synthesis(nn.Sequential):
    """g_s: the mirror of g_a with inverse GDN (ŷ → x̂).

    ``widths`` narrows its hidden stages (coarse to fine; default N each): an asymmetric
    model whose decoder is lighter than its encoder (Johnston et al., "Computationally
    efficient neural image compression", 2019). The finest stage, at half resolution,
    holds about 60% of the N-wide synthesis' multiply-adds. export/slim.py trains one
    against a model's frozen analysis and entropy model, so its symbols stay the same.
    """

    def __init__(self, N: int, M: int, widths: tuple[int, ...] = ()):
        a, b, c = widths or (N, N, N)
        super().__init__(
            deconv(M, a), GDN(a, inverse=True), deconv(a, b), GDN(b, inverse=True),
            deconv(b, c), GDN(c, inverse=True), deconv(c, 3),
        )


class HyperAnalysis(nn.Sequential):
    """h_a of the mean-scale hyperprior (Minnen et al. 2018): y → z, 4× smaller."""

    def __init__(self, N: int, M: int):
        super().__init__(
            conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N),
        )


class HyperSynthesis(nn.Sequential):
    """h_s of the mean-scale hyperprior: ẑ → (μ, σ) stacked as 2M channels."""

    def __init__(self, N: int, M: int):
        super().__init__(
            deconv(N, M), nn.LeakyReLU(inplace=True), deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, 3, 1),
        )


class SliceNet(nn.Sequential):
    """One slice's residual network: 3×3 conv, LeakyReLU, 3×3 conv whose weights start at zero."""

    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__(conv(cin, hidden, 3, 1), nn.LeakyReLU(inplace=True), conv(hidden, cout, 3, 1))
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)


class ScaleNet(nn.Module):
    """One slice's σ network: 1×1 conv of σ_h plus 3×3 conv of the earlier symbols, LeakyReLU, 3×3 conv.

    σ_h is h_s's output, already smooth (upsampled 4× by h_s), so a 1×1 conv reads
    it at a ninth of the cost; the spatial context comes from the symbols. The
    integer path runs this network (codec/intscale.py), so its cost is the
    decoder's: a 3×3 conv on σ_h measured 3 ms of the 124 ms decode at 768×512.
    """

    def __init__(self, M: int, prior: int, hidden: int, cout: int):
        super().__init__()
        self.f = conv(M, hidden, 1, 1)
        self.s = nn.Conv2d(prior, hidden, 3, padding=1, bias=False)
        self.out = conv(hidden, cout, 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def hidden(self, sigma_h: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.f(sigma_h) + self.s(sym))

    def forward(self, sigma_h: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(sigma_h, sym))


def slice_hidden(M: int) -> int:
    """Width of the slice networks: two thirds of M (64 for M = 96, 128 for M = 192)."""
    return max(16, M * 2 // 3)


class ChannelContext(nn.Module):
    """The slice networks of the channel-conditional entropy model (Minnen & Singh 2020).

    For slice k (channels [a_k, b_k) of y):
    - mean[k−1]:  (μ_h, ŷ_<k)   → Δμ_k     (float; k ≥ 1)
    - scale[k−1]: (σ_h, sym_<k) → Δσ_k     (the integer path's; k ≥ 1)
    - lrp[k]:     (μ_h, ŷ_≤k)   → 0.5·tanh → added to ŷ_k (latent residual prediction)
    """

    def __init__(self, M: int, slices: tuple[int, ...]):
        super().__init__()
        self.bounds = [(sum(slices[:k]), sum(slices[: k + 1])) for k in range(len(slices))]
        h = slice_hidden(M)
        self.mean = nn.ModuleList(SliceNet(M + a, h, b - a) for a, b in self.bounds[1:])
        # The σ networks run in the decoder's integer path (numpy): half as wide, for decode time.
        self.scale = nn.ModuleList(ScaleNet(M, a, h // 2, b - a) for a, b in self.bounds[1:])
        self.lrp = nn.ModuleList(SliceNet(M + b, h, b - a) for a, b in self.bounds)

    def forward(self, y: torch.Tensor, mu_h: torch.Tensor, sigma_h: torch.Tensor):
        """(ŷ, μ, σ before its bound) with straight-through rounding of y − μ, slice by slice."""
        y_hat, sym, mus, sigmas = [], [], [], []
        for k, (a, b) in enumerate(self.bounds):
            mu, sigma = mu_h[:, a:b], sigma_h[:, a:b]
            if k:
                mu = mu + self.mean[k - 1](torch.cat([mu_h, *y_hat], 1))
                sigma = sigma + self.scale[k - 1](sigma_h, torch.cat(sym, 1))
            mu, sigma = self.within_slice(k, y[:, a:b], mu, sigma)
            r = y[:, a:b] - mu
            s = r + (torch.round(r) - r).detach()
            y_k = mu + s
            y_hat.append(y_k + 0.5 * torch.tanh(self.lrp[k](torch.cat([mu_h, *y_hat, y_k], 1))))
            sym.append(s)
            mus.append(mu)
            sigmas.append(sigma)
        return torch.cat(y_hat, 1), torch.cat(mus, 1), torch.cat(sigmas, 1)

    def within_slice(self, k: int, y_k: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor):
        """(μ, σ) of slice k after any context inside the slice: none here (a spatial variant,
        benchmarks/checkerboard.py, shifts them from the slice's own earlier symbols)."""
        return mu, sigma


class Onic(nn.Module):
    """Variable-rate mean-scale hyperprior, channel-conditional with ``slices`` (see the module docstring)."""

    stride = 64  # g_a halves four times, h_a twice more

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        N, M, L = cfg.N, cfg.M, len(cfg.lambdas)
        self.g_a = Analysis(N, M)
        self.g_s = Synthesis(N, M, cfg.synthesis)
        self.h_a = HyperAnalysis(N, M)
        self.h_s = HyperSynthesis(N, M)
        self.entropy_bottleneck = EntropyBottleneck(N)
        # Start each rung's gain near sqrt(λ / λ_mid): the step size that balances MSE ∝ 1/λ.
        lam = torch.tensor(cfg.lambdas)
        g0 = torch.log(torch.sqrt(lam / lam[L // 2]))
        self.log_gain = nn.Parameter(g0.view(L, 1).repeat(1, M))
        self.log_inv_gain = nn.Parameter(-g0.view(L, 1).repeat(1, M))
        self.register_buffer("lambdas", lam)
        self.fp32_hyper = False  # under bf16 autocast, run h_a, h_s and the gains in fp32 (a training choice)
        if cfg.hyper_gains:
            # Identity at first, so that a model without them can be continued with them.
            self.log_z_gain = nn.Parameter(torch.zeros(L, N))
            self.log_z_inv_gain = nn.Parameter(torch.zeros(L, N))
        if cfg.slices:
            self.context = ChannelContext(M, cfg.slices)

    def gains(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gain, inverse gain (B, M, 1, 1) and λ (B,) at ladder positions t ∈ [0, L−1]."""
        return interpolate_ladder(self.log_gain, self.log_inv_gain, torch.log(self.lambdas), t)

    def z_gains(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain on z (B, N, 1, 1) at ladder positions t; ones without hyper gains."""
        if not self.cfg.hyper_gains:
            one = torch.ones(t.shape[0], self.cfg.N, 1, 1, device=t.device)
            return one, one
        zg, zi, _ = interpolate_ladder(self.log_z_gain, self.log_z_inv_gain, torch.log(self.lambdas), t)
        return zg, zi

    def hyper(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) from h_s of its input (ẑ · z_inv_gain; plain ẑ without hyper gains).

        With slices these are h_s's μ_h and bounded σ_h, the inputs of the slice networks.
        """
        mu, sigma = self.h_s(z_hat).chunk(2, dim=1)
        return mu, scale_lower_bound(sigma, SCALE_MIN)

    def entropy_parameters(self, y: torch.Tensor, z_hat: torch.Tensor):
        """(ŷ, μ, σ) for y given h_s's input; ŷ rounds y − μ straight-through."""
        mu, sigma = self.h_s(z_hat).chunk(2, dim=1)
        if self.cfg.slices:
            y_hat, mu, sigma = self.context(y, mu, sigma)
        else:
            y_hat = mu + (y - mu) + (torch.round(y - mu) - (y - mu)).detach()
        return y_hat, mu, scale_lower_bound(sigma, SCALE_MIN)

    def coded_from_analysis(self, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ŷ, inverse gain, λ) at ladder positions t as the codec decodes them, from g_a's output y
        (the same at every position): μ plus the rounded residual, ẑ rounded (what export/qat.py and
        export/slim.py train g_s on)."""
        gain, inv_gain, lam = self.gains(t)
        z_gain, z_inv_gain = self.z_gains(t)
        y = y * gain
        z_hat = torch.round(self.h_a(y) * z_gain)
        y_hat, _, _ = self.entropy_parameters(y, z_hat * z_inv_gain)
        return y_hat, inv_gain, lam

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        gain, inv_gain, lam = self.gains(t)
        z_gain, z_inv_gain = self.z_gains(t)
        y = self.g_a(x)
        with torch.autocast(device_type=x.device.type, enabled=False) if self.fp32_hyper else nullcontext():
            y = (y.float() if self.fp32_hyper else y) * gain
            z = self.h_a(y) * z_gain
            z_hat = z + (torch.round(z) - z).detach()
            y_hat, mu, sigma = self.entropy_parameters(y, z_hat * z_inv_gain)
        # Noise stands in for rounding in the rate terms while training; evaluation rounds.
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else z_hat
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else y_hat
        x_hat = self.g_s(y_hat * inv_gain)
        # Likelihoods in fp32 even under bf16 autocast: differences of CDFs near 1 lose everything in bf16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            y_likelihood = gaussian_likelihood(y_noisy.float(), mu.float(), sigma.float())
            z_likelihood = self.entropy_bottleneck.likelihood(z_noisy.float())
        return {
            "x_hat": x_hat.float(),
            "y_likelihood": y_likelihood.clamp_min(LIKELIHOOD_MIN),
            "z_likelihood": z_likelihood.clamp_min(LIKELIHOOD_MIN),
            "lambda": lam,
        }


def interpolate_ladder(log_gain: torch.Tensor, log_inv_gain: torch.Tensor, log_lam: torch.Tensor, t: torch.Tensor):
    """Exponential interpolation between neighbouring rungs (Cui et al. 2021, eq. 6)."""
    L = log_gain.shape[0]
    t = t.clamp(0, L - 1)
    i = torch.clamp(torch.floor(t).long(), max=L - 2)
    w = (t - i.to(t.dtype)).unsqueeze(1)

    def mix(table: torch.Tensor) -> torch.Tensor:
        return table[i] * (1 - w) + table[i + 1] * w

    gain = torch.exp(mix(log_gain))[..., None, None]
    inv_gain = torch.exp(mix(log_inv_gain))[..., None, None]
    lam = torch.exp(log_lam[i] * (1 - w[:, 0]) + log_lam[i + 1] * w[:, 0])
    return gain, inv_gain, lam


def quality_to_position(quality: float, rungs: int) -> float:
    """Map quality 0–100 linearly onto the ladder position 0 … rungs − 1."""
    return max(0.0, min(100.0, float(quality))) / 100.0 * (rungs - 1)


def rd_loss(out: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """bpp + λ·255²·MSE per example ("per_example"), averaged over the batch ("loss")."""
    b, _, h, w = x.shape
    pixels = h * w
    bits_y = -torch.log2(out["y_likelihood"]).sum(dim=(1, 2, 3))
    bits_z = -torch.log2(out["z_likelihood"]).sum(dim=(1, 2, 3))
    bpp = (bits_y + bits_z) / pixels
    mse = F.mse_loss(out["x_hat"], x, reduction="none").mean(dim=(1, 2, 3))
    loss = bpp + out["lambda"] * 255**2 * mse
    return {"loss": loss.mean(), "per_example": loss, "bpp": bpp.mean(), "mse": mse.mean()}
