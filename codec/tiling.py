"""The pixel-domain transforms, run in overlapping tiles so that memory stays bounded.

g_a and g_s are convolutional with a finite receptive field, so a tile with
a margin at least that wide, cropped back to its core, equals the whole-image
computation (bit for bit in practice): no rate cost, no seams, no format
change. benchmarks/tiles.py measures the seams that independently coded tiles
would leave instead.

- analysis: cores of TILE pixels on the 16-pixel latent grid, MARGIN pixels
  of context on each side (the image is edge-padded on the fly);
- synthesis: cores of TILE/16 latents, MARGIN/16 latents of context; with a bundle's
  decoder_tiles.onnx (export/halo.py) each stage computes only what the next
  needs of the margins, not all of them: the same pixels, faster (README, onic 0.12.0).
Images up to two tiles' area run whole. Tiles are independent: with several
per worker they run on threads, each on a single-threaded session. Once a
graph's tiles or bands are done, its session gives its arena back
(Bundle.release), so a large image holds one graph's arena at a time.

The latent-domain graphs (h_a, h_s) run in bands of BAND rows of z with
BAND_MARGIN rows of context, so that their activations (the widest tensors
of a large image after the pixels) never exist for the whole image at once;
only y, μ and the symbols do, and entropy coding sees them whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from codec.session import PIXELS_PER_LATENT, TILE_GRAPH, Bundle
from codec.threads import bands, each

TILE = 512  # pixels per tile core side; multiple of 16
MARGIN = 32  # pixels of context per side: g_a reaches 30 pixels past a latent, g_s 2 latents past a pixel
LATENT = PIXELS_PER_LATENT  # pixels per latent of y
HYPER = 4  # latents of y per latent of z
BAND = 16  # rows of z per band core of h_a and h_s (1024 pixels)
# Rows of z of context per side: h_s reaches 7/4 rows of z (1 + 1/2 + 1/4: its two 5×5 stride-2
# layers and its 3×3 one, each in its own rows), h_a as far the other way, so 2 is exact.
BAND_MARGIN = 2
BAND_WIDTH = 144  # columns of z up to which bands on threads grow to divide among them (9,216 pixels)


def _spans(size: int, core: int, margin: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop) of each core and of its window with margins, clipped to [0, size)."""
    for a in range(0, size, core):
        b = min(a + core, size)
        yield a, b, max(0, a - margin), min(size, b + margin)


def whole(h: int, w: int) -> bool:
    """Small enough to run in one piece: up to two tiles' area (with margins), so memory stays that
    of tiles, and a Kodak-sized image (768×512) runs once instead of as two tiles and their
    overlapping margins."""
    return h * w <= 2 * (TILE + 2 * MARGIN) ** 2


def _window(rgb: np.ndarray, r0: int, r1: int, c0: int, c1: int, scratch: Scratch | None = None) -> np.ndarray:
    """rgb[r0:r1, c0:c1] as float (1, 3, h, w), edge-padding rows/columns beyond the image
    (in ``scratch``'s buffer "x", if given).

    Plane by plane into one array, scaled in place: the gather, transposed copy and two float
    temporaries it replaced took 3.6–5 ms of a 768×512 encode, this 0.4 (a one-off timeline
    probe, onic 0.9.1's round).
    """
    rows, cols = min(r1, rgb.shape[0]) - r0, min(c1, rgb.shape[1]) - c0
    shape = (1, 3, r1 - r0, c1 - c0)
    out = np.empty(shape, dtype=np.float32) if scratch is None else scratch.empty("x", shape)
    for c in range(3):
        out[0, c, :rows, :cols] = rgb[r0 : r0 + rows, c0 : c0 + cols, c]
    out[0, :, rows:, :cols] = out[0, :, rows - 1 : rows, :cols]
    out[0, :, :, cols:] = out[0, :, :, cols - 1 : cols]
    np.divide(out, 255, out=out)
    return out


