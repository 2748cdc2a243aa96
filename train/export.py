"""Turn a run's best checkpoint into a ``save_pretrained`` folder (config.json + model.safetensors).

Examples:
    python -m train.export --run-dir train/runs/cpu-fcdn56 --out bgremove_plugin/weights --fp16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bgremove_plugin.model import TiramisuNet


def export(run_dir: Path, out: Path, *, fp16: bool = False, checkpoint: str = "best.pt") -> dict[str, object]:
    """Write the weights folder and return the checkpoint's metadata (epoch, val IoU, samples seen)."""
    saved = torch.load(run_dir / checkpoint, map_location="cpu", weights_only=True)
    model = TiramisuNet(**saved["model_kwargs"])
    model.load_state_dict(saved["state_dict"], strict=True)
    if fp16:
        # Halves the wheel; load_state_dict casts back to float32 when the package loads it.
        model = model.half()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    info = {key: saved[key] for key in ("epoch", "val_iou", "samples_seen")}
    info["run"] = run_dir.name
    info["dtype"] = "float16" if fp16 else "float32"
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # The mixin writes a generic README.md; the real card is model_card.md at the repo root.
    (out / "README.md").unlink(missing_ok=True)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp16", action="store_true", help="store weights as float16")
    parser.add_argument("--checkpoint", default="best.pt", help="best.pt (default) or another file in the run folder")
    args = parser.parse_args(argv)
    print(json.dumps(export(args.run_dir, args.out, fp16=args.fp16, checkpoint=args.checkpoint)))


if __name__ == "__main__":
    main()
