"""The ``onic`` command line.

Exit codes: 0 success; 1 some files of a batch failed (the rest were done);
2 bad usage or bad input (an unreadable image, a malformed .onic file, an
output that exists without --force). Errors are one line on stderr; stdout
carries only data ('-' outputs) and what a command is asked to print.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from codec import __version__
from codec.batch import (
    IMAGE_SUFFIXES,
    STDIO,
    Failure,
    Job,
    Result,
    compress_file,
    decompress_file,
    expand_inputs,
    read_input,
)

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SAMPLE = Path(__file__).parent / "samples" / "parrots.png"


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
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except MemoryError:
        _fail("out of memory")


def _plan(inputs: tuple[str, ...], output: str | None, out_dir: str | None, suffix: str,
          input_suffixes: set[str]) -> list[tuple[str, str]]:
    """(source, destination) pairs, or a usage error."""
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
        return [(sources[0], output)]
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        stems = [Path(s).stem if s != STDIO else "stdin" for s in sources]
        return [(s, str(Path(out_dir) / (stem + suffix))) for s, stem in zip(sources, stems, strict=True)]
    return [(s, STDIO if s == STDIO else str(Path(s).with_suffix(suffix))) for s in sources]


def _run_batch(worker: Callable[[Job], Result], jobs: list[Job], processes: int, quiet: bool) -> None:
    """Run jobs (in processes when asked), report as they finish, exit 0 / 1 (some failed) / 2 (single failure)."""
    failures = 0
    single = len(jobs) == 1

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
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=processes) as pool:
                for r in pool.map(worker, jobs):
                    report(r)
                    bar.update(1)
        else:
            for job in jobs:
                report(worker(job))
                bar.update(1)
    if failures:
        if not single:
            click.echo(f"onic: {failures} of {len(jobs)} files failed", err=True)
        sys.exit(EXIT_BAD_INPUT if single else EXIT_SOME_FAILED)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=__doc__.split("\n\n")[1])
@click.version_option(__version__, "--version", prog_name="onic")
def main() -> None:
    """onic: a learned image codec (PyTorch-trained, ONNX-run)."""


_batch_options = [
    click.option("-o", "--output", help="Output file for a single input ('-' = stdout)."),
    click.option("--out-dir", type=click.Path(file_okay=False), help="Folder for the outputs of several inputs."),
    click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True,
                 help="Worker processes for several inputs."),
    click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
    click.option("-v", "--verbose", is_flag=True, help="One line per file on stderr."),
    click.option("--quiet", is_flag=True, help="No warnings or progress bar."),
]


def batch_options(fn):
    for option in reversed(_batch_options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@batch_options
@click.option("-q", "--quality", type=click.IntRange(0, 100), default=75, show_default=True,
              help="0 (smallest) to 100 (best).")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True),
              help="Search the highest quality whose size is at most this many bits per pixel.")
@click.option("--target-psnr", type=click.FloatRange(min=0, min_open=True),
              help="Search the lowest quality whose RGB PSNR is at least this many dB.")
def compress(inputs: tuple[str, ...], output: str | None, out_dir: str | None, jobs: int, force: bool,
             verbose: bool, quiet: bool, quality: int, target_bpp: float | None, target_psnr: float | None) -> None:
    """Compress images (PNG, JPEG, … anything Pillow reads) to .onic.

    INPUTS are files, folders (their images) or '-' for stdin. Outputs go next
    to the inputs with the suffix .onic, to --out-dir, or to -o for one input.
    """
    if target_bpp is not None and target_psnr is not None:
        raise click.UsageError("give --target-bpp or --target-psnr, not both")
    plan = _plan(inputs, output, out_dir, ".onic", IMAGE_SUFFIXES)
    work = [Job(src, dst, force, quality, target_bpp, target_psnr, verbose) for src, dst in plan]
    _run_batch(compress_file, work, jobs, quiet)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@batch_options
@click.option("--format", "fmt", default="png", show_default=True,
              help="Output extension when the name is not given (-o names it by its extension).")
@click.option("--max-pixels", type=click.IntRange(1), default=2**28, show_default=True,
              help="Refuse files whose header describes more pixels (decompression-bomb guard).")
def decompress(inputs: tuple[str, ...], output: str | None, out_dir: str | None, jobs: int, force: bool,
               verbose: bool, quiet: bool, fmt: str, max_pixels: int) -> None:
    """Decompress .onic files to PNG (or any format Pillow writes, by extension).

    INPUTS are files, folders (their .onic files) or '-' for stdin; '-o -'
    writes PNG to stdout. ICC profiles and EXIF are written back where the
    output format supports them.
    """
    plan = _plan(inputs, output, out_dir, "." + fmt.lstrip(".").lower(), {".onic"})
    work = [Job(src, dst, force, verbose=verbose, max_pixels=max_pixels) for src, dst in plan]
    _run_batch(decompress_file, work, jobs, quiet)


@main.command()
@click.argument("input", type=click.Path(dir_okay=False))
def info(input: str) -> None:
    """Print the header fields and chunks of an .onic file ('-' reads stdin)."""

    def body() -> None:
        from codec import bitstream

        data = read_input(input)
        c = bitstream.unpack(data)
        h = c.header
        chunks = ", ".join(f"{k.decode()} ({len(v)} bytes)" for k, v in c.chunks.items()) or "none"
        rows = [
            ("file", input), ("format version", h.version), ("index path", h.index_path), ("model id", h.model_id),
            ("width", h.width), ("height", h.height), ("mode", h.mode), ("quality", h.quality),
            ("hyperprior bytes", h.z_length), ("latent bytes", h.y_length), ("chunks", chunks),
            ("file bytes", len(data)), ("bpp", f"{8 * len(data) / (h.width * h.height):.4f}"),
        ]
        for k, v in rows:
            click.echo(f"{k + ':':<18}{v}")

    _guarded(body)


def _int_list(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 10,50,90") from None


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--codecs", default="onic,jpeg,jpeg444,webp,avif,jxl", show_default=True,
              help="Comma-separated: onic, jpeg (4:2:0), jpeg444, webp, avif, jxl.")
@click.option("--qualities", callback=_int_list, help="Comma-separated qualities for every codec [default: per codec].")
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
def bench(folder: str, codecs: str, qualities: list[int] | None, out: str, anchors: tuple[str, ...],
          limit: int, update: bool, speed: bool, compressai_python: str | None) -> None:
    """Rate-distortion and speed of onic against JPEG, WebP, AVIF and JPEG XL on FOLDER.

    Needs the [bench] extra (matplotlib, scipy, tqdm, pillow-jxl-plugin).
    """
    if speed:
        from codec import speed as sp
        from codec.batch import expand_inputs

        images = expand_inputs((folder,), IMAGE_SUFFIXES)
        if not images:
            raise click.UsageError(f"no images in {folder}")
        click.echo(sp.format_report(sp.run(images[0], compressai_python=compressai_python)))
        return

    def body() -> None:
        try:
            from codec import bench as b
        except ImportError as e:
            raise Failure(f"onic bench needs the [bench] extra: {e}") from None
        names = [c.strip() for c in codecs.split(",") if c.strip()]
        try:
            report = b.run(folder, names, qualities, out, anchors, limit,
                           warn=lambda m: click.echo(f"onic: warning: {m}", err=True), update=update)
        except ValueError as e:
            raise Failure(str(e)) from None
        click.echo(b.format_table(report))
        click.echo(f"\nwrote {Path(out) / report['dataset']}.json, .csv and _rd.png", err=True)

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
