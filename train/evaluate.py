"""Score models on an images/ + masks/ folder at full resolution: ours and, optionally, the peers.

Per image: IoU of the person class (threshold 0.5), boundary F-score within 3 px, MAE of the soft mask.
Per model: means, the share of images with IoU < 0.5, a breakdown by person-area bucket, the wrong pixels
by their distance from the true outline (edges against whole regions; pooled over the set, as a share of
the union) and a gallery of the 16 worst images (photo / truth / prediction). All models run on the same
images in one process and one table is printed (markdown). With ``--out`` the per-image CSV, the summary
JSON and the galleries are written there.

Examples:
    python -m train.evaluate --source ccp --split test                      # embedded default weights
    python -m train.evaluate --source coco_people --split test_original     # the original work's COCO test
    python -m train.evaluate --model train/runs/cpu-fcdn56/export --source coco128 --split all --people-only
    python -m train.evaluate --source people/interfaces_cc0 --masks train/pseudo_labels/interfaces_cc0 --split test
                                       # agreement with the teacher's pseudo-labels, not with human labels
    # with the peers (their environment, see train/README.md):
    .peers/venv/bin/python -m train.evaluate --model default --model u2net --model u2netp \\
        --model mediapipe0 --source ccp --split test --out reports/ccp-test
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .metrics import boundary_f_score, edge_distance_labels, errors_by_edge_distance, mean_absolute_error, person_iou
from .sources import SPLIT_DIR, Sample, data_root, folder_samples, read_split_list

AREA_BUCKETS = ((0.0, 0.05, "<5%"), (0.05, 0.2, "5-20%"), (0.2, 0.4, "20-40%"), (0.4, 1.01, ">=40%"))
GALLERY_SIZE = 16
Predictor = Callable[[Path | np.ndarray], np.ndarray]
"""A photo path (EXIF-oriented) or an RGB array in memory (a close-up window) -> float32 person probability
in [0, 1] at its size."""


def select(source: Path, split: str, masks_dir: Path | None = None) -> list[Sample]:
    samples = folder_samples(source, masks_dir)
    if split == "all":
        return samples
    list_file = SPLIT_DIR / f"{source.name}_{split}.txt"
    if not list_file.exists():
        known = sorted(p.stem.removeprefix(f"{source.name}_") for p in SPLIT_DIR.glob(f"{source.name}_*.txt"))
        raise SystemExit(f"no split list {list_file}; use --split all or one of {known or 'train, val, test after training'}")
    wanted = set(read_split_list(list_file))
    return [s for s in samples if s.stem in wanted]


def oriented_rgb(photo: Path | np.ndarray) -> np.ndarray:
    if isinstance(photo, np.ndarray):
        return photo
    from bgremove_plugin.api import load_image
    from bgremove_plugin.transforms import to_rgb

    return np.asarray(to_rgb(load_image(photo)))  # what our models see, so every model gets the same pixels


def second_pass(
    predict: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, *, margin: float = 0.15, min_zoom: float = 1.25
) -> np.ndarray:
    """Predict ``rgb``, then predict again on a crop around each group of found people and paste it back.

    An ablation (docs/experiments.md, "A second pass on each person"): the crop shows a small person at up
    to several times the scale of the first pass. Groups are the connected parts of ``alpha >= 0.5`` after
    growing it by 3% of the long side; each crop adds ``margin`` times its long side on every side and is
    only taken when it magnifies by ``min_zoom`` or more. Where crops overlap, the larger value is kept.
    """
    from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

    alpha = predict(rgb)
    found = alpha >= 0.5
    if not found.any():
        return alpha
    height, width = found.shape
    grown = ndimage.binary_dilation(found, iterations=max(1, round(0.03 * max(height, width))))
    labels, _ = ndimage.label(grown)
    result = alpha.copy()
    pasted = np.zeros(found.shape, dtype=bool)
    for rows, cols in ndimage.find_objects(labels):
        pad = margin * max(rows.stop - rows.start, cols.stop - cols.start)
        top, bottom = max(0, int(rows.start - pad)), min(height, int(rows.stop + pad))
        left, right = max(0, int(cols.start - pad)), min(width, int(cols.stop + pad))
        if max(height, width) / max(bottom - top, right - left) < min_zoom:
            continue
        zoomed = predict(np.ascontiguousarray(rgb[top:bottom, left:right]))
        window = (slice(top, bottom), slice(left, right))
        result[window] = np.where(pasted[window], np.maximum(result[window], zoomed), zoomed)
        pasted[window] = True
    return result


def largest_person(alpha: np.ndarray, *, rim: float = 0.01) -> np.ndarray:
    """``alpha`` with only its largest connected part of ``alpha >= 0.5`` left, and the soft rim within
    ``rim`` times the long side of it; everything else is set to 0.

    An ablation (docs/experiments.md, "Detached parts"): on photos of one subject it drops a kept reflection
    or passer-by, in group photos it drops people, so it is measured here and not offered by the package.
    """
    from scipy import ndimage  # type: ignore[import-untyped,unused-ignore]

    found = alpha >= 0.5
    labels, count = ndimage.label(found)
    if count == 0:
        return alpha
    areas = ndimage.sum_labels(found, labels, index=np.arange(1, count + 1))
    kept = labels == 1 + int(np.argmax(areas))
    near = ndimage.binary_dilation(kept, iterations=max(1, round(rim * max(alpha.shape))))
    return np.where(near & (kept | ~found), alpha, 0.0).astype(alpha.dtype)


def build_predictor(
    name: str,
    *,
    device: str = "cpu",
    refine: str = "guided",
    input_size: int | None = None,
    with_second_pass: bool = False,
    largest_only: bool = False,
) -> Predictor:
    """``default`` (embedded weights), a weights folder or Hub id, or a peer name from ``train.peers``;
    ``with_second_pass`` wraps any of them in :func:`second_pass`, ``largest_only`` in :func:`largest_person`."""
    from .peers import PEER_NAMES, build_peer

    if largest_only:
        whole = build_predictor(
            name, device=device, refine=refine, input_size=input_size, with_second_pass=with_second_pass
        )
        return lambda photo: largest_person(whole(photo))
    if with_second_pass:
        single = build_predictor(name, device=device, refine=refine, input_size=input_size)
        return lambda photo: second_pass(single, oriented_rgb(photo))
    if name in PEER_NAMES:
        peer = build_peer(name)
        return lambda path: peer(oriented_rgb(path))
    from bgremove_plugin.api import BackgroundRemover

    remover = BackgroundRemover(None if name == "default" else name, device=device, refine=refine)  # type: ignore[arg-type]
    if input_size is not None:
        # Only for measuring the speed/quality trade-off of the working resolution; a private copy, so the
        # process-wide cached model keeps the size its config gives.
        import copy

        remover.model = copy.deepcopy(remover.model)
        remover.model.input_size = input_size
    return lambda path: remover.predict_alpha([path])[0]


def score(
    predict: Predictor, samples: Sequence[Sample], *, people_only: bool = False, threshold: float = 0.5
) -> list[dict[str, object]]:
    """One row per image: iou and boundary_f of ``alpha >= threshold``, mae of the soft alpha, person_area,
    the prediction's seconds, and (not in the CSV) its wrong pixels by distance from the true outline with the
    union they are counted against."""
    rows: list[dict[str, object]] = []
    for sample in samples:
        truth = np.asarray(Image.open(sample.mask).convert("L"))
        if people_only and not truth.any():
            continue
        started = time.perf_counter()
        probability = predict(sample.image)
        seconds = time.perf_counter() - started
        if probability.shape != truth.shape:
            raise ValueError(f"{sample.image}: prediction {probability.shape} but mask {truth.shape}")
        wrong_by_distance, union = errors_by_edge_distance(probability, truth, threshold=threshold)
        rows.append(
            {
                "stem": sample.stem,
                "iou": person_iou(probability, truth, threshold),
                "boundary_f": boundary_f_score(probability, truth, threshold=threshold),
                "mae": mean_absolute_error(probability, truth),
                "person_area": float((truth > 127).mean()),
                "seconds": seconds,
                "wrong_by_edge_distance": wrong_by_distance,
                "union": union,
            }
        )
    return rows


def summarise(rows: Sequence[dict[str, object]]) -> dict[str, object]:
    def mean(key: str, subset: Sequence[dict[str, object]] = rows) -> float:
        return round(float(np.mean([float(r[key]) for r in subset])), 4)  # type: ignore[arg-type]

    ious = np.array([float(r["iou"]) for r in rows])  # type: ignore[arg-type]
    buckets = {}
    for low, high, label in AREA_BUCKETS:
        subset = [r for r in rows if low <= float(r["person_area"]) < high]  # type: ignore[arg-type]
        if subset:
            buckets[label] = {"images": len(subset), "iou": mean("iou", subset)}
    # Pooled, not averaged per image, so that the bands add up to the set's pooled 1 - IoU.
    wrong = np.zeros(len(edge_distance_labels()), dtype=np.int64)
    for row in rows:
        wrong += np.asarray(row["wrong_by_edge_distance"])
    union = max(1, sum(int(r["union"]) for r in rows))  # type: ignore[call-overload]
    return {
        "images": len(rows),
        "iou": mean("iou"),
        "median_iou": round(float(np.median(ious)), 4),
        "boundary_f": mean("boundary_f"),
        "mae": mean("mae"),
        "share_iou_below_0.5": round(float((ious < 0.5).mean()), 4),
        "seconds_per_image": mean("seconds"),
        "by_person_area": buckets,
        "wrong_per_union_by_edge_distance": {
            label: round(float(count) / union, 4) for label, count in zip(edge_distance_labels(), wrong, strict=True)
        },
    }


def worst_gallery(
    predict: Predictor, samples: Sequence[Sample], rows: Sequence[dict[str, object]], tile: int = 192
) -> Image.Image:
    """Photo / truth / prediction for the lowest-IoU images, four triples per row."""
    by_stem = {s.stem: s for s in samples}
    worst = sorted(rows, key=lambda r: float(r["iou"]))[:GALLERY_SIZE]  # type: ignore[arg-type]
    tiles = []
    for row in worst:
        sample = by_stem[str(row["stem"])]
        photo = Image.fromarray(oriented_rgb(sample.image))
        truth = Image.open(sample.mask).convert("RGB")
        prediction = Image.fromarray(np.round(predict(sample.image) * 255).astype(np.uint8)).convert("RGB")
        for image in (photo, truth, prediction):
            tiles.append(ImageOps.pad(image, (tile, tile), color=(40, 40, 40)))
    columns = 12
    sheet = Image.new("RGB", (columns * tile, max(1, -(-len(tiles) // columns)) * tile), (40, 40, 40))
    for i, image in enumerate(tiles):
        sheet.paste(image, ((i % columns) * tile, (i // columns) * tile))
    return sheet


def markdown_table(summaries: dict[str, dict[str, object]]) -> str:
    lines = [
        "| model | images | mean IoU | median IoU | boundary F (3 px) | MAE | IoU < 0.5 | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s['images']} | {s['iou']:.3f} | {s['median_iou']:.3f} | {s['boundary_f']:.3f} | "
            f"{s['mae']:.3f} | {float(s['share_iou_below_0.5']):.0%} | {s['seconds_per_image']:.2f} |"  # type: ignore[arg-type]
        )
    labels = [label for *_, label in AREA_BUCKETS]
    lines += [
        "",
        "| model | " + " | ".join(f"IoU, person {label} of image" for label in labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name, s in summaries.items():
        buckets: dict[str, dict[str, float]] = s["by_person_area"]  # type: ignore[assignment]
        cells = [
            f"{buckets[label]['iou']:.3f} ({int(buckets[label]['images'])})" if label in buckets else "-"
            for label in labels
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    distance_labels = edge_distance_labels()
    lines += [
        "",
        "Wrong pixels (pooled over the images, share of the union) by their distance from the true outline:",
        "",
        "| model | " + " | ".join(distance_labels) + " | all (pooled 1 - IoU) |",
        "|---|" + "---|" * (len(distance_labels) + 1),
    ]
    for name, s in summaries.items():
        shares: dict[str, float] = s["wrong_per_union_by_edge_distance"]  # type: ignore[assignment]
        cells = [f"{100 * shares[label]:.1f}%" for label in distance_labels] + [f"{100 * sum(shares.values()):.1f}%"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="'default', a weights folder, a Hub id, or a peer (u2net, u2netp, mediapipe0, mediapipe1, teacher); repeatable",
    )
    parser.add_argument("--source", default="ccp", help="folder under the data root")
    parser.add_argument("--split", default="test",
                        help="train, val, test, all, or another list in train/splits (coco_people: test_original, "
                        "the test photos that pass the original work's filter)")
    parser.add_argument("--masks", type=Path, default=None, help="a pseudo-label set (holding masks/) to score against")
    parser.add_argument("--people-only", action="store_true", help="skip images whose mask is empty")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, help="write per_image.csv, summary.json and worst_<model>.png here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--refine", default="guided", choices=["guided", "none", "matting"], help="edge refinement for our models")
    parser.add_argument("--input-size", type=int, help="run our models at this long side instead of their config's")
    parser.add_argument("--second-pass", action="store_true",
                        help="run each model again on a crop around each group of people it found (an ablation)")
    parser.add_argument("--largest-only", action="store_true",
                        help="keep only the largest connected part each model finds (an ablation)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="alpha at or above which a pixel counts as person for IoU and boundary F (default: %(default)s); "
                        "the reported figures use 0.5, other values show where a model is under- or over-confident")
    args = parser.parse_args(argv)

    samples = select(
        (args.data_root or data_root()) / args.source, args.split, args.masks / "masks" if args.masks else None
    )
    models = args.model or ["default"]
    summaries: dict[str, dict[str, object]] = {}
    all_rows: list[dict[str, object]] = []
    for name in models:
        predict = build_predictor(
            name, device=args.device, refine=args.refine, input_size=args.input_size,
            with_second_pass=args.second_pass, largest_only=args.largest_only,
        )
        rows = score(predict, samples, people_only=args.people_only, threshold=args.threshold)
        summaries[name] = summarise(rows)
        all_rows += [{"model": name, **row} for row in rows]
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            safe = name.replace("/", "_")
            worst_gallery(predict, samples, rows).save(args.out / f"worst_{safe}.png")
    header = {
        "source": args.source,
        "split": args.split,
        "masks": str(args.masks or "human"),
        "refine": args.refine,
        "input_size": args.input_size,
        "second_pass": args.second_pass,
        "largest_only": args.largest_only,
        "threshold": args.threshold,
        "people_only": args.people_only,
    }
    if args.out:
        with (args.out / "per_image.csv").open("w", newline="") as f:
            writer = csv.DictWriter(
                f, fieldnames=["model", "stem", "iou", "boundary_f", "mae", "person_area", "seconds"],
                extrasaction="ignore",
            )
            writer.writeheader()
            writer.writerows(all_rows)
        (args.out / "summary.json").write_text(json.dumps({**header, "models": summaries}, indent=2) + "\n")
    print(json.dumps(header))
    print(markdown_table(summaries))


if __name__ == "__main__":
    main()
