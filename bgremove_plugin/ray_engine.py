"""``bgremove INPUT... -o OUT --engine ray``: the folder CLI on a Ray cluster (the ``[ray]`` extra).

Ray Data reads the photos; a pool of actors, each holding one loaded :class:`BackgroundRemover` (one GPU
each where the cluster has GPUs), cuts them out and writes each result where the local CLI would. Inputs
and outputs are local paths or URIs that pyarrow's filesystems understand (``s3://``, ``gs://``). The
promises are the local CLI's: an input is never written over, an existing output is skipped unless
``overwrite`` (so a job that died is simply run again), a photo that fails is reported and the rest go on.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailableError, BgRemoveError, InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow.fs  # type: ignore[import-untyped,unused-ignore]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_INSTALL_HINT = 'pip install "bgremove_plugin[ray]"'


@dataclass
class RayPlan:
    """What a Ray job will do: source -> target paths on one filesystem, and what it will not."""

    filesystem: pyarrow.fs.FileSystem
    jobs: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _resolve(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow  # type: ignore[import-untyped,unused-ignore]
    import pyarrow.fs  # type: ignore[import-untyped,unused-ignore]

    if "://" not in location:
        location = os.path.abspath(location)
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (pyarrow.ArrowInvalid, OSError) as exc:
        raise InvalidArgumentError(f"{location!r} is neither a local path nor a URI pyarrow can open: {exc}") from exc


def plan(inputs: Sequence[str], output: str, *, pattern: str, suffix: str, overwrite: bool) -> RayPlan:
    """Map every image under ``inputs`` (files or folders, recursively) to its output under ``output``,
    mirroring the local CLI's layout: one input folder maps onto ``output`` itself, several onto
    ``output/<folder name>``. All locations must be on one filesystem."""
    from fnmatch import fnmatch

    import pyarrow.fs  # type: ignore[import-untyped,unused-ignore]

    filesystem, out_root = _resolve(output)
    result = RayPlan(filesystem)
    for raw in inputs:
        fs, root = _resolve(raw)
        if fs.type_name != filesystem.type_name:
            raise InvalidArgumentError(f"{raw} and {output} are on different filesystems; copy one side first")
        info = fs.get_file_info(root)
        if info.type == pyarrow.fs.FileType.Directory:
            found = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
            images = sorted(f.path for f in found if f.type == pyarrow.fs.FileType.File
                            and f.path.lower().endswith(IMAGE_SUFFIXES) and fnmatch(posixpath.basename(f.path), pattern))
            base = out_root if len(inputs) == 1 else posixpath.join(out_root, posixpath.basename(root.rstrip("/")))
            pairs = [(image, posixpath.join(base, posixpath.splitext(posixpath.relpath(image, root))[0] + suffix))
                     for image in images]
        elif info.type == pyarrow.fs.FileType.File:
            stem = posixpath.splitext(posixpath.basename(root))[0]
            pairs = [(root, posixpath.join(out_root, stem + suffix))]
        else:
            result.problems.append(f"{raw}: no such file or folder")
            continue
        for source, target in pairs:
            result.jobs[source] = target
    sources = set(result.jobs)
    for source, target in list(result.jobs.items()):
        if target in sources:
            result.problems.append(f"{source}: refusing to write over an input ({target})")
            del result.jobs[source]
        elif not overwrite and filesystem.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
            result.skipped.append(target)
            del result.jobs[source]
    return result


class _CutOutActor:
    """One loaded model per actor; each call cuts out a batch of photos and writes them."""

    def __init__(self, remover_options: dict[str, Any], cut_options: dict[str, Any], image_format: str,
                 jobs: dict[str, str], output: str) -> None:
        from .api import BackgroundRemover

        self.remover = BackgroundRemover(**remover_options)
        self.cut_options = cut_options
        self.image_format = image_format
        self.jobs = jobs
        self.filesystem, _ = _resolve(output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        errors = []
        for path, data in zip(batch["path"], batch["bytes"]):
            try:
                cutout = self.remover.remove(bytes(data), **self.cut_options)
                _write(self.filesystem, self.jobs[str(path)], cutout, self.image_format)
                errors.append("")
            except (BgRemoveError, OSError, RuntimeError, MemoryError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        return {"path": [str(p) for p in batch["path"]], "error": errors}


def _write(filesystem: pyarrow.fs.FileSystem, target: str, image: Any, image_format: str) -> None:
    if filesystem.type_name == "local":
        from pathlib import Path

        from .cli import save_atomically

        save_atomically(image, Path(target), image_format)
        return
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    parent = posixpath.dirname(target)
    if parent:
        filesystem.create_dir(parent, recursive=True)
    with filesystem.open_output_stream(target) as stream:
        stream.write(buffer.getvalue())


def run(planned: RayPlan, output: str, *, remover_options: dict[str, Any], cut_options: dict[str, Any],
        image_format: str, concurrency: int, address: str | None) -> dict[str, str]:
    """Cut out every planned photo on the cluster at ``address`` (or the one this process already joined, or
    a local one); returns the failures, source -> reason."""
    try:
        import ray  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise BackendUnavailableError(f"--engine ray needs Ray Data; {_INSTALL_HINT}") from exc
    if not planned.jobs:
        return {}
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    device = str(remover_options.get("device") or "auto")
    gpus = 1.0 if device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0) else 0.0
    if gpus:
        remover_options = {**remover_options, "device": "cuda"}
    else:
        # Each actor holds a CPU for as long as it lives; the tasks that read the photos need one too.
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if concurrency >= cpus:
            log.warning("--concurrency %d on a cluster of %d CPUs: using %d actors, so that reading can go on",
                        concurrency, cpus, max(1, cpus - 1))
            concurrency = max(1, cpus - 1)
    dataset = ray.data.read_binary_files(
        sorted(planned.jobs), include_paths=True, filesystem=planned.filesystem, ignore_missing_paths=True,
    )
    results = dataset.map_batches(
        _CutOutActor, batch_size=4, concurrency=concurrency, num_gpus=gpus,
        fn_constructor_kwargs={"remover_options": remover_options, "cut_options": cut_options,
                               "image_format": image_format, "jobs": planned.jobs, "output": output},
    ).take_all()
    failures = {str(row["path"]): str(row["error"]) for row in results if row["error"]}
    done = {str(row["path"]) for row in results}
    for source in planned.jobs.keys() - done:
        failures[source] = "not read (removed while the job ran?)"
    return failures
