"""The ``onic`` command line.

Exit codes: 0 success; 1 some files of a batch failed (the rest were done);
2 bad usage or bad input (an unreadable image, a malformed .onic file, an
output that exists without --force, an unwritable output) and internal
errors; 130 interrupted (Ctrl-C), 128 + N on signal N (SIGTERM, SIGHUP);
141 when stdout's reader went away (``onic info x | head -1``), quietly.
Errors are one line on stderr (--debug adds the traceback of an internal
error); stdout carries only data ('-' outputs) and what a command is asked
to print.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from codec import __version__
from codec.batch import (
    DEFAULT_OUTPUT_QUALITY,
    IMAGE_SUFFIXES,
    MAX_REFINE_STEPS,
    STDIO,
    Failure,
    Job,
    Result,
    compress_file,
    decompress_file,
    display,
    expand_inputs,
    output_format,
    read_onic,
    remove_temporaries,
)
from codec.bitstream import MAX_PIXELS, reason
from codec.threads import MAX_THREADS, cores

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
SAMPLE = Path(__file__).parent / "samples" / "parrots.png"
_debug = False  # set by `onic --debug`


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised so that cleanup (temporary files) runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


def _fail(message: str) -> None:
    click.echo(f"onic: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _guarded(fn: Callable[[], None]) -> None:
    """Run a command body; every expected failure becomes one line on stderr and exit 2."""
    from codec.bitstream import OnicError

    try:
        fn()
    except (OnicError, Failure) as e:
        _fail(str(e))
    except BrokenPipeError:
        raise
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except MemoryError:
        _fail("out of memory")


def _quiet_broken_pipe() -> None:
    """stdout's reader is gone: send the rest (and the interpreter's final flush) to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # not a real file descriptor (tests); nothing will be flushed to it
    sys.exit(EXIT_BROKEN_PIPE)


class OnicGroup(click.Group):
    """click's group, with every failure as one line and defined exit codes (see the module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                previous[sig] = signal.signal(sig, _raise_terminated)
            except (ValueError, OSError):  # not the main thread
                pass
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            sys.exit(EXIT_BAD_INPUT)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if getattr(e, "ctx", None) else ""
            click.echo(f"onic: error: {e.format_message()}{hint}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (click.Abort, KeyboardInterrupt):
            click.echo("onic: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("onic: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Terminated as e:
            sys.exit(128 + e.signum)
        except BrokenPipeError:
            _quiet_broken_pipe()
        except MemoryError:
            _fail("out of memory")
        except Exception as e:  # a bug: one line, the traceback only when asked for
            signal_error = _interruption(e)
            if isinstance(signal_error, Terminated):
                sys.exit(128 + signal_error.signum)
            if signal_error is not None:
                click.echo("onic: interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            if _debug:
                traceback.print_exc()
            hint = "" if _debug else " (onic --debug shows the traceback)"
            _fail(f"internal error: {type(e).__name__}: {e}{hint}")


def _interruption(e: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or Terminated that ``e`` was raised in the handling of, if any. A signal
    that lands inside a library's lock code can leave it failing its own cleanup: Ctrl-C during a
    --jobs 2 batch, blocked in concurrent.futures' Condition.wait as it took its lock back, surfaced
    as "RuntimeError: cannot release un-acquired lock" (an internal error, exit 2, not 130)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _a_number(ctx, param, value: float | None) -> float | None:
    """click's FloatRange lets NaN through (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter("nan is not a number")
    return value


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _plan(inputs: tuple[str, ...], output: str | None, out_dir: str | None, suffix: str,
          input_suffixes: set[str]) -> list[tuple[str, str]]:
    """(source, destination) pairs, checked as a whole before any work, or a usage error."""
    sources = expand_inputs(inputs, input_suffixes)
    if not sources:
        raise click.UsageError("no input files")
    if STDIO in sources and len(sources) > 1:
        raise click.UsageError("'-' (stdin) must be the only input")
    if output and out_dir:
        raise click.UsageError("give -o/--output or --out-dir, not both")
    if output and len(sources) > 1:
        raise click.UsageError("-o/--output takes one input; use --out-dir for several")
    if output:
        plan = [(sources[0], output)]
    elif out_dir:
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise click.UsageError(f"--out-dir {out_dir} is a file, not a folder")
        stems = [Path(s).stem if s != STDIO else "stdin" for s in sources]
        plan = [(s, str(Path(out_dir) / (stem + suffix))) for s, stem in zip(sources, stems, strict=True)]
    else:
        plan = [(s, STDIO if s == STDIO else str(Path(s).with_suffix(suffix))) for s in sources]
    seen: dict[str, str] = {}
    for src, dst in plan:
        if dst == STDIO:
            continue
        if src != STDIO and _same_file(src, dst):
            raise click.UsageError(f"{dst} is also the input: refusing to overwrite it")
        key = os.path.normcase(os.path.abspath(dst))
        if key in seen:  # a.png and a.jpg both make a.onic: refuse rather than keep one silently
            raise click.UsageError(f"{seen[key]} and {src} would both write {dst}")
        seen[key] = src
    if out_dir:
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.UsageError(f"cannot create --out-dir {out_dir}: {e.strerror or e}") from None
    return plan


