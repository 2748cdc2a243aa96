"""Draw docs/edges.png: one crop around hair and shoulders, cut out four ways, on a new background.

Run: python docs/edges_figure.py [photo] [--box left,top,right,bottom]   (matting needs pymatting)
Panels: bilinear upsampling; the guided filter (the default); closed-form matting; matting with colour
decontamination.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from bgremove_plugin import BackgroundRemover

HERE = Path(__file__).resolve().parent
BACKDROP = (40, 90, 200)  # a saturated blue shows both a grey halo and lost hair
PANELS = (
    ("none (bilinear)", {"refine": "none"}),
    ("guided (default)", {"refine": "guided"}),
    ("matting", {"refine": "matting"}),
    ("matting + decontaminate", {"refine": "matting", "decontaminate": True}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", nargs="?", type=Path, default=HERE.parent / "examples" / "astronaut.jpg")
    parser.add_argument("--box", default="150,0,390,170", help="crop in photo pixels: left,top,right,bottom")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "edges.png")
    args = parser.parse_args()
    box = tuple(int(v) for v in args.box.split(","))
    remover = BackgroundRemover(device="cpu")
    photo = Image.open(args.photo)
    tiles = []
    for label, options in PANELS:
        cutout = remover.remove(photo, **options)  # type: ignore[arg-type]
        crop = cutout.crop(box)
        crop = crop.resize((crop.width * args.zoom, crop.height * args.zoom), Image.Resampling.NEAREST)
        tile = Image.new("RGB", (crop.width, crop.height + 24), (255, 255, 255))
        tile.paste(Image.alpha_composite(Image.new("RGBA", crop.size, BACKDROP), crop).convert("RGB"), (0, 24))
        ImageDraw.Draw(tile).text((6, 5), label, fill=(0, 0, 0))
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), tiles[0].height), (255, 255, 255))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 8
    sheet.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
