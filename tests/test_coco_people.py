"""COCO's people as training and test data: the teacher's labels held to person boxes, the train-only source,
the original work's filtered test split, and a run that starts from exported weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train.groups import BOX_GROWTH, BOX_MARGIN, MIN_FILL, grow, hold_to_boxes, person_boxes

REPO = Path(__file__).resolve().parents[1]
GROUP_LABELS = REPO / "train" / "pseudo_labels" / "coco_people_groups"


def _teacher(height: int = 100, width: int = 200) -> np.ndarray:
    probability = np.zeros((height, width), dtype=np.float32)
    probability[20:80, 20:50] = 0.9  # a person the teacher found, inside box A
    probability[10:30, 150:190] = 0.95  # something salient outside every box (a sign, or a person nobody boxed)
    probability[40:45, 100:105] = 0.6  # a small bit inside box B, far under MIN_FILL of it
    return probability


def test_the_teacher_is_held_to_the_boxes_it_fills_and_the_rest_is_left_out() -> None:
    box_a, box_b = (20.0, 20.0, 50.0, 80.0), (90.0, 30.0, 120.0, 90.0)
    label = hold_to_boxes(_teacher(), [box_a, box_b])
    assert (label.boxes_filled, label.boxes_unfilled) == (1, 1)
    mask, left_out = label.mask, label.unlabelled > 127
    # Box A: the teacher's probability, x 255.
    assert mask[20:80, 20:50].min() == round(0.9 * 255) and not left_out[20:80, 20:50].any()
    # Box B, grown: out of the loss, its teacher pixels not taught as person either.
    gx0, gy0, gx1, gy1 = grow(box_b, 200, 100)
    assert (gx0, gy0, gx1, gy1) == (85, 22, 125, 98)
    assert left_out[gy0:gy1, gx0:gx1].all() and mask[gy0:gy1, gx0:gx1].max() == 0
    # The confident thing outside every box: out of the loss (grown a little), never taught as person.
    assert left_out[10:30, 150:190].all() and mask[:, 130:].max() == 0
    # Everything else is background that counts.
    assert mask[:, 60:80].max() == 0 and not left_out[:, 60:80].any()
    assert not left_out[90:, :80].any()


def test_a_missed_person_overlapping_a_found_one_keeps_the_found_one() -> None:
    probability = np.zeros((100, 100), dtype=np.float32)
    probability[10:90, 10:40] = 0.8  # found, in box A
    found, missed = (10.0, 10.0, 40.0, 90.0), (30.0, 10.0, 90.0, 90.0)  # B overlaps A's right part (1/6 of B)
    label = hold_to_boxes(probability, [found, missed])
    left_out = label.unlabelled > 127
    assert (label.boxes_filled, label.boxes_unfilled) == (1, 1)
    # The overlap: A's confident pixels stay person; the rest of B (maybe the missed person) is left out.
    assert label.mask[10:90, 30:40].min() == round(0.8 * 255) and not left_out[10:90, 30:40].any()
    assert left_out[10:90, 40:90].all() and label.mask[10:90, 40:].max() == 0
    assert label.mask[10:90, 10:30].min() == round(0.8 * 255) and not left_out[:, :20].any()


def test_a_box_is_filled_from_min_fill_of_its_pixels() -> None:
    probability = np.zeros((50, 50), dtype=np.float32)
    box = (0.0, 0.0, 50.0, 50.0)
    probability[: round(50 * MIN_FILL) - 1] = 1.0
    assert hold_to_boxes(probability, [box]).boxes_filled == 0
    probability[: round(50 * MIN_FILL)] = 1.0
    assert hold_to_boxes(probability, [box]).boxes_filled == 1
    assert BOX_GROWTH > 0 and BOX_MARGIN > 0


def test_committed_group_labels_match_their_photos(data_root: Path) -> None:
    folder = data_root / "coco_people"
    boxes = person_boxes(folder / "annotations" / "instances_people_val2017.json")
    masks = {p.stem: p for p in (GROUP_LABELS / "masks").glob("*.png")}
    single = {p.stem for p in (folder / "masks").glob("*.png")}
    # Every multi-person photo, and only those: the single-person ones have human masks.
    assert len(masks) == len(boxes) == 1648 and set(masks) == set(boxes) and not set(masks) & single
    provenance = json.loads((GROUP_LABELS / "provenance.json").read_text())
    assert provenance["photos"] == 1648 and "u2net" in provenance["teacher"]
    assert provenance["boxes_filled"] + provenance["boxes_unfilled"] == sum(len(b) for _, b in boxes.values())
    assert sum(provenance["photo_licences"].values()) == 1648
    unlabelled = GROUP_LABELS / "unlabelled" / "masks"
    for stem in sorted(masks)[::150]:
        photo = Image.open(folder / "images" / f"{stem}.jpg")
        mask = Image.open(masks[stem])
        assert mask.mode == "L" and mask.size == photo.size
        width, height = photo.size
        outside = np.ones((height, width), dtype=bool)
        for box in boxes[stem][1]:
            x0, y0, x1, y1 = grow(box, width, height)
            outside[y0:y1, x0:x1] = False
        assert np.asarray(mask)[outside].max(initial=0) == 0, stem  # background outside every person box
        if (unlabelled / f"{stem}.png").exists():
            assert Image.open(unlabelled / f"{stem}.png").size == photo.size


def test_the_multi_person_photos_all_train_and_the_single_person_split_is_cocos(data_root: Path) -> None:
    from train.config import NAMED_CONFIGS
    from train.datasets import source_splits

    cfg = NAMED_CONFIGS["coco-fcdn56"]
    humans, groups = [s for s in cfg.sources if s.path == "coco_people"]
    splits = source_splits(groups, cfg.split_seed, data_root)
    assert (len(splits["train"]), splits["val"], splits["test"]) == (1648, [], [])
    splits = source_splits(humans, cfg.split_seed, data_root)
    for name, count in (("train", 732), ("val", 209), ("test", 104)):
        shipped = (data_root / "coco_people" / "splits" / f"{name}.txt").read_text().split()
        assert len(splits[name]) == count and {s.stem for s in splits[name]} <= set(shipped)
    assert humans.validate and not groups.validate and groups.ignore_band > 0


def test_the_original_filter_leaves_34_test_photos_listed_in_the_split_folder(data_root: Path) -> None:
    from train.sources import SPLIT_DIR, coco_person_images, read_split_list

    passing = coco_person_images(data_root / "coco_people" / "annotations" / "instances_people_val2017.json")
    assert len(passing) == 245  # single-person photos only: box-only people have no area to measure
    test = read_split_list(SPLIT_DIR / "coco_people_test.txt")
    listed = read_split_list(SPLIT_DIR / "coco_people_test_original.txt")
    assert listed == [stem for stem in test if int(stem) in passing] and len(listed) == 34
    for stem in listed[:5]:
        share = (np.asarray(Image.open(data_root / "coco_people" / "masks" / f"{stem}.png")) > 127).mean()
        assert 0.19 < share < 0.71


def test_a_new_run_starts_from_exported_weights(tmp_path: Path) -> None:
    from bgremove_plugin.hub import build_from_folder
    from bgremove_plugin.model import TiramisuNet
    from train.config import TrainConfig
    from train.trainer import Trainer

    torch.manual_seed(5)
    weights = tmp_path / "weights"
    TiramisuNet.from_preset("fcdensenet56", input_size=64).save_pretrained(weights)
    data = tmp_path / "data"
    (data / "set" / "images").mkdir(parents=True)
    (data / "set" / "masks").mkdir()
    for i in range(10):
        Image.new("RGB", (64, 64), (i * 20, 50, 50)).save(data / "set" / "images" / f"{i:02d}.jpg")
        Image.new("L", (64, 64), 255 * (i % 2)).save(data / "set" / "masks" / f"{i:02d}.png")
    cfg = TrainConfig(init_weights=str(weights), backgrounds=[], bn_calibration_images=2, resume_warmup_steps=7)
    cfg.sources[0].path = "set"
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), data, split_dir=tmp_path / "splits")
    expected = build_from_folder(weights).state_dict()
    assert all(torch.equal(trainer.model.state_dict()[key], value) for key, value in expected.items())
    assert trainer.warmup_steps_left == 7  # fresh optimiser moments: warmed up like a slim resume
    cfg.init_weights = None
    fresh = Trainer(cfg, tmp_path / "run2", torch.device("cpu"), data, split_dir=tmp_path / "splits")
    assert fresh.warmup_steps_left == 0
    assert not torch.equal(fresh.model.state_dict()["first_conv.weight"], expected["first_conv.weight"])


@pytest.mark.parametrize("name", ["coco_test_original", "coco_test"])
def test_the_candidate_measures_the_coco_test_sets(name: str) -> None:
    from train.candidate import SETS

    source, split, masks, people_only = SETS[name]
    assert source == "coco_people" and masks is None and not people_only
    assert (REPO / "train" / "splits" / f"coco_people_{split}.txt").exists()


def test_validation_reports_each_sources_iou_beside_the_mean(tmp_path: Path) -> None:
    from train.config import SourceConfig, TrainConfig
    from train.data import AugmentConfig
    from train.trainer import Trainer

    data = tmp_path / "data"
    for name, person in (("a", True), ("b", False)):
        (data / name / "images").mkdir(parents=True)
        (data / name / "masks").mkdir()
        for i in range(10):
            Image.new("RGB", (64, 64), (i * 20, 50, 50)).save(data / name / "images" / f"{i:02d}.jpg")
            Image.new("L", (64, 64), 255 if person else 0).save(data / name / "masks" / f"{i:02d}.png")
    cfg = TrainConfig(
        name="t", sources=[SourceConfig("a"), SourceConfig("b")], backgrounds=[], samples_per_epoch=4, batch_size=2,
        val_limit=0, grid_images=1, bn_calibration_images=2, epochs=1, augment=AugmentConfig(patch_size=64, input_size=64),
    )
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), data, split_dir=tmp_path / "splits")
    (tmp_path / "run").mkdir()
    trainer.run(max_minutes=60)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    by_source = row["val_iou_by_source"]
    assert list(by_source) == ["a", "b"]  # two validation photos each (20% of 10)
    assert row["val_iou"] == pytest.approx((by_source["a"] + by_source["b"]) / 2, abs=1e-4)
