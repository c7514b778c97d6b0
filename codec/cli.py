"""The ``onic`` command line.

Exit codes: 0 success; 2 bad usage or bad input (an unreadable image, a
malformed .onic file, an output that exists without --force). Errors are one
line on stderr; stdout carries only what a command is asked to print.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from codec import __version__

EXIT_OK, EXIT_BAD_INPUT = 0, 2
SAMPLE = Path(__file__).parent / "samples" / "parrots.png"


class Failure(Exception):
    """A user-facing error: printed as one line, exit code 2."""


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


def write_atomic(path: Path, write: Callable[[Path], None], force: bool) -> None:
    """Write through a temporary file in the same folder, then rename: no partial outputs."""
    if path.exists() and not force:
        raise Failure(f"{path} exists (use --force to overwrite)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or Path("."))
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_input(path: str) -> bytes:
    return Path(path).read_bytes()


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=__doc__.split("\n\n")[1])
@click.version_option(__version__, "--version", prog_name="onic")
def main() -> None:
    """onic: a learned image codec (PyTorch-trained, ONNX-run)."""


@main.command()
@click.argument("input", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file [default: INPUT with .onic].")
@click.option("-q", "--quality", type=click.IntRange(0, 100), default=75, show_default=True,
              help="0 (smallest) to 100 (best).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@click.option("-v", "--verbose", is_flag=True, help="Print size, bits per pixel and PSNR to stderr.")
def compress(input: str, output: str | None, quality: int, force: bool, verbose: bool) -> None:
    """Compress an image (PNG, JPEG, … anything Pillow reads) to .onic."""

    def body() -> None:
        from codec import api, metrics

        out = Path(output) if output else Path(input).with_suffix(".onic")
        image = api._to_image(input)
        data = api.compress(image, quality)
        write_atomic(out, lambda p: p.write_bytes(data), force)
        if verbose:
            h = api.read_header(data)
            psnr = metrics.psnr(image, api.decompress(data))
            click.echo(f"{out}: {len(data)} bytes, {8 * len(data) / (h.width * h.height):.4f} bpp, "
                       f"PSNR {psnr:.2f} dB at quality {quality}", err=True)

    _guarded(body)


@main.command()
@click.argument("input", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output image; the extension picks the format [default: INPUT with .png].")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--max-pixels", type=click.IntRange(1), default=2**28, show_default=True,
              help="Refuse files whose header describes more pixels (decompression-bomb guard).")
def decompress(input: str, output: str | None, force: bool, max_pixels: int) -> None:
    """Decompress an .onic file to PNG (or any format Pillow writes, by extension)."""

    def body() -> None:
        from PIL import Image

        from codec import api

        out = Path(output) if output else Path(input).with_suffix(".png")
        fmt = Image.registered_extensions().get(out.suffix.lower())
        if fmt is None or fmt not in Image.SAVE:
            raise Failure(f"cannot write {out}: unknown image extension {out.suffix!r}")
        image = api.decompress(_read_input(input), max_pixels=max_pixels)
        write_atomic(out, lambda p: image.save(p, format=fmt), force)

    _guarded(body)


@main.command()
@click.argument("input", type=click.Path(dir_okay=False))
def info(input: str) -> None:
    """Print the header fields of an .onic file."""

    def body() -> None:
        from codec import bitstream

        data = _read_input(input)
        h = bitstream.unpack(data).header
        rows = [
            ("file", input), ("format version", h.version), ("model id", h.model_id),
            ("width", h.width), ("height", h.height), ("mode", h.mode), ("quality", h.quality),
            ("hyperprior bytes", h.z_length), ("latent bytes", h.y_length), ("file bytes", len(data)),
            ("bpp", f"{8 * len(data) / (h.width * h.height):.4f}"),
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
def bench(folder: str, codecs: str, qualities: list[int] | None, out: str, anchors: tuple[str, ...],
          limit: int) -> None:
    """Rate-distortion and speed of onic against JPEG, WebP, AVIF and JPEG XL on FOLDER.

    Needs the [bench] extra (matplotlib, scipy, tqdm, pillow-jxl-plugin).
    """

    def body() -> None:
        try:
            from codec import bench as b
        except ImportError as e:
            raise Failure(f"onic bench needs the [bench] extra: {e}") from None
        names = [c.strip() for c in codecs.split(",") if c.strip()]
        try:
            report = b.run(folder, names, qualities, out, anchors, limit,
                           warn=lambda m: click.echo(f"onic: warning: {m}", err=True))
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