def analyse(bundle: Bundle, rgb: np.ndarray, gain: np.ndarray,
            graph: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) → y (M, Hp/16, Wp/16), z (N, Hp/64, Wp/64) with Hp, Wp padded to the stride;
    ``graph``: the analysis graph to run (default: ``bundle.analysis_graph``)."""
    graph = graph or bundle.analysis_graph
    s = bundle.stride
    hp, wp = -(-rgb.shape[0] // s) * s, -(-rgb.shape[1] // s) * s
    if whole(hp, wp):
        (y,) = bundle.run(graph, x=_window(rgb, 0, hp, 0, wp), gain=gain)
        return y[0], hyper_encode(bundle, y[0])
    y = np.empty((int(bundle.manifest["config"]["M"]), hp // LATENT, wp // LATENT), dtype=np.float32)
    tiles = [(r, c) for r in _spans(hp, TILE, MARGIN) for c in _spans(wp, TILE, MARGIN)]
    parallel = _parallel(bundle.tile_workers, len(tiles))
    scratches = ThreadScratch()

    def run(tile) -> None:
        (r0, r1, wr0, wr1), (c0, c1, wc0, wc1) = tile
        scratch = scratches.scratch
        yt = scratch.empty("y", (1, y.shape[0], (wr1 - wr0) // LATENT, (wc1 - wc0) // LATENT))
        bundle.run_into(graph, yt, x=_window(rgb, wr0, wr1, wc0, wc1, scratch), gain=gain,
                        single_thread=parallel)
        top, left = (r0 - wr0) // LATENT, (c0 - wc0) // LATENT
        y[:, r0 // LATENT : r1 // LATENT, c0 // LATENT : c1 // LATENT] = \
            yt[0, :, top : top + (r1 - r0) // LATENT, left : left + (c1 - c0) // LATENT]

    each(run, tiles, bundle.tile_workers if parallel else 1)
    bundle.release(graph, parallel)
    return y, hyper_encode(bundle, y)


def _parallel(workers: int, tiles: int) -> bool:
    """Several tiles per worker: one thread per tile beats onnxruntime's threads within a graph
    (a one-off timing of the synthesis on 2 cores: 1024² 192 → 141 ms, 12 MP 2.29 → 1.68 s);
    with fewer it does not (768×512, two tiles: 67 against 70 ms)."""
    return workers > 1 and tiles >= 2 * workers


def _row_bands(bundle: Bundle, graph: str, single_thread: bool, rows: int, band: int, margin: int, rows_in: int,
               rows_out: int, workers: int = 1, **inputs: np.ndarray) -> np.ndarray:
    """A graph over bands of ``rows`` rows, ``margin`` of context per side: inputs (1, C, rows·rows_in, w)
    → (C', rows·rows_out, w') float32. A band's margin must cover the graph's reach. ``workers`` > 1
    and a graph whose output channels are static (so that the output exists before any band runs):
    the bands, sized to divide among that many threads (threads.bands), run on them, each on a
    single-threaded session; the decoder runs h_s so beside the entropy decoding of a large image."""
    if rows <= band + 2 * margin:
        return bundle.run(graph, single_thread=single_thread, **inputs)[0][0]
    channels = bundle.session(graph, True).get_outputs()[0].shape[1] if workers > 1 else None
    first = next(iter(inputs.values()))
    out = None
    if isinstance(channels, int):
        single_thread = True
        spans = bands(rows, band, workers, first.shape[3] // rows_in, BAND * BAND_WIDTH)
        out = np.empty((channels, rows * rows_out, first.shape[3] * rows_out // rows_in), dtype=np.float32)
    else:  # one band after another; the first tells the output's shape
        workers, spans = 1, [(r0, r1) for r0, r1, _, _ in _spans(rows, band, margin)]
    scratches = ThreadScratch()

    def run(span: tuple[int, int]) -> None:
        nonlocal out
        r0, r1 = span
        w0, w1 = max(0, r0 - margin), min(rows, r1 + margin)
        scratch = scratches.scratch
        window = {k: scratch.copy(f"in {k}", v[:, :, w0 * rows_in : w1 * rows_in]) for k, v in inputs.items()}
        if out is None:
            (t,) = bundle.run(graph, single_thread=single_thread, **window)
            out = np.empty((t.shape[1], rows * rows_out, t.shape[3]), dtype=np.float32)
        else:
            t = scratch.empty("out", (1, out.shape[0], (w1 - w0) * rows_out, out.shape[2]))
            bundle.run_into(graph, t, single_thread=single_thread, **window)
        out[:, r0 * rows_out : r1 * rows_out] = t[0, :, (r0 - w0) * rows_out : (r1 - w0) * rows_out]

    each(run, spans, workers)
    bundle.release(graph, single_thread)
    return out


class Scratch:
    """Reused float32 buffers for the windows of a band or tile loop, one per name: a window is a
    contiguous view of its buffer's first elements, so a loop allocates each buffer once instead of
    every window anew: freed windows of a few MB stayed in glibc's per-thread heaps, and a 50 MP
    round trip peaked at 1,615–1,724 MB against 1,340–1,409 with these (README, onic 0.11.1)."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def empty(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, dtype=np.float32)
        return buf[:size].reshape(shape)

    def copy(self, name: str, value: np.ndarray) -> np.ndarray:
        window = self.empty(name, value.shape)
        np.copyto(window, value)
        return window


