"""Mean person IoU of a model on a split of an images/ + masks/ folder, at full image resolution.

Examples:
    python -m train.evaluate --source ccp --split test                      # embedded default weights
    python -m train.evaluate --model train/runs/cpu-fcdn56/export --source coco128 --split all --csv iou.csv
    python -m train.evaluate --source people/interfaces_cc0 --masks train/pseudo_labels/interfaces_cc0 --split test
                                       # agreement with the teacher's pseudo-labels, not with human labels
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bgremove_plugin.api import BackgroundRemover

from .metrics import person_iou
from .sources import Sample, data_root, folder_samples, read_split_list
from .train import SPLIT_DIR


def select(source: Path, split: str, masks_dir: Path | None = None) -> list[Sample]:
    samples = folder_samples(source, masks_dir)
    if split == "all":
        return samples
    list_file = SPLIT_DIR / f"{source.name}_{split}.txt"
    if not list_file.exists():
        raise SystemExit(f"no split list {list_file}; use --split all or train on {source.name} first")
    wanted = set(read_split_list(list_file))
    return [s for s in samples if s.stem in wanted]


def evaluate(remover: BackgroundRemover, samples: list[Sample], *, people_only: bool = False) -> list[dict[str, object]]:
    rows = []
    for sample in samples:
        truth = np.asarray(Image.open(sample.mask).convert("L"))
        if people_only and not truth.any():
            continue
        alpha = remover.predict_alpha([sample.image])[0]
        rows.append({"stem": sample.stem, "iou": person_iou(alpha, truth), "person_area": float((truth > 127).mean())})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="weights folder or Hub id (default: embedded weights)")
    parser.add_argument("--source", default="ccp", help="folder under the data root")
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    parser.add_argument("--masks", type=Path, default=None, help="a pseudo-label set (holding masks/) to score against")
    parser.add_argument("--people-only", action="store_true", help="skip images whose mask is empty")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--csv", type=Path, help="write per-image IoU here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    samples = select((args.data_root or data_root()) / args.source, args.split, args.masks / "masks" if args.masks else None)
    remover = BackgroundRemover(args.model, device=args.device)
    started = time.time()
    rows = evaluate(remover, samples, people_only=args.people_only)
    ious = np.array([r["iou"] for r in rows], dtype=np.float64)
    summary = {
        "model": args.model or "<default>", "source": args.source, "masks": str(args.masks or "human"), "split": args.split, "images": len(rows),
        "mean_iou": round(float(ious.mean()), 4), "median_iou": round(float(np.median(ious)), 4),
        "share_iou_below_0.5": round(float((ious < 0.5).mean()), 4), "seconds": round(time.time() - started, 1),
    }
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["stem", "iou", "person_area"])
            writer.writeheader()
            writer.writerows(rows)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
