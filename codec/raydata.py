"""Code a whole collection on a Ray cluster: Ray Data spreads the files over actors.

    onic compress SRC --out-dir DST --ray [ADDRESS]
    onic decompress SRC --out-dir DST --ray [ADDRESS]
    codec.raydata.code_dataset(SRC, DST, "compress", quality=75)

SRC and DST are folders or URIs of any filesystem pyarrow reaches (a local
path, ``file://``, ``s3://``, ``gs://``, ``hdfs://``…). The files under SRC
(subfolders too) are listed once on the driver; Ray Data hands them in small
batches to a pool of actors, each holding one model session, which read
their files through pyarrow, code them and write the outputs under DST with
the same relative names (``a/b.png`` → ``a/b.onic``).

Every file gets a row in a JSONL manifest (``DST/onic-manifest.jsonl`` by
default): its status (coded, skipped, failed), output bytes, bpp, error
and warnings. A bad file is a failed row, never the end of the job. A rerun
skips outputs that already exist and verify (a valid container of this
model and quality; an image that opens at the right size), so an interrupted
job resumes where it stopped.

Needs the ``[ray]`` extra; nothing here imports torch, and the base install
does not need Ray.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.batch import DEFAULT_OUTPUT_QUALITY, IMAGE_SUFFIXES, Failure
from codec.bitstream import MAX_PIXELS, OnicError

MANIFEST = "onic-manifest.jsonl"
FIELDS = ("src", "dst", "status", "bytes", "bpp", "seconds", "error", "warnings")


@dataclass(frozen=True)
class Options:
    mode: str  # "compress" or "decompress"
    quality: int = 75
    fmt: str = "png"  # decompress: the output extension
    output_quality: int = DEFAULT_OUTPUT_QUALITY
    max_pixels: int | None = MAX_PIXELS
    model_files: dict[str, bytes] | None = field(default=None, repr=False)  # a bundle, shipped to every actor


@dataclass
class Summary:
    files: int
    coded: int
    skipped: int
    failed: int
    seconds: float  # the job, from Ray being up to the manifest written
    manifest: str

    @property
    def images_per_second(self) -> float:
        return self.coded / self.seconds if self.seconds else 0.0


def filesystem(uri: str):
    """(pyarrow filesystem, path in it) for a local path or a URI."""
    import pyarrow.fs

    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pyarrow.fs.FileSystem.from_uri(uri)


def list_inputs(src: str, mode: str) -> list[str]:
    """Relative POSIX names of the files under ``src`` that ``mode`` codes, sorted."""
    import pyarrow.fs

    fs, root = filesystem(src)
    suffixes = IMAGE_SUFFIXES if mode == "compress" else {".onic"}
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    names = [posixpath.relpath(i.path, root) for i in infos if i.type == pyarrow.fs.FileType.File]
    return sorted(n for n in names if posixpath.splitext(n)[1].lower() in suffixes
                  and not posixpath.basename(n).startswith(".onic-"))


def output_name(name: str, mode: str, fmt: str) -> str:
    return posixpath.splitext(name)[0] + (".onic" if mode == "compress" else "." + fmt)


class Coder:
    """One Ray actor: a model session, reused for every batch of files it gets."""

    def __init__(self, src: str, dst: str, options: Options):
        from codec.session import DEFAULT_BUNDLE, Bundle

        self.src_fs, self.src_root = filesystem(src)
        self.dst_fs, self.dst_root = filesystem(dst)
        self.options = options
        if options.model_files:
            folder = Path(tempfile.mkdtemp(prefix="onic-model-"))
            for name, data in options.model_files.items():
                (folder / name).write_bytes(data)
            self.bundle = Bundle(folder, threads=1)
        else:
            self.bundle = Bundle(DEFAULT_BUNDLE, threads=1)  # one core per actor: Ray counts them

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.code(str(s), str(d)) for s, d in zip(batch["src"], batch["dst"], strict=True)]
        return {k: np.array([r[k] for r in rows], dtype=object) for k in FIELDS}

    def code(self, src: str, dst: str) -> dict:
        t0 = time.perf_counter()
        row = {"src": src, "dst": dst, "status": "failed", "bytes": 0, "bpp": 0.0, "seconds": 0.0, "error": "",
               "warnings": ""}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                done = self._verified(src, dst)
                if done is not None:
                    row.update(status="skipped", bytes=done[0], bpp=done[1])
                else:
                    data, bpp = self._code(self._read(self.src_fs, self.src_root, src))
                    self._write(dst, data)
                    row.update(status="coded", bytes=len(data), bpp=bpp)
            except (OnicError, Failure, OSError, ValueError) as e:
                row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            except MemoryError:
                row["error"] = "out of memory"
            except Exception as e:  # a bug still only fails this file
                row["error"] = f"internal error: {type(e).__name__}: {e}"
        row["warnings"] = "; ".join(str(w.message) for w in caught if w.category.__name__ == "OnicWarning")
        row["seconds"] = round(time.perf_counter() - t0, 4)
        return row

    def _read(self, fs, root: str, name: str) -> bytes:
        with fs.open_input_stream(posixpath.join(root, name)) as f:
            return f.read()

    def _code(self, data: bytes) -> tuple[bytes, float]:
        from codec import api

        o = self.options
        if o.mode == "compress":
            image = api._to_image(io.BytesIO(data), o.max_pixels, name="input")
            out = api.compress(image, o.quality, self.bundle, o.max_pixels)
            return out, 8 * len(out) / (image.width * image.height)
        from codec.batch import output_format, save_options

        fmt = output_format("x." + o.fmt)
        image = api.decompress(data, self.bundle, max_pixels=o.max_pixels)
        kwargs = save_options(image, fmt, o.output_quality, "." + o.fmt)
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        return buf.getvalue(), 8 * len(data) / (image.width * image.height)

    def _verified(self, src: str, dst: str) -> tuple[int, float] | None:
        """(bytes, bpp) of an existing output that is complete and right, else None."""
        import pyarrow.fs

        path = posixpath.join(self.dst_root, dst)
        if self.dst_fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        data = self._read(self.dst_fs, self.dst_root, dst)
        try:
            if self.options.mode == "compress":
                from codec import bitstream

                h = bitstream.unpack(data, self.options.max_pixels).header
                if h.model_id not in self.bundle.decodes or h.quality != self.options.quality:
                    return None
                return len(data), 8 * len(data) / (h.width * h.height)
            from PIL import Image

            from codec import bitstream

            source = posixpath.join(self.src_root, src)
            with self.src_fs.open_input_stream(source) as f:
                h = bitstream.parse_header(f.read(bitstream.HEADER.size), self.options.max_pixels)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.size != (h.width, h.height):
                    return None
            return len(data), 8 * self.src_fs.get_file_info(source).size / (h.width * h.height)
        except Exception:  # anything unreadable is redone
            return None

    def _write(self, name: str, data: bytes) -> None:
        """Whole files only: through a temporary name and a move where the filesystem has one."""
        path = posixpath.join(self.dst_root, name)
        self.dst_fs.create_dir(posixpath.dirname(path), recursive=True)
        if self.dst_fs.type_name != "local":  # an object store's PUT is already all-or-nothing
            with self.dst_fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = posixpath.join(posixpath.dirname(path), f".onic-{uuid.uuid4().hex}.tmp")
        try:
            with self.dst_fs.open_output_stream(tmp) as f:
                f.write(data)
            self.dst_fs.move(tmp, path)
        finally:
            import pyarrow.fs

            if self.dst_fs.get_file_info(tmp).type != pyarrow.fs.FileType.NotFound:
                self.dst_fs.delete_file(tmp)


def _model_files(model: str | os.PathLike | None) -> dict[str, bytes] | None:
    """A bundle folder's files, so that actors on other machines get the very same model."""
    if model is None:
        return None
    from codec.session import bundle_at

    bundle = bundle_at(model)  # validates it here, on the driver, before any work
    return {p.name: p.read_bytes() for p in sorted(bundle.path.iterdir()) if p.is_file()}