def _run_batch(worker: Callable[[Job], Result], jobs: list[Job], processes: int, quiet: bool) -> None:
    """Run jobs (in processes when asked), report as they finish, exit 0 / 1 (some failed) / 2 (single failure)."""
    failures = 0
    single = len(jobs) == 1
    processes = processes or cores()
    _share_cores(jobs, processes)

    def report(r: Result) -> None:
        nonlocal failures
        if not quiet:
            for w in r.warnings:
                click.echo(f"onic: warning: {r.src}: {w}", err=True)
        if not r.ok:
            failures += 1
            click.echo(f"onic: error: {r.message}" if single else f"onic: error: {r.src}: {r.message}", err=True)
        elif r.data is not None:
            sys.stdout.buffer.write(r.data)
            sys.stdout.buffer.flush()
        elif r.message:
            click.echo(r.message, err=True)

    show_bar = not quiet and not single and sys.stderr.isatty()
    with click.progressbar(length=len(jobs), file=sys.stderr, label="onic") if show_bar else _NoBar() as bar:
        if processes > 1 and not single:
            _run_pool(worker, jobs, processes, lambda r: (report(r), bar.update(1)))
        else:
            for job in jobs:
                report(worker(job))
                bar.update(1)
    if failures:
        if not single:
            click.echo(f"onic: {failures} of {len(jobs)} files failed", err=True)
        sys.exit(EXIT_BAD_INPUT if single else EXIT_SOME_FAILED)


