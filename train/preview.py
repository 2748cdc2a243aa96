"""Contact sheet of cut-outs for photos without masks: photo | predicted mask | cut-out on grey.

Example:
    python -m train.preview ../shared/data/people/interfaces_cc0/images --count 12 --out preview.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from bgremove_plugin.api import BackgroundRemover


def contact_sheet(remover: BackgroundRemover, paths: list[Path], tile: int = 160) -> Image.Image:
    rows = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        mask = remover.predict_masks([image])[0]
        cutout = Image.composite(image, Image.new("RGB", image.size, (128, 128, 128)), mask)
        width = round(image.width * tile / image.height)
        tiles = [im.convert("RGB").resize((width, tile)) for im in (image, mask, cutout)]
        rows.append(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    widest = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, widest - r.shape[1]), (0, 0))) for r in rows]
    return Image.fromarray(np.concatenate(rows, axis=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    chosen = sorted(np.random.default_rng(args.seed).choice(len(paths), size=min(args.count, len(paths)), replace=False))
    sheet = contact_sheet(BackgroundRemover(args.model, device="cpu"), [paths[i] for i in chosen])
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
