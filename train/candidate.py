"""Check a checkpoint before shipping it: export it, then measure it where the shipped weights are judged.

Examples:
    python -m train.candidate --run-dir train/runs/cpu-fcdn56 --out /tmp/candidate            # best.pt
    python -m train.candidate --run-dir train/runs/cpu-fcdn56 --checkpoint last.pt --out /tmp/c41
    python -m train.candidate --run-dir train/runs/coco-fcdn56 --checkpoint last.pt --blend-with /tmp/e140 --out /tmp/b
    python -m train.candidate --weights bgremove_plugin/weights --out /tmp/shipped               # the baseline
    python -m train.candidate --report /tmp/c41/summary.json --compare other/candidate.json     # no measuring
    .peers/venv/bin/python -m train.candidate --run-dir train/runs/coco-fcdn56 --out /tmp/c --peers reports/peers

Writes ``<out>/weights`` (float32, threshold calibrated on the run's validation split) and
``<out>/summary.json``, and prints one table: CCP test, coco128 people and held-out portraits (against the
teacher's labels) with the default refinement, plus the mean alpha on the two photos without people that
``tests/test_api.py`` guards (``tests/fixtures/coffee.jpg`` must stay under 0.25) and on coco128's held-out
scenes without people (with the share of them above 0.25), on close-ups of those scenes' annotated
objects (animals, cups: where the weights have called things people) and on windows of COCO's test photos
away from their person. Last, the ship rule's verdict
against ``train/shipped_candidate.json`` (:func:`ship_verdict`), or against any other report with
``--compare``; ``--report`` gives that verdict for a ``summary.json`` measured before, without measuring
again. Copying a candidate into the package is a separate, deliberate step: ``python -m train.export ...
--fp16 --calibrate --onnx``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import away_closeup, closeup, plain_picture
from .evaluate import Predictor, build_predictor, score, select, summarise
from .export import export
from .sources import data_root, object_boxes

REPO = Path(__file__).resolve().parents[1]
SHIPPED_REPORT = REPO / "train" / "shipped_candidate.json"
"""This report for the weights in the package; rewritten whenever weights ship (model_card.md)."""
BEST_PEER_CAT = 0.62
"""The lowest mean alpha any peer gives the close-up cat fixture (U²-Net 0.63, MediaPipe 1 0.62; model card)."""
NO_PERSON_PHOTOS = ("tests/fixtures/coffee.jpg", "tests/fixtures/chelsea.jpg")
SETS = {
    # name: (source folder under the data root, split, pseudo-label set or None, people only)
    # The original work's protocol: COCO's test photos with 1-2 people covering 20-70% of the frame (84.6 there).
    "coco_test_original": ("coco_people", "test_original", None, False),
    "coco_test": ("coco_people", "test", None, False),
    "ccp_test": ("ccp", "test", None, False),
    "coco128_people": ("coco128", "all", None, True),
    "portraits_vs_teacher": ("people/interfaces_cc0", "val", "train/pseudo_labels/interfaces_cc0", False),
}


def scenes_without_people(root: Path) -> list[Path]:
    """coco128's val and test photos whose masks are empty: never trained on (the 14 val ones take part
    in choosing best.pt), so they say whether the model invents people in ordinary scenes."""
    samples = [s for split in ("val", "test") for s in select(root / "coco128", split)]
    return [s.image for s in samples if not np.asarray(Image.open(s.mask)).any()]


def closeup_seed(stem: str) -> int:
    """A seed fixed by the photo's name. COCO's numeric names are their own seed (the windows the model
    card's numbers were measured on); any other name gets a stable hash, not Python's salted ``hash``."""
    return int(stem) if stem.isdigit() else zlib.crc32(stem.encode())


def object_closeups(root: Path, scenes: list[Path]) -> list[np.ndarray]:
    """One close-up per annotated object of ``scenes`` (the held-out scenes without people), the way
    training draws them, with a fixed seed per photo so that every checkpoint is shown the same windows:
    an animal or a cup filling the frame, which is where the weights have called things people."""
    boxes = object_boxes(root / "coco128")
    windows = []
    for photo in scenes:
        image = np.asarray(Image.open(photo).convert("RGB"))
        rng = np.random.default_rng(closeup_seed(photo.stem))
        windows += [closeup(image, rng, box) for box in boxes.get(photo.stem, [])]
    return windows


def coco_test_windows(root: Path) -> tuple[list[str], list[np.ndarray]]:
    """Windows of COCO's single-person test photos that hold no one, cut as training cuts them from its own
    photos (:func:`train.data.away_closeup`, a fixed seed per photo), with their photos' names: 61 of the 104
    photos have one (water, snow, food, rooms, animals; checked by eye for unlabelled people, 2026-12-06).
    Held out like the scenes, and more of them, but parts of photos, enlarged, rather than whole ones."""
    names, windows = [], []
    for sample in select(root / "coco_people", "test"):
        image = np.asarray(Image.open(sample.image).convert("RGB"))
        mask = np.asarray(Image.open(sample.mask))
        window = away_closeup(image, mask, np.random.default_rng(closeup_seed(sample.image.stem)), tries=50)
        if window is not None:
            names.append(sample.image.stem)
            windows.append(window)
    return names, windows


PLAIN_PICTURES = 24
"""How many pictures of nothing (:func:`train.data.plain_picture`, seeds 0-23) the report shows every checkpoint."""
PLAIN_FLOOR = 0.02
"""What the ship rule lets a checkpoint keep of them on average: the video test's floor for an empty wall."""


def pictures_digest(pictures: list[Path] | list[np.ndarray]) -> str:
    """A short fingerprint of a measured set's pictures (a photo's file bytes, a window's pixels), so that
    the ship rule never compares two reports measured on different pictures: the windows and close-ups are
    cut by training's own functions, and a change there would otherwise move the set unnoticed."""
    digest = hashlib.sha256()
    for picture in pictures:
        if isinstance(picture, Path):
            digest.update(picture.read_bytes())
        else:
            digest.update(repr(picture.shape).encode())
            digest.update(np.ascontiguousarray(picture).tobytes())
    return digest.hexdigest()[:16]


def _alpha_summary(
    predict: Predictor, pictures: list[Path] | list[np.ndarray], names: list[str] | None = None
) -> dict[str, object]:
    alphas = [float(np.mean(predict(picture))) for picture in pictures]
    summary: dict[str, object] = {
        "images": len(alphas),
        "mean_alpha": round(float(np.mean(alphas)), 4),
        "share_above_0.25": round(float(np.mean([a > 0.25 for a in alphas])), 3),
        "pictures_digest": pictures_digest(pictures),
    }
    if names is not None:
        # A few scenes carry most of what every model keeps: per photo, two reports say which ones moved.
        summary["per_image_alpha"] = {name: round(alpha, 4) for name, alpha in zip(names, alphas)}
    return summary


def measure_without_people(predict: Predictor, root: Path) -> dict[str, object]:
    """Mean alpha where there is no one to keep: the two test fixtures, the held-out scenes, close-ups of
    their objects and windows of COCO's test photos away from their person."""
    scenes = scenes_without_people(root)
    window_names, windows = coco_test_windows(root)
    return {
        "no_person_mean_alpha": {
            Path(photo).name: round(float(np.mean(predict(REPO / photo))), 4) for photo in NO_PERSON_PHOTOS
        },
        "scenes_without_people": _alpha_summary(predict, scenes, [photo.stem for photo in scenes]),
        "object_closeups": _alpha_summary(predict, object_closeups(root, scenes)),
        "coco_test_windows": _alpha_summary(predict, windows, window_names),
        "plain_pictures": _alpha_summary(
            predict,
            [plain_picture(np.random.default_rng(seed)) for seed in range(PLAIN_PICTURES)],
            [f"seed {seed}" for seed in range(PLAIN_PICTURES)],
        ),
    }


def measure(weights: Path | str, root: Path, *, with_people: bool = True) -> dict[str, object]:
    """Mean IoU / boundary F / MAE on each set with people, then :func:`measure_without_people`."""
    predict = build_predictor(str(weights))
    report: dict[str, object] = {}
    for name, (source, split, masks, people_only) in SETS.items() if with_people else ():
        samples = select(root / source, split, REPO / masks / "masks" if masks else None)
        rows = score(predict, samples, people_only=people_only)
        summary = summarise(rows)
        keys = ("images", "iou", "boundary_f", "mae", "share_iou_below_0.5", "by_person_area")
        # Kept per photo so that the verdict can tell a gain spread over many photos from a few that swung.
        per_image = {str(row["stem"]): round(float(row["iou"]), 4) for row in rows}  # type: ignore[arg-type]
        report[name] = {**{key: summary[key] for key in keys}, "per_image_iou": per_image}
    return {**report, **measure_without_people(predict, root)}


PAIRED_MARGIN = 0.02
"""IoU by which a photo counts as ahead or behind in the verdict's per-photo counts."""


def _photos_in_both(candidate: dict[str, float], shipped: dict[str, float]) -> list[str]:
    """The photos both reports measured, in a fixed order (a new set's photos are not compared)."""
    return sorted(candidate.keys() & shipped.keys())


def paired_counts(candidate: dict[str, float], shipped: dict[str, float], *, margin: float = PAIRED_MARGIN) -> tuple[int, int]:
    """How many photos (measured by both) the candidate is ahead on, and behind on, by more than ``margin`` IoU."""
    both = _photos_in_both(candidate, shipped)
    return (
        sum(candidate[stem] > shipped[stem] + margin for stem in both),
        sum(candidate[stem] < shipped[stem] - margin for stem in both),
    )


def paired_interval(
    candidate: dict[str, float], shipped: dict[str, float], *, draws: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The mean per-photo IoU difference (candidate minus shipped, photos measured by both) and its 95%
    bootstrap interval: an interval that excludes 0 moved the set beyond what resampling its photos explains."""
    differences = np.array([candidate[stem] - shipped[stem] for stem in _photos_in_both(candidate, shipped)])
    if differences.size == 0:
        raise ValueError("no photo was measured in both reports")
    resampled = differences[np.random.default_rng(seed).integers(0, differences.size, (draws, differences.size))]
    low, high = np.percentile(resampled.mean(axis=1), [2.5, 97.5])
    return float(differences.mean()), float(low), float(high)


SHIP_BETTER_ON = ("coco_test", "coco128_people")
"""The sets of real photos a new default must beat the shipped weights on."""
SHIP_NOT_WORSE_ON = ("ccp_test",)
"""Sets where a loss within the noise is accepted: the per-photo difference's 95% interval reaches 0."""


def _set_rule(name: str, candidate: dict[str, Any], other: dict[str, Any], against: str) -> tuple[str, bool]:
    if name not in candidate or name not in other:
        return f"{name}: not measured in both reports", False
    noise_allowed = name in SHIP_NOT_WORSE_ON
    relation = "not below, beyond the noise," if noise_allowed else ">"
    line = f"{name} IoU {candidate[name]['iou']} {relation} {against} {other[name]['iou']}"
    passed = candidate[name]["iou"] > other[name]["iou"]
    if "per_image_iou" in candidate[name] and "per_image_iou" in other[name]:
        ahead, behind = paired_counts(candidate[name]["per_image_iou"], other[name]["per_image_iou"])
        mean, low, high = paired_interval(candidate[name]["per_image_iou"], other[name]["per_image_iou"])
        line += (
            f" (ahead by > {PAIRED_MARGIN} on {ahead} photos, behind on {behind}; per photo {mean:+.4f}, "
            f"95% interval {low:+.4f} to {high:+.4f})"
        )
        if noise_allowed:
            passed = high >= 0
    return line, passed


NO_PERSON_SETS = ("scenes_without_people", "object_closeups", "coco_test_windows")
"""Every held-out set without people that :func:`measure_without_people` measures; the ship rule pools their
photos, since no one set is large or varied enough alone (docs/experiments.md, 2026-12-06)."""


def _pooled(report: dict[str, Any]) -> tuple[int, float, float]:
    """Photos, mean alpha and share above 0.25 over every set of :data:`NO_PERSON_SETS`, photo by photo."""
    sets = [report[name] for name in NO_PERSON_SETS]
    photos = sum(s["images"] for s in sets)
    mean = sum(s["images"] * s["mean_alpha"] for s in sets) / photos
    share = sum(s["images"] * s["share_above_0.25"] for s in sets) / photos
    return photos, round(mean, 4), round(share, 3)


def _no_person_rule(candidate: dict[str, Any], other: dict[str, Any], against: str) -> tuple[str, bool]:
    missing = [name for name in NO_PERSON_SETS if name not in candidate or name not in other]
    if missing:
        return f"photos without people: {', '.join(missing)} not measured in both reports", False
    changed = [
        name
        for name in NO_PERSON_SETS
        if "pictures_digest" in candidate[name]
        and "pictures_digest" in other[name]
        and candidate[name]["pictures_digest"] != other[name]["pictures_digest"]
    ]
    if changed:
        line = (
            f"photos without people: {', '.join(changed)} measured on other pictures than {against}'s "
            "(the code that cuts them changed); measure both reports with this checkout"
        )
        return line, False
    photos, mine, my_share = _pooled(candidate)
    _, theirs, their_share = _pooled(other)
    line = (
        f"{photos} held-out photos without people, pooled: mean alpha {mine} <= {against} {theirs}, "
        f"share above 0.25 {my_share} <= {their_share}"
    )
    details = []
    for name in NO_PERSON_SETS:
        # Informs only: which set moved, and whether beyond what resampling its photos explains.
        detail = f"{name} {candidate[name]['mean_alpha']} vs {other[name]['mean_alpha']}"
        if "per_image_alpha" in candidate[name] and "per_image_alpha" in other[name]:
            mean, low, high = paired_interval(candidate[name]["per_image_alpha"], other[name]["per_image_alpha"])
            detail += f" (per photo {mean:+.4f}, 95% interval {low:+.4f} to {high:+.4f})"
        details.append(detail)
    return f"{line}; {'; '.join(details)}", mine <= theirs and my_share <= their_share


def ship_verdict(
    candidate: dict[str, Any], shipped: dict[str, Any], *, against: str = "shipped"
) -> list[tuple[str, bool]]:
    """The model card's ship rule, one line per condition: better than the shipped weights on COCO's
    single-person test photos and on coco128's people; on CCP no loss beyond the noise (the per-photo
    difference's bootstrap interval, :func:`paired_interval`, reaches 0); no more kept of the held-out photos
    without people, pooled over :data:`NO_PERSON_SETS`, on average or above 0.25 (its line gives each set's
    per-photo difference and interval too, which do not decide); the coffee photo under the test's floor; and
    pictures of nothing (one colour or a gradient) under :data:`PLAIN_FLOOR` on average. Where both reports
    hold per-photo IoUs, a set's line also says on how many photos the candidate is ahead and behind: a mean
    moved by a few photos reads differently from one moved by many. ``against`` names the other report in the
    lines, for when it is not the shipped weights'."""
    rules = [_set_rule(name, candidate, shipped, against) for name in (*SHIP_BETTER_ON, *SHIP_NOT_WORSE_ON)]
    alphas = candidate["no_person_mean_alpha"]
    rules.append((f"coffee.jpg {alphas['coffee.jpg']} < 0.25 (the test's floor)", alphas["coffee.jpg"] < 0.25))
    rules.append(_no_person_rule(candidate, shipped, against))
    if "plain_pictures" not in candidate:
        rules.append(("plain_pictures: not measured", False))
    else:
        plain = candidate["plain_pictures"]["mean_alpha"]
        rules.append((f"plain_pictures {plain} < {PLAIN_FLOOR} (the video test's floor for an empty wall)", plain < PLAIN_FLOOR))
    return rules


def measured_people(report: dict[str, Any]) -> bool:
    """Whether ``report`` holds sets with people (not one made with ``--without-people-only``)."""
    return any(name in report for name in SETS)


def _without_photos(summary: dict[str, Any]) -> dict[str, Any]:
    """An alpha summary without its per-photo values, which are too many for one printed line."""
    return {key: value for key, value in summary.items() if key != "per_image_alpha"}


def _print_most_kept(summary: dict[str, Any]) -> None:
    """The four pictures of a set that keep the most: a few of them usually carry its mean."""
    most_kept = sorted(summary.get("per_image_alpha", {}).items(), key=lambda item: -item[1])[:4]
    if most_kept:
        print("  keeping the most: " + ", ".join(f"{name} {alpha}" for name, alpha in most_kept))


def print_report(report: dict[str, Any]) -> None:
    """The summary table of a report measured with people, or only its photos without people."""
    if measured_people(report):
        print("| set | images | mean IoU | boundary F | MAE | IoU < 0.5 | IoU by person area |\n|---|---|---|---|---|---|---|")
        for name in (name for name in SETS if name in report):
            row = report[name]
            areas = " / ".join(f"{label} {bucket['iou']}" for label, bucket in row["by_person_area"].items())
            print(
                f"| {name} | {row['images']} | {row['iou']} | {row['boundary_f']} | {row['mae']} | "
                f"{row['share_iou_below_0.5']:.0%} | {areas} |"
            )
    print(f"no-person photos, mean alpha: {report['no_person_mean_alpha']}")
    scenes = report["scenes_without_people"]
    print(f"coco128 val/test scenes without people: {_without_photos(scenes)}")
    _print_most_kept(scenes)
    print(f"close-ups of their annotated objects: {report['object_closeups']}")
    if "coco_test_windows" in report:  # reports from before 2026-12-06 do not have them
        print(f"windows of COCO test photos away from their person: {_without_photos(report['coco_test_windows'])}")
    if "plain_pictures" in report:
        print(f"pictures of nothing (one colour or a gradient): {_without_photos(report['plain_pictures'])}")
        _print_most_kept(report["plain_pictures"])


COMPARED_PEERS = ("u2net", "u2netp", "mediapipe0")


def comparison_table(reports: dict[str, dict[str, Any]]) -> str:
    """One markdown row per model: mean IoU on each set with people (threshold 0.5, full resolution) and the
    mean share of the held-out scenes without people that it keeps (with how many it keeps over 0.25)."""
    names = [name for name in SETS if any(name in report for report in reports.values())]
    header = "| model | " + " | ".join(f"{name} ({_images(reports, name)})" for name in names)
    lines = [header + " | scenes without people kept |", "|---" * (len(names) + 2) + "|"]
    for model, report in reports.items():
        cells = [str(report[name]["iou"]) if name in report else "-" for name in names]
        scenes = report["scenes_without_people"]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {scenes['mean_alpha']} ({scenes['share_above_0.25']:.0%} > 0.25) |")
    return "\n".join(lines)


def _images(reports: dict[str, dict[str, Any]], name: str) -> int:
    return next(report[name]["images"] for report in reports.values() if name in report)


def peer_reports(folder: Path, root: Path) -> dict[str, dict[str, Any]]:
    """The peers' reports kept in ``folder`` (``<peer>.json``), measuring and keeping any that is missing
    (that needs the peers' environment). The peers never change, so they are measured once per data."""
    folder.mkdir(parents=True, exist_ok=True)
    reports = {}
    for peer in COMPARED_PEERS:
        path = folder / f"{peer}.json"
        if not path.exists():
            path.write_text(json.dumps(measure(peer, root), indent=2) + "\n")
        reports[peer] = json.loads(path.read_text())
    return reports


def print_verdict(report: dict[str, Any], compare: Path) -> None:
    rules = ship_verdict(report, json.loads(compare.read_text()), against=_report_name(compare))
    print(f"ship rule against {compare}:")
    for rule, passed in rules:
        print(f"  {'pass' if passed else 'FAIL'}  {rule}")
    print("verdict: " + ("ships" if all(passed for _, passed in rules) else "does not ship"))


def _report_name(path: Path) -> str:
    # A run's candidate.json is named by its run folder, a measured summary.json by its --out folder.
    return "shipped" if path.resolve() == SHIPPED_REPORT.resolve() else path.parent.name


def print_comparison(report: dict[str, Any], compare: Path, peers: Path | None, root: Path) -> None:
    """The candidate beside the report it is judged against and, with ``peers``, beside the peers."""
    reports = {"candidate": report, _report_name(compare): json.loads(compare.read_text())}
    if peers is not None:
        reports |= peer_reports(peers, root)
    print(comparison_table(reports))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path, help="a training run; its --checkpoint is exported first")
    source.add_argument("--weights", help="an existing weights folder, measured as it is, or a peer's name "
                        "(u2net, u2netp, mediapipe0, mediapipe1; run with .peers/venv/bin/python)")
    # A quarter of an hour saved for each further comparison of a checkpoint already measured.
    source.add_argument("--report", type=Path,
                        help="a summary.json measured before: print it and its verdict against --compare, "
                        "measuring nothing")
    parser.add_argument("--without-people-only", action="store_true",
                        help="only the photos without people (minutes, not a quarter of an hour, for the slow peers)")
    parser.add_argument("--checkpoint", default="best.pt",
                        help="best.pt (default) or last.pt")
    parser.add_argument("--blend-with", type=Path, metavar="FOLDER",
                        help="with --run-dir: export the checkpoint mixed with these weights (train.export --blend-with)")
    parser.add_argument("--blend-share", type=float, default=0.5,
                        help="the checkpoint's part of the --blend-with mix (default %(default)s)")
    parser.add_argument("--out", type=Path, help="where the weights and summary.json go (required unless --report)")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--peers", type=Path, metavar="FOLDER",
                        help="also print U²-Net, U²-NetP and MediaPipe in one table with the candidate and the shipped "
                        "weights; their reports are kept in FOLDER and measured where missing (in .peers/venv)")
    parser.add_argument("--compare", type=Path, default=SHIPPED_REPORT,
                        help="the shipped weights' summary.json, for the ship rule's verdict (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.report is not None:
        report = json.loads(args.report.read_text())
        print_report(report)
        if not measured_people(report):
            parser.error(f"{args.report} holds only the photos without people; the ship rule needs those with people")
        if not args.compare.exists():
            parser.error(f"--compare {args.compare}: no such report")
        print_comparison(report, args.compare, args.peers, args.data_root or data_root())
        print_verdict(report, args.compare)
        return
    if args.out is None:
        parser.error("--out is required when measuring (--run-dir or --weights)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    root = args.data_root or data_root()
    args.out.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {}
    weights: Path | str = args.weights
    if args.weights is not None and (Path(args.weights) / "training_info.json").exists():
        info = json.loads((Path(args.weights) / "training_info.json").read_text())
    if args.run_dir is not None:
        weights = exported = args.out / "weights"
        info = export(
            args.run_dir, exported, checkpoint=args.checkpoint, calibrate_on=root, data_root=root,
            blend_with=args.blend_with, blend_share=args.blend_share,
        )
    report = {"checkpoint": info, **measure(weights, root, with_people=not args.without_people_only)}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    if measured_people(report) and args.compare.exists():
        print_comparison(report, args.compare, args.peers, root)
        print_verdict(report, args.compare)


if __name__ == "__main__":
    main()