def _worker_signals(owner: int) -> None:
    """Workers leave interruptions to the main process: it cancels what has not started, and
    each worker finishes its file (outputs appear whole or not at all), then exits quietly.
    Their temporary files carry the main process's id (``owner``), for it to remove those of a
    worker killed mid-write."""
    from codec.batch import adopt_temporaries

    adopt_temporaries(owner)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _share_cores(jobs: list[Job], processes: int) -> None:
    """Jobs without --threads get the cores divided among the worker processes: each process's
    onnxruntime threads would otherwise take every core, and the processes fight over them and
    wait on each other's spinning workers (the 24 Kodak images with --jobs 2 on 2 cores: README,
    Command line)."""
    workers = min(processes, len(jobs))
    if workers > 1:
        share = max(1, cores() // workers)
        for job in jobs:
            job.threads = job.threads or share


def _run_pool(worker: Callable[[Job], Result], jobs: list[Job], processes: int,
              done: Callable[[Result], object]) -> None:
    """Jobs in worker processes, results in order; an interruption cancels what has not started."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=min(processes, len(jobs)), initializer=_worker_signals,
                               initargs=(os.getpid(),))
    try:
        futures = [pool.submit(worker, job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)  # every worker gone: what is left is the dead one's
                remove_temporaries({Path(j.dst).parent for j in jobs if j.dst != STDIO}, os.getpid())
                _fail(f"a worker process died (killed, or out of memory?) while coding {display(job.src)}; "
                      f"files from it on were not done")
            done(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        pass


@click.group(cls=OnicGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=__doc__.split("\n\n")[1])
@click.version_option(__version__, "--version", prog_name="onic")
@click.option("--debug", is_flag=True, envvar="ONIC_DEBUG", help="Show the traceback of an internal error.")
def main(debug: bool) -> None:
    """onic: a learned image codec (PyTorch-trained, ONNX-run)."""
    global _debug
    _debug = debug


_batch_options = [
    click.option("-o", "--output", help="Output file for a single input ('-' = stdout)."),
    click.option("--out-dir", type=click.Path(file_okay=False), help="Folder for the outputs of several inputs."),
    click.option("-j", "--jobs", type=click.IntRange(0), default=1, show_default=True,
                 help="Worker processes for several inputs; 0 = one per core."),
    click.option("--threads", type=click.IntRange(0, MAX_THREADS), default=0, show_default=True,
                 help="Threads each process codes with; 0 = every core, divided among --jobs."),
    click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
    click.option("-v", "--verbose", is_flag=True, help="One line per file on stderr."),
    click.option("--quiet", is_flag=True, help="No warnings or progress bar."),
    click.option("--model", type=click.Path(file_okay=False),
                 help="A model bundle folder (made by export.bundle) instead of the shipped model."),
    click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                 help="Code the folder (or URI: s3://…) INPUT, subfolders too, on Ray into --out-dir, with a manifest; "
                      "ADDRESS is a cluster ('auto', 'ray://host:10001'), none starts a local one. Needs onic[ray]."),
    click.option("--max-pixels", type=click.IntRange(1), default=MAX_PIXELS, show_default=True,
                 help="Refuse images whose area, each side rounded up to 64 (the work the model does), is larger "
                      "(decompression-bomb guard). Sides above 65535 are always refused."),
]


def batch_options(fn):
    for option in reversed(_batch_options):
        fn = option(fn)
    return fn


def _metadata_kinds(ctx, param, value: str) -> tuple[str, ...] | None:
    """--metadata: None for all, () for none, else the kinds named."""
    from codec.api import METADATA

    if value.strip().lower() == "all":
        return None
    if value.strip().lower() == "none":
        return ()
    kinds = tuple(k.strip().lower() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in METADATA]
    if unknown or not kinds:
        raise click.BadParameter(f"{value!r}: give all, none, or some of {','.join(METADATA)}")
    return kinds


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set an option (command line or environment), not its default."""
    source = ctx.get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def _warn(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(f"onic: warning: {message}", err=True)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@batch_options
@click.option("-q", "--quality", type=click.IntRange(0, 100), default=75, show_default=True,
              help="0 (smallest) to 100 (best).")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), callback=_a_number,
              help="Search the highest quality whose size is at most this many bits per pixel (instead of -q).")
@click.option("--target-psnr", type=click.FloatRange(min=0, min_open=True), callback=_a_number,
              help="Search the lowest quality whose RGB PSNR is at least this many dB (instead of -q).")
@click.option("--psnr", is_flag=True,
              help="Decode each output and print its PSNR (one line per file; costs a decode: about 1.5x the time "
                   "and 3x the memory).")
@click.option("--metadata", default="all", show_default=True, callback=_metadata_kinds, metavar="KINDS",
              help="Which of the image's metadata to keep: all, none, or some of icc,exif,xmp (EXIF may hold "
                   "where a photo was taken; without it, an orientation other than upright is kept alone).")
@click.option("--refine", type=click.IntRange(0, MAX_REFINE_STEPS), default=0, show_default=True, metavar="STEPS",
              help="Refine the latents for this many gradient steps before coding: smaller files at about the "
                   "same quality, decoded by any onic with the model; each step costs about two decodes.")