def _start_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.ERROR)  # the manifest and the summary are the report
    kwargs = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if address in (None, "", "local"):
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)


def code_dataset(src: str, dst: str, mode: str = "compress", *, quality: int = 75, fmt: str = "png",
                 output_quality: int = DEFAULT_OUTPUT_QUALITY, model: str | os.PathLike | None = None,
                 max_pixels: int | None = MAX_PIXELS, address: str | None = None, concurrency: int | None = None,
                 batch_size: int = 4, manifest: str | None = None) -> Summary:
    """Compress (or decompress) every file under ``src`` into ``dst`` on Ray; returns the counts.

    ``address``: a Ray cluster ("auto", "ray://host:10001"); None starts or joins a
    local instance. ``concurrency``: actors (default: one per CPU of the cluster).
    ``manifest``: where the JSONL manifest goes (default ``DST/onic-manifest.jsonl``).
    """
    if mode not in ("compress", "decompress"):
        raise ValueError(f"mode must be 'compress' or 'decompress', not {mode!r}")
    import ray
    import ray.data

    options = Options(mode, quality, fmt.lstrip(".").lower(), output_quality, max_pixels, _model_files(model))
    names = list_inputs(src, mode)
    rows: list[dict] = []
    plan: list[dict] = []
    by_output: dict[str, list[str]] = {}
    for n in names:
        by_output.setdefault(output_name(n, mode, options.fmt), []).append(n)
    for out, sources in by_output.items():
        if len(sources) == 1:
            plan.append({"src": sources[0], "dst": out})
        else:  # a.png and a.jpg would both write a.onic: neither is coded
            for s in sources:
                rows.append({"src": s, "dst": out, "status": "failed", "bytes": 0, "bpp": 0.0, "seconds": 0.0,
                             "error": f"{' and '.join(sources)} would all write {out}", "warnings": ""})
    _start_ray(address)
    t0 = time.perf_counter()  # the job's own time: a cluster is usually up already
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data"):  # the manifest and the summary are the report; Ray's own logs go to its files
        logging.getLogger(name).setLevel(logging.ERROR)
    if plan:
        actors = concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = _map(ray.data.from_items(plan), Coder, fn_constructor_args=(src, dst, options), batch_size=batch_size,
                  batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=min(actors, len(plan))), num_cpus=1)
        rows += [{k: _plain(r[k]) for k in FIELDS} for r in ds.iter_rows()]
    rows.sort(key=lambda r: r["src"])
    where = manifest or posixpath.join(dst if "://" in dst else os.path.abspath(dst), MANIFEST)
    _write_manifest(where, rows)
    count = {s: sum(r["status"] == s for r in rows) for s in ("coded", "skipped", "failed")}
    return Summary(len(rows), count["coded"], count["skipped"], count["failed"], time.perf_counter() - t0, where)


def _map(ds, fn, **kwargs):
    """``ds.map_batches`` with actors that are not restarted: a file that kills one fails the job
    plainly rather than being retried, and Ray does not warn that restarts would need the
    constructor's arguments (which it keeps in the object store)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ray_remote_args_fn, deprecated in Ray 2.5x
            return ds.map_batches(fn, ray_remote_args_fn=lambda: {"max_restarts": 0}, **kwargs)
    except TypeError:  # a Ray without it
        return ds.map_batches(fn, **kwargs)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _write_manifest(uri: str, rows: list[dict]) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())


def read_manifest(uri: str) -> list[dict]:
    """The rows of a manifest written by ``code_dataset``."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


__all__ = ["MANIFEST", "Summary", "code_dataset", "list_inputs", "read_manifest"]
