"""``bgremove``: cut people out of image files and folders from the command line."""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .errors import BgRemoveError
from .precision import PRECISIONS

if TYPE_CHECKING:
    from PIL import Image

    from .api import BackgroundRemover

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG", "jpeg": "JPEG"}

EXAMPLES = """\
examples:
  bgremove photo.jpg -o photo.png                 one file
  bgremove photos/ -o cutouts/                    a folder, recursively, same sub-folders in the output
  bgremove photos/ -o cutouts/ --glob '*.jpg'     only some files
  bgremove photo.jpg -o photo.jpg --background white --format jpg
  bgremove photo.jpg -o mask.png --mask           the alpha mask only
  cat photo.jpg | bgremove - > cutout.png         stdin to stdout
  bgremove photo.jpg --refine matting --decontaminate   finest edges, no halo (slower; [matting] extra)
  bgremove photos/ -o cutouts/ --backend onnx     ONNX Runtime ([onnx] extra)
  bgremove photo.jpg --model org/name --revision main --device cuda
  bgremove serve --port 8000 --workers 2          the HTTP API ([server] extra; bgremove serve --help)
"""


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgremove",
        description="Remove the background from photos of people.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or - for stdin")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output file (one input) or folder; default: next to each input as NAME-nobg.EXT",
    )
    parser.add_argument("--glob", default="*", help="file name pattern inside folders (default: every image)")
    parser.add_argument("--format", choices=sorted(FORMATS), help="output format (default: from -o's suffix, else png)")
    parser.add_argument("--background", help="colour name, hex code or image path to put behind the person")
    parser.add_argument("--mask", action="store_true", help="write the greyscale alpha mask instead of a cut-out")
    parser.add_argument("--threshold", type=float, help="hard mask: binarise the alpha at this probability (0-1)")
    parser.add_argument(
        "--refine",
        choices=["guided", "none", "matting"],
        default="guided",
        help="edges: guided (default; follow the photo's edges), none (plain bilinear upsampling) or "
        "matting (closed-form matting around the outline; about 0.6 s per photo; needs bgremove_plugin[matting])",
    )
    parser.add_argument(
        "--decontaminate",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="replace the old background's tint at soft edges with the person's own colours (slower; default: off)",
    )
    parser.add_argument("--model", help="local weights folder or Hugging Face Hub repo id (default: embedded weights)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) for --model")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="inference engine: auto (default; the fastest at hand), torch, or onnx (ONNX Runtime; needs bgremove_plugin[onnx])",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="auto",
        help="number format of the network: auto (default; bfloat16 on CPUs that compute it natively), float32 or bfloat16",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: 1; more helps on GPUs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (never an input); without it they are skipped")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local (default), or ray: run on a Ray cluster (needs -o and bgremove_plugin[ray]; "
                        "inputs and outputs may be URIs such as s3://bucket/photos)")
    parser.add_argument("--ray-address", help="the Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    parser.add_argument("--concurrency", type=int, default=2, help="--engine ray: actors, each holding one model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _images_in(folder: Path, pattern: str) -> Iterator[Path]:
    for path in sorted(folder.rglob(pattern)):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def _plan(inputs: Sequence[str], output: Path | None, pattern: str, suffix: str) -> tuple[list[Job], list[str]]:
    """Map each input image to the file it will be written to; returns jobs and problems found."""
    jobs: list[Job] = []
    problems: list[str] = []
    files_only = all(Path(i).is_file() for i in inputs)
    single_file_target = (
        output is not None and files_only and len(inputs) == 1 and not output.is_dir() and output.suffix != ""
    )
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for image in _images_in(path, pattern):
                relative = image.relative_to(path).with_suffix(suffix)
                if output is None:
                    target = image.with_name(f"{image.stem}-nobg{suffix}")
                else:
                    target = output / path.name / relative if len(inputs) > 1 else output / relative
                jobs.append(Job(image, target))
        elif path.is_file():
            if single_file_target:
                assert output is not None
                target = output
            elif output is None:
                target = path.with_name(f"{path.stem}-nobg{suffix}")
            else:
                target = output / f"{path.stem}{suffix}"
            jobs.append(Job(path, target))
        else:
            problems.append(f"{raw}: no such file or folder")
    return jobs, problems


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled and total > 1
        self.done = 0
        self.started = time.monotonic()

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = round(width * self.done / self.total)
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {rate:.1f} img/s")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def save_atomically(image: object, target: Path, image_format: str) -> None:
    from PIL import Image

    assert isinstance(image, Image.Image)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            image.save(stream, format=image_format)
        # mkstemp makes the file private (0600); the output gets the mode any new file would get.
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _process(
    remover: BackgroundRemover, ready: list[tuple[Job, Image.Image]], options: dict[str, object], err: TextIO
) -> Iterator[tuple[Job, Image.Image | None]]:
    """Cut out a batch in one forward pass; if that fails, retry one by one so one bad image costs only itself."""
    if not ready:
        return
    try:
        results = remover.remove_many([image for _, image in ready], **options)  # type: ignore[arg-type]
        yield from zip((job for job, _ in ready), results)
        return
    except (BgRemoveError, RuntimeError, MemoryError) as exc:
        if len(ready) == 1:
            err.write(f"bgremove: {ready[0][0].source}: {exc}\n")
            yield ready[0][0], None
            return
    for job, image in ready:
        yield from _process(remover, [(job, image)], options, err)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 all done, 1 some images failed, 2 bad usage).
    ``bgremove serve ...`` starts the HTTP API instead (:mod:`bgremove_plugin.server`)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        from .server import serve_main

        return serve_main(arguments[1:])
    args = _parser().parse_args(arguments)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    err = sys.stderr

    fmt_key = args.format or (
        args.output.suffix.lower().lstrip(".")
        if args.output and args.output.suffix.lower().lstrip(".") in FORMATS
        else "png"
    )
    image_format = FORMATS[fmt_key]
    suffix = ".jpg" if image_format == "JPEG" else f".{fmt_key}"
    if image_format == "JPEG" and not (args.background or args.mask):
        err.write(
            "bgremove: JPEG has no transparency: add --background COLOUR (e.g. white), or use --format png/webp\n"
        )
        return 2
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        err.write(f"bgremove: --threshold must be between 0 and 1, got {args.threshold}\n")
        return 2

    from .api import BackgroundRemover, load_image

    background: object = None
    try:
        if args.background:
            background = load_image(args.background) if Path(args.background).is_file() else args.background
    except BgRemoveError as exc:
        err.write(f"bgremove: {exc}\n")
        return 2
    options = {
        "background": background,
        "return_mask": args.mask,
        "threshold": args.threshold,
        "decontaminate": args.decontaminate,
    }
    if args.engine == "ray":
        # The actors load the model; the driver only plans and reports.
        return _run_on_ray(args, options, image_format, suffix, err)
    try:
        remover = BackgroundRemover(
            args.model,
            revision=args.revision,
            device=args.device,
            batch_size=args.batch_size,
            refine=args.refine,
            backend=args.backend,
            precision=args.precision,
        )
    except BgRemoveError as exc:
        err.write(f"bgremove: {exc}\n")
        return 2

    if args.inputs == ["-"]:
        try:
            result = remover.remove(sys.stdin.buffer.read(), **options)  # type: ignore[arg-type]
        except BgRemoveError as exc:
            err.write(f"bgremove: stdin: {exc}\n")
            return 1
        buffer = io.BytesIO()
        result.save(buffer, format=image_format)
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        return 0

    if len(args.inputs) == 1 and Path(args.inputs[0]).suffix.lower() in _video_suffixes():
        return _run_video(args, remover, background, err)
    jobs, problems = _plan(args.inputs, args.output, args.glob, suffix)
    for problem in problems:
        err.write(f"bgremove: {problem}\n")
    sources = {job.source.resolve() for job in jobs}
    progress = _Progress(len(jobs), err, enabled=not args.quiet and err.isatty())
    failed = len(problems)
    for start in range(0, len(jobs), args.batch_size):
        ready = []
        for job in jobs[start : start + args.batch_size]:
            if job.target.resolve() in sources:
                err.write(f"bgremove: {job.source}: refusing to write over an input ({job.target})\n")
                failed += 1
                progress.step()
            elif job.target.exists() and not args.overwrite:
                # Skipped, not failed: a job that died is run again and finishes the rest.
                err.write(f"bgremove: {job.source}: {job.target} exists, skipped (--overwrite replaces it)\n")
                progress.step()
            else:
                try:
                    ready.append((job, load_image(job.source)))
                except BgRemoveError as exc:
                    err.write(f"bgremove: {job.source}: {exc}\n")
                    failed += 1
                    progress.step()
        for job, cutout in _process(remover, ready, options, err):
            if cutout is None:
                failed += 1
            else:
                try:
                    save_atomically(cutout, job.target, image_format)
                except OSError as exc:
                    err.write(f"bgremove: {job.source}: cannot write {job.target}: {exc}\n")
                    failed += 1
            progress.step()
    if failed:
        err.write(f"bgremove: {failed} of {len(jobs) + len(problems)} input(s) failed\n")
    return 1 if failed else 0