class ThreadScratch(threading.local):
    """A Scratch per thread (``.scratch``), for tile loops that run on several."""

    def __init__(self) -> None:
        self.scratch = Scratch()  # threading.local runs this once in each thread that asks


def hyper_encode(bundle: Bundle, y: np.ndarray) -> np.ndarray:
    """y (M, h, w) → z (N, h/4, w/4) by h_a, in bands of z rows, shared among the bundle's tile workers."""
    return _row_bands(bundle, "hyper_encoder", False, y.shape[1] // HYPER, BAND, BAND_MARGIN, HYPER, 1,
                      workers=bundle.tile_workers, y=y[None])


def z_symbols(bundle: Bundle, z: np.ndarray, quality: int) -> np.ndarray:
    """h_a's output (N, h, w) → the ẑ symbols of a quality: times the gain on z, rounded (int32)."""
    if bundle.has_z_gains:
        z = z * bundle.z_gains(quality)[0][0]
    return np.round(np.clip(z, -(2**30), 2**30)).astype(np.int32)


def hyper_decode(bundle: Bundle, z_sym: np.ndarray, quality: int, single_thread: bool = False,
                 workers: int = 1) -> np.ndarray:
    """ẑ symbols (N, h, w) → μ (M, 4h, 4w) by h_s, in bands of z rows (σ is the integer path's job).
    ``single_thread`` when it runs beside the integer chain, which has the other core; ``workers``
    threads share a large image's bands."""
    z = bundle.hyper_input(z_sym, quality)[None]
    return _row_bands(bundle, "hyper_decoder", single_thread, z.shape[2], BAND, BAND_MARGIN, 1, HYPER,
                      workers=workers, z_hat=z)


# Rows of y per band of a slice graph, and of context (they reach 2 rows). Seven sessions each keep
# buffers of their largest band: 64-row bands measured 1.16 GB of peak memory at 50 MP, 16-row ones 0.64.
Y_BAND, Y_MARGIN = 16, 2