def compress(inputs: tuple[str, ...], output: str | None, out_dir: str | None, jobs: int, threads: int, force: bool,
             verbose: bool, quiet: bool, model: str | None, ray_address: str | None, max_pixels: int, quality: int,
             target_bpp: float | None, target_psnr: float | None, psnr: bool, metadata: tuple[str, ...] | None,
             refine: int) -> None:
    """Compress images (PNG, JPEG, … anything Pillow reads) to .onic.

    INPUTS are files, folders (their images) or '-' for stdin. Outputs go next
    to the inputs with the suffix .onic, to --out-dir, or to -o for one input
    (its folder is created if missing). -v prints size and bpp; --psnr adds
    the PSNR, which needs a decode.
    """
    if target_bpp is not None and target_psnr is not None:
        raise click.UsageError("give --target-bpp or --target-psnr, not both")
    if (target_bpp is not None or target_psnr is not None) and _given(click.get_current_context(), "quality"):
        _warn("--quality is ignored: --target-bpp and --target-psnr search the quality", quiet)
    if ray_address is not None:
        if target_bpp is not None or target_psnr is not None or psnr or refine or metadata is not None:
            raise click.UsageError("--ray codes at one --quality and keeps all metadata: no --target-bpp, "
                                   "--target-psnr, --psnr, --refine or --metadata")
        return _run_ray("compress", inputs, output, out_dir, ray_address, quiet, threads, quality=quality, model=model,
                        max_pixels=max_pixels)
    plan = _plan(inputs, output, out_dir, ".onic", IMAGE_SUFFIXES)
    for _, dst in plan:
        if dst != STDIO and Path(dst).suffix.lower() != ".onic":
            from PIL import Image

            fmt = Image.registered_extensions().get(Path(dst).suffix.lower())
            if fmt and fmt != "ONIC":
                _warn(f"{dst}: writing .onic data under the extension of {fmt} files", quiet)
    work = [Job(src, dst, force, quality, target_bpp, target_psnr, verbose, max_pixels, psnr=psnr, model=model,
                debug=_debug, refine=refine, metadata=metadata, threads=threads) for src, dst in plan]
    _run_batch(compress_file, work, jobs, quiet)


def _run_ray(mode: str, inputs: tuple[str, ...], output: str | None, out_dir: str | None, address: str,
             quiet: bool, threads: int, **options) -> None:
    """One folder or URI on Ray (codec.raydata); exit 0, or 1 when some files failed (see the manifest)."""
    if len(inputs) != 1 or inputs[0] == STDIO or output or not out_dir:
        raise click.UsageError("--ray takes one input folder or URI and --out-dir (no -o, no '-')")
    if threads:
        raise click.UsageError("--ray codes with one thread per actor (Ray counts the cores): no --threads")
    def body() -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise Failure("--ray needs the [ray] extra (pip install 'onic[ray]')") from None
        from codec import raydata

        s = raydata.code_dataset(inputs[0], out_dir, mode, address=None if address == "local" else address,
                                 **options)
        if not quiet:
            click.echo(f"onic: {s.files} files: {s.coded} coded, {s.skipped} skipped (done before), {s.failed} failed "
                       f"in {s.seconds:.1f} s ({s.images_per_second:.1f} images/s); manifest {s.manifest}", err=True)
        if s.failed:
            sys.exit(EXIT_SOME_FAILED)

    _guarded(body)


def _check_format(ctx, param, value: str) -> str:
    fmt = value.lstrip(".").lower()
    if not fmt or not fmt.isalnum():
        raise click.BadParameter(f"{value!r} is not an image extension such as png, webp or tif")
    try:
        output_format("x." + fmt)
    except Failure:
        raise click.BadParameter(f"{value!r} is not an image format this Pillow writes") from None
    return fmt


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@batch_options
@click.option("--format", "fmt", default="png", show_default=True, callback=_check_format,
              help="Output format when the name does not give it: outputs named after their inputs, and "
                   "stdout ('-o -'); -o NAME takes its extension's.")
@click.option("--output-quality", type=click.IntRange(0, 100), default=DEFAULT_OUTPUT_QUALITY, show_default=True,
              help="Quality of lossy output formats (JPEG, WebP, AVIF, JPEG XL, HEIF; PDF's JPEG); PNG and TIFF are "
                   "lossless.")
def decompress(inputs: tuple[str, ...], output: str | None, out_dir: str | None, jobs: int, threads: int,
               force: bool, verbose: bool, quiet: bool, model: str | None, ray_address: str | None, max_pixels: int,
               fmt: str, output_quality: int) -> None:
    """Decompress .onic files to PNG (or any format Pillow writes, by extension).

    INPUTS are files, folders (their .onic files) or '-' for stdin; '-o -'
    writes to stdout (PNG, or --format). ICC profiles, EXIF and XMP are written
    back where the output format supports them.
    """
    if ray_address is not None:
        return _run_ray("decompress", inputs, output, out_dir, ray_address, quiet, threads, fmt=fmt,
                        output_quality=output_quality, model=model, max_pixels=max_pixels)
    plan = _plan(inputs, output, out_dir, "." + fmt, {".onic"})
    work = [Job(src, dst, force, verbose=verbose, max_pixels=max_pixels, output_quality=output_quality,
                model=model, debug=_debug, stdout_format=fmt, threads=threads) for src, dst in plan]
    _run_batch(decompress_file, work, jobs, quiet)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per file and line (JSON Lines), the same fields, chunks by type; a bad "
                   "file's line has its error too.")