def _video_suffixes() -> frozenset[str]:
    from .video import VIDEO_SUFFIXES

    return VIDEO_SUFFIXES


def _run_video(args: argparse.Namespace, remover: BackgroundRemover, background: object, err: TextIO) -> int:
    from .video import remove_background_video

    source = Path(args.inputs[0])
    destination = args.output or source.with_name(f"{source.stem}-nobg.webm")
    if destination.resolve() == source.resolve():
        err.write(f"bgremove: {source}: refusing to write over the input\n")
        return 1
    if destination.exists() and not args.overwrite:
        err.write(f"bgremove: {destination} exists, skipped (--overwrite replaces it)\n")
        return 0
    progress = _Progress(0, err, enabled=not args.quiet and err.isatty())

    def step(done: int, total: int | None) -> None:
        progress.total = max(total or done, done)
        progress.step()

    try:
        result = remove_background_video(source, destination, background=background, threshold=args.threshold,  # type: ignore[arg-type]
                                         refine=args.refine, remover=remover, progress=step)
    except BgRemoveError as exc:
        err.write(f"bgremove: {source}: {exc}\n")
        return 1
    err.write(f"bgremove: {result.frames} frames written to {result.destination}\n")
    return 0


def _run_on_ray(args: argparse.Namespace, options: dict[str, object], image_format: str, suffix: str, err: TextIO) -> int:
    from . import ray_engine

    if args.output is None:
        err.write("bgremove: --engine ray needs -o OUTPUT (a folder or a URI such as s3://bucket/cutouts)\n")
        return 2
    output = str(args.output)
    try:
        planned = ray_engine.plan(args.inputs, output, pattern=args.glob, suffix=suffix, overwrite=args.overwrite)
        remover_options = {"model": args.model, "revision": args.revision, "device": args.device,
                           "batch_size": args.batch_size, "refine": args.refine, "backend": args.backend,
                           "precision": args.precision}
        failures = ray_engine.run(planned, output, remover_options=remover_options, cut_options=options,
                                  image_format=image_format, concurrency=args.concurrency, address=args.ray_address)
    except BgRemoveError as exc:
        err.write(f"bgremove: {exc}\n")
        return 2
    err.writelines(f"bgremove: {target} exists, skipped (--overwrite replaces it)\n" for target in planned.skipped)
    problems = planned.problems + [f"{source}: {reason}" for source, reason in sorted(failures.items())]
    total = len(planned.jobs) + len(planned.problems)
    err.write(f"bgremove: {len(planned.jobs) - len(failures)} written, {len(planned.skipped)} skipped, "
              f"{len(problems)} failed\n")
    err.writelines(f"bgremove: failed: {problem}\n" for problem in problems)
    if problems:
        err.write(f"bgremove: {len(problems)} of {total} input(s) failed\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
