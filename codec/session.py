"""A model bundle on disk and the onnxruntime sessions that run it.

A bundle is a folder holding analysis.onnx, hyper_encoder.onnx,
hyper_decoder.onnx, decoder.onnx, tables.npz, scale_path.npz and
manifest.json (written by ``python -m export.bundle``); a channel-conditional
model adds slice_meanK.onnx and slice_lrpK.onnx per slice, and (onic 0.11.0 on)
slice_priorK.onnx, the part of them that reads μ_h (export/bundle.py). Its model id, the
first 16 hex digits of a hash over the files' SHA-256 sums, is stamped into
every .onic file so that a file is never decoded with the wrong tables.
Files only the encoder uses and that never change a decoded symbol
(synthesis_grad.onnx, for refinement) are listed apart, as encoder_files:
hashed and checked as well, but outside the model id, so adding one to a
bundle keeps its files decoding. So are tile_files (decoder_tiles.onnx, from onic
0.12.0): the decoder graph with a ``halo`` input that lets a large image's tiles
skip their margins' wasted work (export/halo.py), the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from codec import intscale, profile
from codec.bitstream import OnicError
from codec.entropy import TableSet
from codec.threads import MAX_THREADS, cores, counted

DEFAULT_BUNDLE = Path(__file__).parent / "models" / "default"
# Default models of earlier releases, so that a file of one of them names the onic that decodes it.
# 0.7.0 to 0.14.0 decoded each other's files (re-exports of one encoder and entropy model); each
# is named here by the last release whose default it was.
RELEASED_MODELS = {"7895250cf0f9464f": "0.17.0", "89d8131d6e1d7e99": "0.16.0", "31341257384d06f6": "0.15.0",
                   "655db73d43788480": "0.14.0", "d9f1c4fad79f3113": "0.10.0", "818c8985caca739a": "0.9.3",
                   "f4e0675b7619d90d": "0.8.0", "4a3671d07ed71d8b": "0.7.0", "c764899c3e2f711d": "0.6.0",
                   "67f86249e7217281": "0.5.0", "f6f2a403243faf67": "0.4.0", "437f2d1a68bffa42": "0.3.0",
                   "e3793b0615dd771e": "0.2.0", "8f88facf8bfd2f24": "0.1.0"}
GRAPHS = ("analysis", "hyper_encoder", "hyper_decoder", "decoder")
GRADIENT_GRAPH = "synthesis_grad"  # encoder-only: the synthesis' gradient that refinement runs (codec/refine.py)
INT8_ANALYSIS = "analysis_int8"  # encoder-only: an int8 analysis for photographs (export/analysis_int8.py)
# Graphs run without onnxruntime's memory pattern (one block planned for all of a run's tensors):
# the synthesis gradient keeps every activation for its backward pass, and at 768×512 (one-off
# probe) the plan took 334 MiB against 177 without it, at the same 185 ms (without the arena as
# well: 268–282 ms).
NO_MEMORY_PATTERN = frozenset({GRADIENT_GRAPH})
PIXEL_INPUTS = frozenset({"x", "weight"})  # graph inputs at pixel resolution; the rest are latents
PIXELS_PER_LATENT = 16
TILE_GRAPH = "decoder_tiles"  # the decoder graph with the halo input, for tiles (export/halo.py)


MAX_CHANNELS = 4096  # N and M a manifest may give: latents are sized from them before any graph runs


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


class Bundle:
    """Graphs, tables and manifest of one model; sessions are created on first use and reused."""

    def __init__(self, path: str | os.PathLike = DEFAULT_BUNDLE, threads: int = 0, verify: bool = True,
                 optimization: str = "all", tile_workers: int = 0, float_analysis: bool = False):
        self.path = Path(path)
        if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= MAX_THREADS:
            raise OnicError(f"threads must be 0 (every core) to {MAX_THREADS}, got {threads!r}")
        # Encode with analysis.onnx even where the bundle has an int8 analysis graph.
        self.float_analysis = float_analysis
        # onnxruntime's threads per graph; 0 = one per core this process may use (threads.cores). With
        # one, a decode or an encode runs on the calling thread alone: its two chains (codec/api.py)
        # in turn (README, onic 0.14.0: kodim23 under `taskset -c 0` decodes faster so).
        self.threads = threads or cores()
        self._asked_threads = threads
        # Threads for the tiles of the synthesis and the bands of the integer path of large images;
        # 0 = one per thread above, up to 4 (each tile's graph then runs on one thread: 12 MP decode
        # 3.22 → 2.71 s on 2 cores, benchmarks/speed.py --tile-workers; more workers hold more tiles
        # in memory at once).
        self.tile_workers = tile_workers or min(4, self.threads)
        self.optimization = optimization  # onnxruntime graph optimization: disable, basic, extended, all
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise OnicError(f"cannot read model bundle at {self.path}: {e}") from None
        self._check_manifest()
        if verify:
            self._verify()
        self.model_id: str = self.manifest["model_id"]
        # Earlier exports of the same weights and tables (export.bundle --supersedes): same symbols.
        self.decodes: frozenset[str] = frozenset([self.model_id, *self.manifest.get("also_decodes", [])])
        self.stride: int = int(self.manifest["stride"])
        self._lock = threading.Lock()
        self._sessions: dict = {}

    def _check_manifest(self) -> None:
        """The manifest's fields that the runtime reads, with the types it reads them as, before any
        is used (with or without ``verify``): one clear line for a damaged bundle, never a traceback."""
        m = self.manifest

        def damaged(what: str) -> OnicError:
            return OnicError(f"model bundle {self.path} is damaged: manifest {what}")

        if not isinstance(m, dict):
            raise damaged("is not a JSON object")
        if not isinstance(m.get("files"), dict):
            raise damaged("has no files")
        for key in ("files", "encoder_files", "tile_files"):
            listed = m.get(key, {})
            if not isinstance(listed, dict) or not all(isinstance(d, str) for d in listed.values()):
                raise damaged(f"{key} must map file names to SHA-256 digests")
            # Plain names in the bundle's folder: a listed path never reads outside it.
            if any(not _plain_name(name) for name in listed):
                raise damaged(f"{key} lists a name that is not a file of the bundle's folder")
        missing = [f for f in (*(f"{g}.onnx" for g in GRAPHS), "tables.npz", "scale_path.npz") if f not in m["files"]]
        if missing:  # every file the runtime reads is hash-checked: none may go unlisted
            raise damaged(f"files does not list {', '.join(missing)}")
        if not isinstance(m.get("model_id"), str):
            raise damaged("model_id must be a string")
        also = m.get("also_decodes", [])
        if not isinstance(also, list) or not all(isinstance(i, str) for i in also):
            raise damaged("also_decodes must be a list of model ids")
        stride = m.get("stride")
        if not _whole(stride) or stride <= 0 or stride % PIXELS_PER_LATENT:
            raise damaged(f"stride must be a positive multiple of {PIXELS_PER_LATENT}")
        config = m.get("config")
        if not isinstance(config, dict) or not all(_whole(config.get(k)) and 0 < config[k] <= MAX_CHANNELS
                                                   for k in ("N", "M")):
            raise damaged(f"config must give N and M, whole numbers from 1 to {MAX_CHANNELS}")

    def _verify(self) -> None:
        files = self.manifest.get("files", {})
        optional = {**self.manifest.get("encoder_files", {}), **self.manifest.get("tile_files", {})}
        for name, digest in {**files, **optional}.items():
            try:
                data = (self.path / name).read_bytes()
            except OSError as e:
                if name in optional:
                    continue  # left out of a copy: decoding and plain coding need none of them
                raise OnicError(f"model bundle {self.path} is damaged: cannot read {name} ({e.strerror})") from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise OnicError(f"model bundle {self.path} is damaged: {name} does not match its hash")
        model_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        if model_id != self.manifest.get("model_id"):
            raise OnicError(f"model bundle {self.path} is damaged: manifest model id does not match its files")

    @cached_property
    def _tables(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "tables.npz") as d:
            return {k: d[k] for k in d.files}

    @cached_property
    def z_tables(self) -> TableSet:
        t = self._tables
        return TableSet(t["z_values"], t["z_starts"], t["z_offsets"])

    @cached_property
    def y_tables(self) -> TableSet:
        t = self._tables
        lengths = np.diff(t["y_starts"])
        return TableSet(t["y_values"], t["y_starts"], -(lengths - 1) // 2)

    @cached_property
    def _scale_path(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "scale_path.npz") as d:
            p = {k: d[k] for k in d.files}
        if int(p["version"]) != intscale.INDEX_PATH_VERSION:
            raise OnicError(f"model bundle {self.path} has integer scale path version {int(p['version'])}, "
                            f"this onic runs version {intscale.INDEX_PATH_VERSION}")
        return p

    def gains(self, quality: int) -> tuple[np.ndarray, np.ndarray]:
        """Gain and inverse gain (1, M, 1, 1) for quality 0–100 (Cui et al. 2021, eq. 6).

        Quality maps linearly onto ladder positions [position_floor, rungs − 1].
        """
        lg, lig = self._tables["log_gain"], self._tables["log_inv_gain"]
        i, w = self._position(quality)
        gain = np.exp(lg[i] * (1 - w) + lg[i + 1] * w).astype(np.float32)
        inv = np.exp(lig[i] * (1 - w) + lig[i + 1] * w).astype(np.float32)
        return gain.reshape(1, -1, 1, 1), inv.reshape(1, -1, 1, 1)

    def lam(self, quality: int) -> float:
        """λ of quality 0–100, interpolated as the gains are: the rate-distortion trade-off that the
        model was trained for there (bits per pixel + λ·MSE of 8-bit pixels)."""
        lams = np.log(self._tables["lambdas"].astype(np.float64))
        i, w = self._position(quality)
        return float(np.exp(lams[i] * (1 - w) + lams[i + 1] * w))

    def _position(self, quality: int) -> tuple[int, float]:
        """The ladder rung below quality's position and the weight of the rung above it."""
        rungs = self._tables["log_gain"].shape[0]
        floor = float(self._tables.get("position_floor", 0.0))
        t = floor + min(max(quality, 0), 100) / 100 * (rungs - 1 - floor)
        i = min(int(np.floor(t)), rungs - 2)
        return i, t - i

    @property
    def scale_table(self) -> np.ndarray:
        """σ of each scale-table index (float32)."""
        return self._tables["scale_table"]

    @property
    def has_gradient(self) -> bool:
        """Whether the bundle has the synthesis' gradient graph that refinement runs (codec/refine.py)."""
        return self._has_encoder_file(GRADIENT_GRAPH)

    def _has_encoder_file(self, graph: str) -> bool:
        """Whether the manifest lists ``graph``'s file under encoder_files and the copy has it (one left
        out of a copy only turns its use off)."""
        name = f"{graph}.onnx"
        return name in self.manifest.get("encoder_files", {}) and (self.path / name).is_file()

    @property
    def analysis_graph(self) -> str:
        """The analysis an encoder runs: the bundle's int8 graph where it lists one (export/analysis_int8.py:
        the same inputs and output; +0.45% BD-rate on Kodak, but several dB lost on flat synthetic
        images, so no bundle the repo builds has one) unless ``float_analysis``."""
        return INT8_ANALYSIS if not self.float_analysis and self._has_encoder_file(INT8_ANALYSIS) else "analysis"

    @cached_property
    def tile_halo(self) -> int:
        """Pixels that decoder_tiles.onnx cuts from each side of a tile flagged in its ``halo`` input
        (export/halo.py); 0 where the bundle has no such graph, whose tiles run decoder.onnx."""
        name = f"{TILE_GRAPH}.onnx"
        halo = self.manifest.get("decoder_halo")
        if name not in self.manifest.get("tile_files", {}) or not (self.path / name).is_file():
            return 0
        if not _whole(halo) or halo <= 0:
            raise OnicError(f"model bundle {self.path} is damaged: decoder_halo must be a positive whole number")
        return halo

    @property
    def has_z_gains(self) -> bool:
        """Whether the model has gain units on z (Cui et al. 2021; CompressAI's GainHyperLatentCodec)."""
        return "z_gain" in self._tables

    def z_gains(self, quality: int) -> tuple[np.ndarray, np.ndarray]:
        """Gain on z (1, N, 1, 1) float32 and integer inverse gain on ẑ (N,) int64 for quality 0–100.

        Both are tables of the bundle, one row per quality, so that the decoder
        never computes them: the inverse gain enters the integer scale path.
        Only for bundles with ``has_z_gains``.
        """
        q = min(max(int(quality), 0), 100)
        t = self._tables
        return t["z_gain"][q].reshape(1, -1, 1, 1).astype(np.float32), t["z_inv_gain_q"][q].astype(np.int64)

    def hyper_input(self, z_sym: np.ndarray, quality: int) -> np.ndarray:
        """What h_s sees: ẑ (N, h, w) float32, times the inverse gain on z where the model has one."""
        z = z_sym.astype(np.float32)
        if self.has_z_gains:
            _, z_inv = self.z_gains(quality)
            z *= (z_inv.astype(np.float32) / (1 << intscale.Z_INV_BITS)).reshape(-1, 1, 1)
        return z

    def scale_indexes(self, z_sym: np.ndarray, quality: int) -> np.ndarray:
        """Scale-table index per element of y from the ẑ symbols (N, h, w), by the integer path.

        The float hyper decoder's σ would pick the smallest table scale ≥ σ
        (CompressAI's build_indexes); the integer path approximates that
        choice and, unlike σ, is the same on every machine.
        """
        with profile.stage("integer scale path"), _blas_single_thread():
            z_inv = self.z_gains(quality)[1] if self.has_z_gains else None
            return intscale.indexes(z_sym, self._scale_path, z_inv, workers=self.tile_workers)

    @cached_property
    def slices(self) -> list[tuple[int, int]]:
        """[a_k, b_k) channels of y per slice of a channel-conditional model; [] for the plain hyperprior."""
        return intscale.slice_bounds(self._scale_path) if "slices" in self._scale_path else []

    @property
    def slice_prior(self) -> bool:
        """Whether the slice networks take their μ_h part from slice_priorK.onnx (bundles of onic 0.11.0 on)."""
        return "slice_prior0.onnx" in self.manifest.get("files", {})

    def scale_state(self, z_sym: np.ndarray, quality: int,
                    shared: intscale.SharedHyperState | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What every slice's integer scale path starts from (channel-conditional models); from
        ``shared`` (shared_scale_state of the same ẑ) where another thread may help make it."""
        with profile.stage("integer scale path"), _blas_single_thread():
            if shared is not None:
                return shared.result()
            return intscale.hyper_state(z_sym, self._scale_path, self._z_inv(quality), workers=self.tile_workers)

    def shared_scale_state(self, z_sym: np.ndarray, quality: int) -> intscale.SharedHyperState:
        """scale_state's work for an image that runs whole, in parts a second thread can take (help())."""
        return intscale.SharedHyperState(z_sym, self._scale_path, self._z_inv(quality))

    def _z_inv(self, quality: int) -> np.ndarray | None:
        return self.z_gains(quality)[1] if self.has_z_gains else None

    def slice_indexes(self, k: int, state: tuple[np.ndarray, np.ndarray], y_sym: np.ndarray) -> np.ndarray:
        """Scale-table indexes of slice k from the state and the symbols of the earlier slices."""
        with profile.stage("integer scale path"), _blas_single_thread():
            return intscale.slice_indexes(k, state, y_sym, self._scale_path, workers=self.tile_workers)

    def check_decodes(self, model_id: str) -> None:
        """Refuse a file of another model in one line, naming the release whose default model it is."""
        if model_id in self.decodes:
            return
        release = RELEASED_MODELS.get(model_id)
        hint = f" (the default model of onic {release}: decode it with that release)" if release else ""
        raise OnicError(f"model id mismatch: the file needs model {model_id}{hint}, this onic has {self.model_id}")

    def session(self, graph: str, single_thread: bool = False):
        with self._lock:
            single_thread = single_thread or self.threads == 1  # one session, not two alike
            key = (graph, single_thread)
            if key not in self._sessions:
                self._sessions[key] = self._make_session(graph, 1 if single_thread else self.threads)
            return self._sessions[key]

    def _make_session(self, graph: str, threads: int):
        import onnxruntime as ort  # imported here so that reading headers stays light

        opts = ort.SessionOptions()
        # A count of our own: onnxruntime's default, a thread per physical core of the machine, pins
        # each thread to a core, so it ignores a CPU quota and escapes taskset (README, onic 0.14.0),
        # and in a container whose cpuset lacks the cores it picked, the pinning fails. Where cores()
        # cannot count physical cores (macOS, Windows), its default stays.
        if threads == 1 or self._asked_threads or counted():
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Workers spin between the operators of a run but stop when it returns: parked workers woke
        # too late to help on this 2-core VM, while workers left spinning after a run steal a core
        # from whatever runs next (the other graphs' pools, the integer path).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        if graph in NO_MEMORY_PATTERN:
            opts.enable_mem_pattern = False
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        return ort.InferenceSession(str(self.path / f"{graph}.onnx"), opts, providers=["CPUExecutionProvider"])

    def run(self, graph: str, *, single_thread: bool = False, **inputs: np.ndarray) -> list[np.ndarray]:
        """Run a graph; ``single_thread`` when the caller runs several at once (tiles on threads)."""
        session = self.session(graph, single_thread)
        with profile.stage(f"onnx {graph}"):
            return session.run(None, inputs)

    def run_into(self, graph: str, out: np.ndarray, *, single_thread: bool = False, **inputs: np.ndarray) -> None:
        """Run a one-output graph into ``out``, C-contiguous and of the output's exact shape and dtype.

        The band and tile loops of a large image hand each run the same buffers, so that nothing
        image-sized is allocated per run; inputs must be C-contiguous too.
        """
        session = self.session(graph, single_thread)
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(session.get_outputs()[0].name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        with profile.stage(f"onnx {graph}"):
            session.run_with_iobinding(binding)

    def release(self, graph: str, single_thread: bool = False) -> None:
        """Give a session's memory arena back once a large image's tiles or bands of it are done.

        Each session keeps the arena of its largest run, and a large image's round trip
        holds a dozen of them: with the full-size model, a 50 MP round trip peaked at
        2.9 GB. onnxruntime shrinks an arena only at the end of a run asked to, and
        asking on every tile re-faults its pages on the next one, so one run on a
        1-latent input asks instead (under a millisecond per graph, full-size model).
        """
        session = self._sessions.get((graph, single_thread))
        if session is None:
            return
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        tiny = {i.name: np.zeros([d if isinstance(d, int) else PIXELS_PER_LATENT if i.name in PIXEL_INPUTS else 1
                                  for d in i.shape], dtype=np.int64 if i.type == "tensor(int64)" else np.float32)
                for i in session.get_inputs()}  # int64: decoder_tiles' halo
        session.run(None, tiny, options)


_blas_controller = None


def _blas_single_thread():
    """A context that keeps BLAS (the integer path's float64 products) on the calling thread.

    OpenBLAS's own workers busy-wait after each product and then fight
    onnxruntime's threads for the cores; the integer path's products are
    small enough that one thread loses little. The limit is process-wide, so
    concurrent decodes may see it lifted early: that changes speed, never the
    result (the products are exact in any order).
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController  # a few ms, paid on the first decode only

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


_default: Bundle | None = None
_default_lock = threading.Lock()


def default_bundle() -> Bundle:
    """The shipped model, loaded once per process."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Bundle(DEFAULT_BUNDLE)
        return _default


_loaded: dict[tuple[str, int], Bundle] = {}
_loaded_lock = threading.Lock()


def bundle_at(path: str | os.PathLike | None, threads: int = 0) -> Bundle:
    """The model bundle in a folder (None: the shipped one), loaded once per process and thread count.

    ``threads``: as Bundle's, the threads a decode or an encode with it uses; 0 = every core.
    """
    if path is None and not threads:
        return default_bundle()
    folder = os.path.realpath(DEFAULT_BUNDLE if path is None else path)
    with _loaded_lock:
        if (folder, threads) not in _loaded:
            if not Path(folder, "manifest.json").is_file():
                raise OnicError(f"no model bundle at {path} (a folder with manifest.json, made by export.bundle)")
            _loaded[folder, threads] = Bundle(folder, threads=threads)
        return _loaded[folder, threads]