def conditional_latents(bundle: Bundle, mu_h: np.ndarray, y_sym: np.ndarray | None, y: np.ndarray | None = None,
                        ready: Callable[[int], np.ndarray] | None = None,
                        mu_out: np.ndarray | None = None, single_thread: bool = False,
                        written: Callable[[int, np.ndarray], None] | None = None,
                        priors: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """ŷ (M, h, w) of a channel-conditional model, slice by slice (Minnen & Singh 2020).

    Slice k's μ comes from μ_h and the ŷ of the slices before it; ŷ_k is μ_k plus
    its symbols plus the latent residual prediction. The encoder passes y and an
    empty ``y_sym``, which is filled with round(y − μ) on the way; the decoder
    passes the decoded symbols, or ``ready``: ready(k) returns the symbols once
    slice k's are decoded (slice k's μ is computed before it is asked).
    ``mu_out`` (M, h, w), if given, receives every slice's μ (the encoder's refinement needs it).
    ``single_thread`` when the chain runs beside the integer one, which has the other core.
    ``written(k, y_sym)``, if given, is told as the encoder's slice k symbols are in y_sym.
    ``priors``: slice_prior's results that the caller made ahead, by slice; the rest are made here,
    each just before its slice (after the encoder has handed on slice 0's symbols), and dropped after it.
    """
    y_hat = np.empty(mu_h.shape, dtype=np.float32)
    h = mu_h.shape[1]
    band = _y_band(mu_h)
    priors = dict(priors or {})
    for k, (a, b) in enumerate(bundle.slices):
        if k:
            mean, lrp = _slice_inputs(bundle, mu_h, k, priors, single_thread)
            mu = _row_bands(bundle, f"slice_mean{k}", single_thread, h, band, Y_MARGIN, 1, 1,
                            mu_h=mu_h[None], **mean, y_prev=y_hat[None, :a])
        else:
            mean, mu = {}, mu_h[a:b]
        if mu_out is not None:
            mu_out[a:b] = mu
        if ready is not None:
            y_sym = ready(k)
        if y is not None:
            y_sym[a:b] = np.round(np.clip(y[a:b] - mu, -(2**30), 2**30))  # escapes refuse beyond 2**24
            if written is not None:
                written(k, y_sym)
        y_hat[a:b] = mu + y_sym[a:b]
        if not k:
            _, lrp = _slice_inputs(bundle, mu_h, k, priors, single_thread)
        y_hat[a:b] = _row_bands(bundle, f"slice_lrp{k}", single_thread, h, band, Y_MARGIN, 1, 1,
                                **lrp, y_upto=y_hat[None, :b])
        del mean, lrp  # a large image holds one slice's prior at a time
    return y_hat


def _y_band(mu_h: np.ndarray) -> int:
    """Rows of latents per band of the slice graphs. An image that runs whole takes each in one run:
    its tensors are smaller than one band of a large image's, and kodim23's two bands cost a run's
    overhead and the margins' rows again (about 1 ms of a decode, a one-off timeline probe, onic
    0.9.1's round)."""
    h, w = mu_h.shape[1:]
    return h if whole(h * LATENT, w * LATENT) else Y_BAND


def slice_prior(bundle: Bundle, mu_h: np.ndarray, k: int, single_thread: bool = False) -> np.ndarray | None:
    """slice_priorK's output (C', h, w): the μ_h part of slice k's networks' first convolutions,
    slice_meanK's channels then slice_lrpK's; None for a bundle without it (onic 0.10 and earlier),
    whose slice networks read μ_h themselves."""
    if not bundle.slice_prior:
        return None
    return _row_bands(bundle, f"slice_prior{k}", single_thread, mu_h.shape[1], _y_band(mu_h), Y_MARGIN, 1, 1,
                      mu_h=mu_h[None])


def _slice_inputs(bundle: Bundle, mu_h: np.ndarray, k: int, priors: dict[int, np.ndarray],
                  single_thread: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The inputs besides ŷ of slice k's mean and lrp graphs: each its channels of slice k's prior
    (taken from ``priors`` or made now), or μ_h for a bundle without slice_prior graphs."""
    prior = priors.pop(k) if k in priors else slice_prior(bundle, mu_h, k, single_thread)
    if prior is None:
        return {}, {"mu_h": mu_h[None]}
    width = prior.shape[0] // (2 if k else 1)
    return {"prior": prior[None, :width]}, {"prior": prior[None, -width:]}


def _to_uint8(x: np.ndarray, out: np.ndarray) -> None:
    """(3, h, w) float in [0, 1] → ``out`` uint8 (h, w, 3), overwriting x (the graph's own output).

    In place and plane by plane: three image-sized temporaries and a transposed copy cost a
    768×512 decode 5.5 ms after its synthesis, this about 1.5 (a one-off timeline probe, onic
    0.9.1's round). A crafted file may drive values to ±inf or NaN (silently: no warning on
    stderr): fmax and fmin take the number over a NaN, so NaN becomes 0, −inf 0 and +inf 255.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        np.multiply(x, 255, out=x)
    np.fmax(x, 0, out=x)
    np.fmin(x, 255, out=x)
    np.rint(x, out=x)
    for c in range(3):
        out[:, :, c] = x[c]


def synthesis_tiles(lh: int, lw: int, height: int, width: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The synthesis' tiles of ŷ (lh × lw latents) for a height × width image: ((r0, r1, wr0, wr1),
    (c0, c1, wc0, wc1)), each core and its window with margins, in latents; cores made only of
    stride padding are left out."""
    core, margin = TILE // LATENT, MARGIN // LATENT
    return [(r, c) for r in _spans(lh, core, margin) for c in _spans(lw, core, margin)
            if r[0] * LATENT < height and c[0] * LATENT < width]


def synthesize(bundle: Bundle, y_hat: np.ndarray, inv_gain: np.ndarray, height: int, width: int,
               workers: int = 1) -> np.ndarray:
    """ŷ (M, h, w) → uint8 (height, width, 3), tile by tile for large images."""
    m, lh, lw = y_hat.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    if whole(lh * LATENT, lw * LATENT):
        (x,) = bundle.run("decoder", y_hat=y_hat[None], inv_gain=inv_gain)
        _to_uint8(x[0, :, :height, :width], out)
        return out
    tiles = synthesis_tiles(lh, lw, height, width)
    scratches = ThreadScratch()
    cut = bundle.tile_halo if bundle.tile_halo <= MARGIN else 0  # a margin narrower than the graph's reach: no halo
    graph = TILE_GRAPH if cut else "decoder"

    def run(tile) -> None:
        (r0, r1, wr0, wr1), (c0, c1, wc0, wc1) = tile
        scratch = scratches.scratch
        # A window's side is a whole margin (skipped stage by stage) or the latents' edge, padded as
        # the whole image is (a last core may leave a margin narrower than MARGIN: it ends there)
        halo = np.array([wr0 > 0, wr1 < lh, wc0 > 0, wc1 < lw], dtype=np.int64) * (1 if cut else 0)
        x = scratch.empty("x", (1, 3, (wr1 - wr0) * LATENT - cut * int(halo[:2].sum()),
                                (wc1 - wc0) * LATENT - cut * int(halo[2:].sum())))
        inputs = {"halo": halo} if cut else {}
        bundle.run_into(graph, x, y_hat=scratch.copy("y_hat", y_hat[None, :, wr0:wr1, wc0:wc1]),
                        inv_gain=inv_gain, single_thread=parallel, **inputs)
        top, left = (r0 - wr0) * LATENT - cut * int(halo[0]), (c0 - wc0) * LATENT - cut * int(halo[2])
        rows = min(r1 * LATENT, height) - r0 * LATENT
        cols = min(c1 * LATENT, width) - c0 * LATENT
        _to_uint8(x[0, :, top : top + rows, left : left + cols],
                  out[r0 * LATENT : r0 * LATENT + rows, c0 * LATENT : c0 * LATENT + cols])

    parallel = _parallel(workers, len(tiles))
    each(run, tiles, workers if parallel else 1)
    bundle.release(graph, parallel)
    return out