def info(inputs: tuple[str, ...], as_json: bool) -> None:
    """Print the header fields and chunks of .onic files ('-' reads stdin).

    Several files are printed one after another, separated by a blank line; a
    bad file is reported and the others are still printed.
    """
    import json

    from codec import bitstream
    from codec.bitstream import OnicError

    failures = 0
    for n, path in enumerate(inputs):
        try:
            data = read_onic(path)
            c = bitstream.unpack(data)
        except (OnicError, Failure) as e:
            failures += 1
            click.echo(f"onic: error: {e}" if len(inputs) == 1 else f"onic: error: {display(path)}: {e}", err=True)
            if as_json:
                click.echo(json.dumps({"file": display(path), "error": str(e)}))
            continue
        h = c.header
        fields = {
            "file": display(path), "format version": h.version, "index path": h.index_path,
            "model id": h.model_id, "width": h.width, "height": h.height, "mode": h.mode,
            "quality": h.quality, "hyperprior bytes": h.z_length, "latent bytes": h.y_length,
            "chunks": {k.decode(): len(v) for k, v in c.chunks.items()}, "file bytes": len(data),
            "bpp": round(8 * len(data) / (h.width * h.height), 4),
        }
        if as_json:
            click.echo(json.dumps({k.replace(" ", "_"): v for k, v in fields.items()}))
            continue
        fields["chunks"] = ", ".join(f"{k} ({v} bytes)" for k, v in fields["chunks"].items()) or "none"
        fields["bpp"] = f"{fields['bpp']:.4f}"
        if n:
            click.echo()
        for k, v in fields.items():
            click.echo(f"{k + ':':<18}{v}")
    if failures:
        sys.exit(EXIT_BAD_INPUT if len(inputs) == 1 else EXIT_SOME_FAILED)


def _qualities(ctx, param, value: str | None) -> list[int] | None:
    """--qualities: integers from 0 to 100, comma-separated."""
    if value is None:
        return None
    try:
        qualities = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 10,50,90") from None
    if not qualities or not all(0 <= q <= 100 for q in qualities):  # every codec's scale is 0-100
        raise click.BadParameter("expected qualities from 0 to 100, e.g. 10,50,90")
    return qualities


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--codecs", default="onic,jpeg,jpeg444,webp,avif,jxl,heif", show_default=True,
              help="Comma-separated: onic, onic-refine (onic with --refine), jpeg (4:2:0), jpeg444, webp, avif, jxl, "
                   "heif (4:2:0).")
@click.option("--qualities", callback=_qualities,
              help="Comma-separated qualities (0-100) for every codec [default: per codec].")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Folder for DIR_NAME.json, DIR_NAME.csv and DIR_NAME_rd.png.")
@click.option("--anchors", multiple=True, type=click.Path(exists=True),
              help="Published curves to overlay (CompressAI-style JSON file or folder); repeatable.")
@click.option("--limit", type=click.IntRange(0), default=0, help="Use only the first N images (0 = all).")
@click.option("--update", is_flag=True,
              help="Keep the other codecs of an earlier result in --out; rerun only --codecs.")
@click.option("--speed", is_flag=True,
              help="Instead: time onic's stages, start-up and memory on FOLDER's first image and a 12 MP "
                   "upscale of it, beside Pillow's decoders.")
@click.option("--compressai-python", type=click.Path(exists=True, dir_okay=False),
              help="With --speed: a Python that has compressai, to time its model of the same size.")
@click.option("--threads", type=click.IntRange(0, MAX_THREADS), default=0, show_default=True,
              help="With --speed: the threads onic codes with, and CompressAI's torch (0 = every core; 1 = one "
                   "core's speed).")
@click.option("--model", type=click.Path(file_okay=False),
              help="A model bundle folder (made by export.bundle) for onic instead of the shipped model.")
@click.option("--refine", type=click.IntRange(1, MAX_REFINE_STEPS), default=20, show_default=True, metavar="STEPS",
              help="The refinement steps of the codec onic-refine.")
def bench(folder: str, codecs: str, qualities: list[int] | None, out: str, anchors: tuple[str, ...],
          limit: int, update: bool, speed: bool, compressai_python: str | None, threads: int, model: str | None,
          refine: int) -> None:
    """Rate-distortion and speed of onic against JPEG, WebP, AVIF, JPEG XL and HEIF on FOLDER.

    Needs the [bench] extra (matplotlib, scipy, tqdm, pillow-jxl-plugin, pillow-heif).
    """
    if speed:
        from codec.batch import expand_inputs

        images = expand_inputs((folder,), IMAGE_SUFFIXES)
        if not images:
            raise click.UsageError(f"no images in {folder}")

        def timed() -> None:
            from codec import speed as sp
            from codec.bench import first_image
            from codec.session import bundle_at

            bundle_at(model)  # a bad --model fails in one line, before any timing
            image = first_image(images, warn=lambda m: click.echo(f"onic: warning: {m}", err=True))
            if image is None:
                raise Failure(f"no image in {folder} that Pillow reads")
            click.echo(sp.format_report(sp.run(image, compressai_python=compressai_python, model=model,
                                               threads=threads)))

        _guarded(timed)
        return

    def body() -> None:
        import importlib.util

        # Before any work: the plots and tables need these, and a run takes minutes.
        missing = [m for m in ("matplotlib", "scipy", "tqdm") if importlib.util.find_spec(m) is None]
        if missing:
            raise Failure(f"onic bench needs the [bench] extra (pip install 'onic[bench]'): "
                          f"{', '.join(missing)} not installed")
        from codec import bench as b
        from codec.session import bundle_at

        bundle_at(model)  # a bad --model fails now, not after the other codecs ran
        names = [c.strip() for c in codecs.split(",") if c.strip()]
        try:
            report = b.run(folder, names, qualities, out, anchors, limit,
                           warn=lambda m: click.echo(f"onic: warning: {m}", err=True), update=update, model=model,
                           refine=refine)
        except ValueError as e:
            raise Failure(str(e)) from None
        click.echo(b.format_table(report))
        click.echo(f"\nwrote {Path(out) / report['dataset']}.json, .csv and _rd.png", err=True)

    _guarded(body)


@main.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port on 127.0.0.1 (0: any free one).")
@click.option("--no-browser", is_flag=True, help="Only serve; do not open a browser.")
@click.option("--model", type=click.Path(file_okay=False), help="Model bundle folder (default: the shipped one).")
def view(files: tuple[str, ...], port: int, no_browser: bool, model: str | None) -> None:
    """Decode .onic files in your web browser (the decoder in web/, a source checkout).

    Serves the demo page, the model bundle and FILES on 127.0.0.1 until Ctrl-C;
    the page opens FILES at once, and more can be dropped on it.
    """

    def body() -> None:
        import webbrowser

        from codec.session import bundle_at
        from codec.webview import make_server

        bundle = bundle_at(model)
        try:
            server = make_server([Path(f) for f in files], bundle.path, port=port)
        except OSError as e:
            raise Failure(f"cannot serve on 127.0.0.1:{port}: {reason(e)}") from None
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        click.echo(f"serving the onic web decoder at {url} (Ctrl-C stops)", err=True)
        if not no_browser:
            webbrowser.open(url)
        with server:
            server.serve_forever()

    _guarded(body)


@main.command()
@click.option("-q", "--quality", type=click.IntRange(0, 100), default=75, show_default=True)
@click.option("--keep", type=click.Path(file_okay=False), help="Keep sample.onic and sample.png in this folder.")
def demo(quality: int, keep: str | None) -> None:
    """Round-trip the bundled sample image and print size, bpp and PSNR."""

    def body() -> None:
        from PIL import Image

        from codec import api, metrics

        folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="onic-demo-"))
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(SAMPLE) as im:
            original = im.convert("RGB")
        data = api.compress(original, quality)
        (folder / "sample.onic").write_bytes(data)
        decoded = api.decompress((folder / "sample.onic").read_bytes())
        decoded.save(folder / "sample.png")
        w, h = original.size
        click.echo(f"{SAMPLE.name} {w}x{h} at quality {quality}: {len(data)} bytes, "
                   f"{8 * len(data) / (w * h):.4f} bpp, PSNR {metrics.psnr(original, decoded):.2f} dB")
        if keep:
            click.echo(f"wrote {folder / 'sample.onic'} and {folder / 'sample.png'}")
        else:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()

    _guarded(body)


if __name__ == "__main__":
    main()
