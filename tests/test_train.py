from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bgremove_plugin import BackgroundRemover, load_model
from train.bystanders import bystander_region, tile_starts, tiled_probability
from train.checkpoint import LOCAL_FULL_CHECKPOINT, resume_checkpoint
from train.config import SourceConfig, TrainConfig
from train.data import (
    IGNORE_LABEL,
    AugmentConfig,
    EpochSampler,
    LoadedSet,
    TrainingStream,
    augment,
    away_closeup,
    closeup,
    crowd_scene,
    filling_window,
    load_set,
    plain_picture,
)
from train.datasets import source_splits
from train.export import export
from train.metrics import (
    boundary_f_score,
    edge_distance_labels,
    errors_by_edge_distance,
    mean_absolute_error,
    person_iou,
)
from train.sources import Sample, coco_person_images, export_coco_folder, folder_samples, split_samples
from train.train import main
from train.trainer import Trainer

COCO_JSON = "coco128/annotations/instances_train2017_coco128.json"


def make_folder_source(root: Path, count: int = 10, size: tuple[int, int] = (96, 128)) -> Path:
    """Synthetic photos: a bright 'person' ellipse on a striped background, with its mask."""
    folder = root / "synthetic"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    for i in range(count):
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        person = ((xx - cx) / (width * 0.2)) ** 2 + ((yy - cy) / (height * 0.35)) ** 2 < 1
        background = np.stack([np.full_like(xx, 40), 80 + (xx % 16) * 8, np.full_like(xx, 200)], axis=-1)
        image = np.where(person[..., None], np.array([230, 60, 40]), background).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i:03d}.jpg")
        Image.fromarray(person.astype(np.uint8) * 255).save(folder / "masks" / f"{i:03d}.png")
    return folder


def tiny_config(**changes: object) -> TrainConfig:
    cfg = TrainConfig(
        name="test", sources=[], backgrounds=[], samples_per_epoch=8, batch_size=2, val_limit=0, grid_images=2,
        augment=AugmentConfig(patch_size=64, input_size=96),
    )
    return dataclasses.replace(cfg, **changes)


# --- data sources -------------------------------------------------------------------------------


def test_coco_filter_keeps_the_expected_twelve_images(data_root: Path) -> None:
    selected = coco_person_images(data_root / COCO_JSON)
    assert sorted(selected) == [36, 165, 294, 326, 370, 428, 436, 446, 459, 474, 572, 623]
    for mask in selected.values():
        assert mask.dtype == np.uint8 and 0.2 <= (mask > 0).mean() <= 0.7


def test_the_candidate_report_scores_only_held_out_scenes_without_people(data_root: Path) -> None:
    from train.candidate import scenes_without_people
    from train.sources import SPLIT_DIR, read_split_list

    scenes = scenes_without_people(data_root)
    assert len(scenes) == 21  # the number the model card's checkpoint comparisons quote
    trained_on = set(read_split_list(SPLIT_DIR / "coco128_train.txt"))
    for photo in scenes:
        assert photo.stem not in trained_on
        assert not np.asarray(Image.open(data_root / "coco128" / "masks" / f"{photo.stem}.png")).any()


def test_the_candidate_report_can_measure_only_the_photos_without_people(
    data_root: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.candidate import NO_PERSON_SETS, SHIPPED_REPORT
    from train.candidate import main as candidate

    candidate(["--weights", str(tiny_weights), "--without-people-only", "--out", str(tmp_path), "--data-root", str(data_root)])
    report = json.loads((tmp_path / "summary.json").read_text())
    assert set(report) == {
        "checkpoint", "no_person_mean_alpha", "scenes_without_people", "object_closeups", "coco_test_windows", "plain_pictures"
    }
    plain = report["plain_pictures"]
    assert plain["images"] == 24 and 0 <= plain["mean_alpha"] <= 1
    assert list(plain["per_image_alpha"])[11] == "seed 11"  # the name to draw it again by
    assert abs(np.mean(list(plain["per_image_alpha"].values())) - plain["mean_alpha"]) < 1e-3
    # The fingerprint of the pictures, not of the weights: the shipped weights' report has the same ones.
    shipped = json.loads(SHIPPED_REPORT.read_text())
    for name in (*NO_PERSON_SETS, "plain_pictures"):
        assert report[name]["pictures_digest"] == shipped[name]["pictures_digest"], name
    # 21 held-out scenes; 75 annotated objects in them of at least 12% of the photo's longer side (2026-12-05)
    assert report["scenes_without_people"]["images"] == 21 and report["object_closeups"]["images"] == 75
    per_scene = report["scenes_without_people"]["per_image_alpha"]
    assert len(per_scene) == 21 and "000000000359" in per_scene and all(0 <= a <= 1 for a in per_scene.values())
    assert abs(np.mean(list(per_scene.values())) - report["scenes_without_people"]["mean_alpha"]) < 1e-3
    assert all(0 <= alpha <= 1 for alpha in report["no_person_mean_alpha"].values())
    printed = capsys.readouterr().out
    assert "mean IoU" not in printed
    # Each set's line without its per-picture values, which follow as the four pictures that keep the most.
    plain_lines = printed.split("pictures of nothing")[1].splitlines()
    assert "per_image_alpha" not in plain_lines[0] and plain_lines[1].count("seed ") == 4


def test_the_candidate_report_shows_every_checkpoint_the_same_object_closeups(data_root: Path) -> None:
    from train.candidate import object_closeups, scenes_without_people

    scenes = scenes_without_people(data_root)
    first, again = object_closeups(data_root, scenes), object_closeups(data_root, scenes)
    assert len(first) >= 20  # about one per annotated animal, cup or other object large enough to fill a frame
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    shapes = {np.asarray(Image.open(p)).shape for p in scenes}
    assert all(window.shape in shapes and window.dtype == np.uint8 for window in first)


def test_the_candidate_report_windows_of_coco_test_photos_hold_no_one_and_never_change(data_root: Path) -> None:
    from train.candidate import coco_test_windows
    from train.sources import SPLIT_DIR, read_split_list

    names, windows = coco_test_windows(data_root)
    assert len(names) == len(windows) == 61  # the count quoted in docs/experiments.md (2026-12-06)
    assert set(names) <= set(read_split_list(SPLIT_DIR / "coco_people_test.txt"))
    again_names, again = coco_test_windows(data_root)
    assert again_names == names and all(np.array_equal(a, b) for a, b in zip(windows, again))
    for name, window in zip(names, windows):
        photo = np.asarray(Image.open(data_root / "coco_people" / "images" / f"{name}.jpg"))
        # Enlarged back to the photo's size, and not the photo itself: a part of it, clear of the person.
        assert window.shape == photo.shape and window.dtype == np.uint8 and not np.array_equal(window, photo)


def _candidate_report(iou: float, scenes: float = 0.02, coffee: float = 0.01, plain: float = 0.01) -> dict[str, object]:
    from train.candidate import SETS

    return {
        **{name: {"iou": iou} for name in SETS},
        "no_person_mean_alpha": {"coffee.jpg": coffee, "chelsea.jpg": 0.3},
        "scenes_without_people": {"images": 21, "mean_alpha": scenes, "share_above_0.25": 0.0},
        "object_closeups": {"images": 75, "mean_alpha": 0.03, "share_above_0.25": 0.01},
        "coco_test_windows": {"images": 61, "mean_alpha": 0.05, "share_above_0.25": 0.05},
        "plain_pictures": {"images": 24, "mean_alpha": plain, "share_above_0.25": 0.0},
    }


def test_the_ship_rule_wants_more_on_real_photos_no_loss_on_ccp_and_no_more_kept_where_there_is_no_one() -> None:
    from train.candidate import ship_verdict

    shipped = _candidate_report(0.90)
    assert all(passed for _, passed in ship_verdict(_candidate_report(0.91), shipped))
    failed = [rule for rule, passed in ship_verdict(_candidate_report(0.90), shipped) if not passed]
    assert [rule.split()[0] for rule in failed] == ["coco_test", "coco128_people", "ccp_test"]  # a tie is not better
    failed = [rule for rule, passed in ship_verdict(_candidate_report(0.91, scenes=0.03, coffee=0.3), shipped) if not passed]
    assert [rule.split()[0] for rule in failed] == ["coffee.jpg", "157"]  # the pooled photos without people
    # Pictures of nothing have a floor of their own, whatever the shipped weights keep of them.
    failed = [rule for rule, passed in ship_verdict(_candidate_report(0.91, plain=0.02), shipped) if not passed]
    assert [rule.split()[0] for rule in failed] == ["plain_pictures"]
    # Pooled photo by photo: 0.21 more of a photo kept over the 21 scenes is paid for by 0.61 less over the 61 windows.
    traded = _candidate_report(0.91, scenes=0.03)
    traded["coco_test_windows"]["mean_alpha"] = 0.04
    assert all(passed for _, passed in ship_verdict(traded, shipped))
    traded["coco_test_windows"]["share_above_0.25"] = 0.07  # one window more over 0.25
    assert [passed for rule, passed in ship_verdict(traded, shipped) if "without people" in rule] == [False]
    # Reports measured on different windows (the code that cuts them changed) are not compared at all.
    moved = _candidate_report(0.91)
    moved["coco_test_windows"]["pictures_digest"], shipped["coco_test_windows"]["pictures_digest"] = "a1", "b2"
    assert [passed for rule, passed in ship_verdict(moved, shipped) if "coco_test_windows measured on other" in rule] == [False]
    del shipped["coco_test_windows"]["pictures_digest"]
    del traded["coco_test_windows"]
    assert ("photos without people: coco_test_windows not measured in both reports", False) in ship_verdict(traded, shipped)
    # CCP: a loss the photos' resampling explains passes, one it does not fails, whatever the mean.
    noisy, shifted = _candidate_report(0.91), _candidate_report(0.91)
    shipped["ccp_test"]["per_image_iou"] = {str(i): 0.9 for i in range(40)}
    noisy["ccp_test"] = {"iou": 0.8975, "per_image_iou": {**shipped["ccp_test"]["per_image_iou"], "0": 0.8}}
    shifted["ccp_test"] = {"iou": 0.8975, "per_image_iou": {str(i): 0.8975 for i in range(40)}}
    verdict = dict(ship_verdict(noisy, shipped))
    assert [passed for rule, passed in verdict.items() if rule.startswith("ccp_test")] == [True]
    verdict = dict(ship_verdict(shifted, shipped))
    assert [passed for rule, passed in verdict.items() if rule.startswith("ccp_test")] == [False]
    del noisy["coco_test"]
    assert ("coco_test: not measured in both reports", False) in ship_verdict(noisy, shipped)


def test_the_ship_rule_says_on_how_many_photos_a_set_moved() -> None:
    from train.candidate import paired_counts, paired_interval, ship_verdict

    shipped_photos = {"a": 0.50, "b": 0.50, "c": 0.50, "d": 0.50}
    candidate_photos = {"a": 0.60, "b": 0.515, "c": 0.40, "d": 0.45, "new": 1.0}  # "new": not in both, not counted
    assert paired_counts(candidate_photos, shipped_photos) == (1, 2)
    shipped, candidate = _candidate_report(0.90), _candidate_report(0.91)
    shipped["coco128_people"]["per_image_iou"] = shipped_photos
    candidate["coco128_people"]["per_image_iou"] = candidate_photos
    lines = dict(ship_verdict(candidate, shipped))
    coco = next(line for line in lines if line.startswith("coco128_people"))
    mean, low, high = paired_interval(candidate_photos, shipped_photos)
    assert mean == pytest.approx(-0.00875) and low < mean < high
    assert coco.endswith(f"(ahead by > 0.02 on 1 photos, behind on 2; per photo {mean:+.4f}, 95% interval {low:+.4f} to {high:+.4f})")
    assert lines[coco]  # informs; the rule is the means'
    assert not any("ahead" in line for line in lines if line.startswith("ccp_test"))  # older reports hold no photos
    # The scenes: one scene kept a little more; the interval is printed, the verdict stays the means'.
    shipped["scenes_without_people"]["per_image_alpha"] = {"x": 0.01, "y": 0.02, "z": 0.03}
    candidate["scenes_without_people"].update(mean_alpha=0.0233, per_image_alpha={"x": 0.01, "y": 0.02, "z": 0.04})
    mean, low, high = paired_interval(candidate["scenes_without_people"]["per_image_alpha"], shipped["scenes_without_people"]["per_image_alpha"])
    pooled = next(line for line in ship_verdict(candidate, shipped) if "without people" in line[0])
    assert f"scenes_without_people 0.0233 vs 0.02 (per photo {mean:+.4f}, 95% interval {low:+.4f} to {high:+.4f})" in pooled[0]
    assert low == 0.0 and not pooled[1]


def test_a_measured_report_is_judged_against_another_without_measuring_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.candidate import main as candidate

    runs = Path(__file__).resolve().parents[1] / "train" / "runs"
    anneal50 = runs / "ablations" / "anneal50-fcdn103" / "candidate.json"
    anneal30 = runs / "ablations" / "anneal-fcdn103" / "candidate.json"
    candidate(["--report", str(anneal50), "--compare", str(anneal30)])
    out = capsys.readouterr().out
    # docs/experiments.md, "Annealing again from epoch 50": the per-photo coco128 line it quotes.
    assert "per photo -0.0349, 95% interval -0.0729 to -0.0016" in out
    assert "| coco128_people | 61 | 0.2834 |" in out and out.rstrip().endswith("verdict: does not ship")
    assert "coco128_people IoU 0.2834 > anneal-fcdn103 0.3182" in out  # names the report it is judged against
    without_people = json.loads(anneal50.read_text())
    for name in ("ccp_test", "coco128_people", "portraits_vs_teacher"):
        del without_people[name]
    partial = tmp_path / "summary.json"
    partial.write_text(json.dumps(without_people))
    with pytest.raises(SystemExit):
        candidate(["--report", str(partial), "--compare", str(anneal30)])
    assert "holds only the photos without people" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        candidate(["--weights", "bgremove_plugin/weights"])  # measuring needs --out
    assert "--out is required" in capsys.readouterr().err


def test_the_paired_interval_says_whether_resampling_the_photos_explains_a_difference() -> None:
    from train.candidate import paired_interval

    shipped = {str(i): 0.5 for i in range(40)}
    everywhere = {stem: iou + 0.01 for stem, iou in shipped.items()}
    assert paired_interval(everywhere, shipped) == pytest.approx((0.01, 0.01, 0.01))
    # The same mean gain from one photo that swung: the interval reaches 0.
    one_photo = {**shipped, "0": 0.9}
    mean, low, high = paired_interval(one_photo, shipped)
    assert mean == pytest.approx(0.01) and low == 0.0 < high
    with pytest.raises(ValueError, match="no photo"):
        paired_interval({"a": 1.0}, {"b": 1.0})


def test_the_shipped_weights_report_is_the_one_of_the_weights_in_the_package() -> None:
    from bgremove_plugin.hub import DEFAULT_WEIGHTS_DIR
    from train.candidate import SETS, SHIPPED_REPORT

    report = json.loads(SHIPPED_REPORT.read_text())
    shipped = json.loads((DEFAULT_WEIGHTS_DIR / "training_info.json").read_text())
    # Stale after a new export until the report is measured again: the ship rule would compare with old weights.
    assert report["checkpoint"] == shipped
    assert all(0 < report[name]["iou"] <= 1 for name in SETS)


def test_closeup_windows_are_seeded_by_any_photo_name() -> None:
    from train.candidate import closeup_seed

    assert closeup_seed("000000000036") == 36  # COCO's names keep the seeds the quoted numbers used
    assert closeup_seed("my photo") == closeup_seed("my photo") != closeup_seed("my photo 2")
    assert closeup_seed("IMG_0001") >= 0


def test_coco_export_writes_a_folder_source(data_root: Path, tmp_path: Path) -> None:
    samples = export_coco_folder(data_root / COCO_JSON, data_root / "coco128" / "images", tmp_path / "coco_people")
    assert len(samples) == 12
    again = folder_samples(tmp_path / "coco_people")
    assert [s.stem for s in again] == sorted(s.stem for s in samples)
    image, mask = Image.open(again[0].image), Image.open(again[0].mask)
    assert image.size == mask.size and mask.mode == "L"


def test_split_is_70_20_10_disjoint_and_seeded() -> None:
    samples = [Sample(f"{i:04d}", Path(f"{i}.jpg"), Path(f"{i}.png")) for i in range(1003)]
    splits = split_samples(samples, seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [702, 201, 100]
    stems = [{s.stem for s in splits[k]} for k in ("train", "val", "test")]
    assert not (stems[0] & stems[1]) and not (stems[0] & stems[2]) and not (stems[1] & stems[2])
    assert split_samples(list(reversed(samples)), seed=0) == splits
    assert split_samples(samples, seed=1)["test"] != splits["test"]


def test_a_grown_source_keeps_its_split_and_splits_only_the_newcomers(tmp_path: Path) -> None:
    from train.datasets import dataset_splits

    folder = make_folder_source(tmp_path, count=10)
    first = {k: [s.stem for s in v] for k, v in dataset_splits(folder, "grow", 0, tmp_path / "splits").items()}
    source = make_folder_source(tmp_path / "more", count=20)  # 20 photos, the first 10 the same names
    for sub in ("images", "masks"):
        for path in sorted((source / sub).iterdir())[10:]:
            path.rename(folder / sub / path.name)
    grown = {k: [s.stem for s in v] for k, v in dataset_splits(folder, "grow", 0, tmp_path / "splits").items()}
    for split in ("train", "val", "test"):
        assert grown[split][: len(first[split])] == first[split], "listed photos never move"
    assert sorted(stem for names in grown.values() for stem in names) == [f"{i:03d}" for i in range(20)]
    assert [len(grown[k]) - len(first[k]) for k in ("train", "val", "test")] == [7, 2, 1]


def test_committed_ccp_split_lists_cover_the_data(data_root: Path) -> None:
    from train.sources import SPLIT_DIR

    lists = {k: (SPLIT_DIR / f"ccp_{k}.txt").read_text().split() for k in ("train", "val", "test")}
    assert [len(v) for v in lists.values()] == [702, 201, 100]
    assert sorted(stem for stems in lists.values() for stem in stems) == sorted(s.stem for s in folder_samples(data_root / "ccp"))


# --- augmentation -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_augmentation_keeps_image_and_mask_aligned(tmp_path: Path, seed: int) -> None:
    height, width = 120, 80
    yy, xx = np.mgrid[:height, :width]
    person = ((xx - 40) / 18.0) ** 2 + ((yy - 60) / 45.0) ** 2 < 1
    image = np.where(person[..., None], [255, 0, 0], [0, 0, 255]).astype(np.uint8)
    cfg = AugmentConfig(patch_size=64, input_size=96, color_jitter=0.0, noise_prob=0.0, blur_prob=0.0, grayscale_prob=0.0)
    out_image, out_mask = augment(image, person.astype(np.uint8) * 255, cfg, np.random.default_rng(seed))
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    assert set(np.unique(out_mask)) <= {0, 1}
    red = out_image[..., 0].astype(int) > out_image[..., 2].astype(int) + 60
    agreement = (red == out_mask.astype(bool)).mean()
    assert agreement > 0.95


def test_soft_masks_leave_the_uncertain_band_out_of_the_loss() -> None:
    height, width = 64, 64
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))  # a teacher unsure mid-image
    image = np.zeros((height, width, 3), dtype=np.uint8)
    cfg = AugmentConfig(patch_size=64, input_size=64, portrait_prob=0.0, scale_jitter=(1.0, 1.0), flip_prob=0.0)
    _, hard = augment(image, ramp, cfg, np.random.default_rng(0))
    _, banded = augment(image, ramp, cfg, np.random.default_rng(0), ignore_band=0.2)
    assert set(np.unique(hard)) <= {0, 1}
    assert set(np.unique(banded)) == {0, 1, IGNORE_LABEL}
    kept = banded != IGNORE_LABEL
    np.testing.assert_array_equal(banded[kept], hard[kept])  # the band only removes pixels, never flips them
    assert 0.02 < (~kept).mean() < 0.9


def test_portrait_crops_enlarge_the_person() -> None:
    height, width = 300, 200
    person = np.zeros((height, width), dtype=np.uint8)
    person[40:290, 80:120] = 255  # a thin, full-height "body"
    image = np.zeros((height, width, 3), dtype=np.uint8)
    portrait = AugmentConfig(patch_size=64, input_size=96, portrait_prob=1.0)
    scene = AugmentConfig(patch_size=64, input_size=96, portrait_prob=0.0)
    share_portrait = np.mean([augment(image, person, portrait, np.random.default_rng(s))[1].mean() for s in range(10)])
    share_scene = np.mean([augment(image, person, scene, np.random.default_rng(s))[1].mean() for s in range(10)])
    assert share_portrait > 1.5 * share_scene


def _red_person(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    person = np.zeros((height, width), dtype=np.uint8)
    person[10 : height - 10, width // 3 : 2 * width // 3] = 255
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[person > 0] = (255, 0, 0)
    return image, person


@pytest.mark.parametrize("seed", range(8))
def test_crowd_scenes_label_exactly_the_pasted_people(seed: int) -> None:
    background = np.zeros((200, 300, 3), dtype=np.uint8)
    background[...] = (0, 0, 255)
    people = [_red_person(160, 90) for _ in range(3)]
    scene, mask = crowd_scene(people, background, np.random.default_rng(seed))
    assert scene.shape == background.shape and mask.shape == background.shape[:2]
    red = scene[..., 0].astype(int) > scene[..., 2].astype(int)
    assert (red == (mask > 127)).mean() > 0.99
    person_height = np.nonzero((mask > 127).any(axis=1))[0]
    assert 0 < len(person_height) and (mask > 127).mean() < 0.5  # small people, not the whole frame


def test_crowds_replace_only_draws_of_human_labelled_people() -> None:
    image, mask = _red_person(160, 90)
    people = LoadedSet(["p"], [image], [mask], name="people")
    empty = LoadedSet(["e"], [np.zeros_like(image)], [np.zeros_like(mask)], name="empty")
    background = np.zeros((200, 300, 3), dtype=np.uint8)
    cfg = AugmentConfig(patch_size=64, input_size=96, portrait_prob=0.0, crowd_prob=1.0, composite_prob=0.0)
    crowds = TrainingStream(EpochSampler([people, empty], seed=0), 0, 40, cfg, [background])
    plain = TrainingStream(EpochSampler([people, empty], seed=0), 0, 40, dataclasses.replace(cfg, crowd_prob=0.0), [background])
    assert [s.name for s in crowds.crowd_sets] == ["people"]
    for i, (set_id, _) in enumerate(crowds.draws):
        crowd_mask, plain_mask = crowds[i][1], plain[i][1]
        if set_id == 1:
            assert torch.equal(crowd_mask, plain_mask) and not crowd_mask.any()
        else:
            # the same photo, pasted small: a smaller share of the crop is person
            assert crowd_mask.float().mean() < plain_mask.float().mean() or not plain_mask.any()


def _subject_and_bystander(height: int = 120, width: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red subject (labelled) at the left and a red passer-by (unlabelled) at the right, its region marked."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[...] = (0, 0, 255)
    subject = np.zeros((height, width), dtype=np.uint8)
    subject[10:110, 15:45] = 255
    region = np.zeros((height, width), dtype=np.uint8)
    region[40:100, 80:100] = 255
    image[(subject > 0) | (region > 0)] = (255, 0, 0)
    return image, subject, region


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_ignore_regions_leave_the_unlabelled_people_out_of_the_loss_and_flip_with_the_crop(flip: float) -> None:
    image, subject, region = _subject_and_bystander()
    cfg = AugmentConfig(patch_size=120, input_size=120, scale_jitter=(1.0, 1.0), portrait_prob=0.0, flip_prob=flip,
                        color_jitter=0.0, noise_prob=0.0, blur_prob=0.0, grayscale_prob=0.0)
    _, plain = augment(image, subject, cfg, np.random.default_rng(3))
    out_image, marked = augment(image, subject, cfg, np.random.default_rng(3), ignore_region=region)
    left_out = marked == IGNORE_LABEL
    np.testing.assert_array_equal(marked[~left_out], plain[~left_out])  # the region removes pixels, never flips them
    red = out_image[..., 0].astype(int) > out_image[..., 2].astype(int)
    # What is left out is the red passer-by, not the subject: red, and labelled background before.
    assert left_out.sum() > 500 and red[left_out].mean() > 0.9 and not plain[left_out].any()
    assert (plain == 1).sum() > 1000 and not left_out[plain == 1].any()


def test_a_photo_pasted_onto_another_background_keeps_no_ignore_region() -> None:
    image, subject, region = _subject_and_bystander()
    background = np.zeros((120, 120, 3), dtype=np.uint8)
    cfg = AugmentConfig(patch_size=120, input_size=120, scale_jitter=(1.0, 1.0), portrait_prob=0.0, composite_prob=1.0)
    for seed in range(4):
        _, mask = augment(image, subject, cfg, np.random.default_rng(seed), [background], ignore_region=region)
        assert set(np.unique(mask)) == {0, 1}


def test_load_set_reads_ignore_regions_where_a_photo_has_one(tmp_path: Path) -> None:
    folder = make_folder_source(tmp_path, count=3, size=(200, 100))
    regions = tmp_path / "regions"
    regions.mkdir()
    marked = np.zeros((100, 200), dtype=np.uint8)
    marked[:, 150:] = 255
    Image.fromarray(marked).save(regions / "001.png")
    loaded = load_set(folder_samples(folder), long_side=100, ignore_dir=regions)
    assert [r is None for r in loaded.ignore_regions] == [True, False, True]
    region = loaded.ignore_regions[1]
    assert region is not None and region.shape == loaded.masks[1].shape == (50, 100)  # scaled with the photo
    assert region[:, 80:].min() == 255 and region[:, :70].max() == 0
    with pytest.raises(FileNotFoundError, match="ignore regions"):
        load_set(folder_samples(folder), ignore_dir=tmp_path / "missing")

    stream = TrainingStream(EpochSampler([loaded], seed=0), 0, 30, AugmentConfig(patch_size=48, input_size=100), [])
    left_out = [bool((stream[i][1] == IGNORE_LABEL).any()) for i in range(len(stream))]
    drawn = [index for _, index in stream.draws]
    assert any(left_out) and all(index == 1 for index, out in zip(drawn, left_out) if out)


def test_a_source_with_ignore_regions_trains_without_them_in_validation(tmp_path: Path) -> None:
    make_folder_source(tmp_path)
    regions = tmp_path / "regions" / "masks"
    regions.mkdir(parents=True)
    for stem in ("000", "001", "002", "003", "004", "005", "006", "007", "008", "009"):
        Image.fromarray(np.full((128, 96), 255, dtype=np.uint8)).save(regions / f"{stem}.png")
    source = SourceConfig("synthetic", ignore_regions=str(tmp_path / "regions"))
    trainer = Trainer(tiny_config(sources=[source]), tmp_path / "run", torch.device("cpu"), tmp_path, split_dir=tmp_path / "splits")
    (train_set,) = trainer.sampler.sets
    assert len(train_set.ignore_regions) == len(train_set.images) and all(r is not None for r in train_set.ignore_regions)
    assert not trainer.val.ignore_regions


@pytest.mark.parametrize(("length", "tile"), [(825, 412), (550, 412), (412, 412), (300, 412), (1000, 100)])
def test_tiles_cover_the_photo_with_overlap(length: int, tile: int) -> None:
    starts = tile_starts(length, tile)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= tile * 0.75 + 1).all()


def _blind_to_small_red_people(rgb: np.ndarray) -> np.ndarray:
    """A stand-in selfie model: finds red people only where they fill over 5% of what it is shown."""
    red = (rgb[..., 0] > 127) & (rgb[..., 2] < 127)
    return (red if red.mean() > 0.05 else np.zeros_like(red)).astype(np.float32)


def test_tiles_find_the_passers_by_the_whole_photo_misses_and_spare_the_subject() -> None:
    height, width = 300, 200
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[...] = (0, 0, 255)
    subject = np.zeros((height, width), dtype=bool)
    subject[20:280, 40:100] = True
    passer_by = np.zeros((height, width), dtype=bool)
    passer_by[200:260, 160:185] = True  # 2.5% of the photo: the whole view misses it, a tile does not
    rgb[passer_by] = (255, 0, 0)
    assert not _blind_to_small_red_people(rgb).any()
    probability = tiled_probability(rgb, _blind_to_small_red_people)
    assert probability[passer_by].min() == 1.0 and probability[~passer_by].max() == 0.0

    rgb[subject] = (255, 0, 0)  # now the subject, too, is red and is found
    region = bystander_region(tiled_probability(rgb, _blind_to_small_red_people), subject, subject_margin=10, growth=4)
    assert region[passer_by].all()
    ys, xs = np.nonzero(region)
    assert xs.min() >= 160 - 4 and ys.min() >= 200 - 4  # the passer-by, grown a little, and nothing of the subject


def test_a_loaded_set_scans_its_masks_once_for_empty_and_confident_people() -> None:
    person = np.zeros((20, 20), dtype=np.uint8)
    person[5:15, 5:15] = 255
    faint = np.full((20, 20), 60, dtype=np.uint8)  # a teacher's unsure haze: neither empty nor a person
    loaded = LoadedSet(["p", "f", "e"], [np.zeros((20, 20, 3), np.uint8)] * 3, [person, faint, np.zeros_like(person)])
    assert loaded.mask_peaks.tolist() == [255, 60, 0]
    loaded.masks[2] = person  # the scan is kept for the run: sets are never edited after loading
    assert loaded.mask_peaks.tolist() == [255, 60, 0]

    hazy = LoadedSet(["f"], [np.zeros((20, 20, 3), np.uint8)], [faint], name="hazy")
    cfg = AugmentConfig(patch_size=16, input_size=16, crowd_prob=1.0)
    stream = TrainingStream(EpochSampler([hazy], seed=0), 0, 4, cfg, [np.zeros((30, 30, 3), np.uint8)])
    assert stream.crowd_sets == [] and stream.empty_masks[0].tolist() == [False]


def test_closeup_enlarges_one_window_of_the_photo() -> None:
    # A horizontal ramp: a window of it, enlarged, spans a narrower range of values than the whole.
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (200, 1, 3))
    for seed in range(5):
        zoomed = closeup(ramp, np.random.default_rng(seed))
        assert zoomed.shape == ramp.shape and zoomed.dtype == np.uint8
        assert 0.15 * 255 < int(zoomed.max()) - int(zoomed.min()) < 0.55 * 255


def test_closeups_change_only_photos_without_people() -> None:
    image, mask = _red_person(160, 90)
    people = LoadedSet(["p"], [image], [mask], name="people")
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8)[None, :, None], (160, 1, 3))
    empty = LoadedSet(["e"], [ramp], [np.zeros_like(mask)], name="empty")
    cfg = AugmentConfig(patch_size=64, input_size=96, portrait_prob=0.0, composite_prob=0.0, color_jitter=0.0,
                        noise_prob=0.0, blur_prob=0.0, grayscale_prob=0.0, closeup_prob=1.0)
    zoomed = TrainingStream(EpochSampler([people, empty], seed=0), 0, 40, cfg, [])
    plain = TrainingStream(EpochSampler([people, empty], seed=0), 0, 40, dataclasses.replace(cfg, closeup_prob=0.0), [])
    zoomed_steps, plain_steps = [], []
    for i, (set_id, _) in enumerate(zoomed.draws):
        (zoomed_image, zoomed_mask), (plain_image, plain_mask) = zoomed[i], plain[i]
        if set_id == 0:
            assert torch.equal(zoomed_image, plain_image) and torch.equal(zoomed_mask, plain_mask)
        else:
            assert not zoomed_mask.any()
            zoomed_steps.append(zoomed_image[0].diff(dim=1).abs().mean().item())
            plain_steps.append(plain_image[0].diff(dim=1).abs().mean().item())
    # The enlarged window's ramp is flatter: smaller steps between neighbouring columns, on average
    # (single crops vary with scale jitter and the padding of crops past the photo's edge).
    assert len(zoomed_steps) > 5 and np.mean(zoomed_steps) < 0.7 * np.mean(plain_steps)


@pytest.mark.parametrize("seed", range(6))
def test_a_window_without_people_clears_the_person_and_the_left_out_by_the_margin(seed: int) -> None:
    # A labelled subject (columns 15-44) and a passer-by left out (80-99), both the photo's full height, on a
    # background that grows brighter to the right, so that a window's columns can be read from its pixels.
    ramp = np.linspace(0, 255, 300)
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[..., 1] = ramp.astype(np.uint8)[None, :]
    subject, region = np.zeros((200, 300), dtype=np.uint8), np.zeros((200, 300), dtype=np.uint8)
    subject[:, 15:45], region[:, 80:100] = 255, 255
    image[(subject > 0) | (region > 0), 0] = 255
    window = away_closeup(image, subject, np.random.default_rng(seed), region)
    assert window is not None and window.shape == image.shape and window.dtype == np.uint8
    assert not (window[..., 0] > 127).any()  # no red: no one labelled, no one left out
    # The margin (6% of 300 px = 18 px) leaves no room between the two: only columns from 100 + 18 on.
    assert window[..., 1].min() >= ramp[118] - 2


def test_a_photo_filled_with_people_has_no_window_without_them() -> None:
    image, mask = _red_person(160, 90)
    assert away_closeup(image, np.full_like(mask, 255), np.random.default_rng(0)) is None
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8)[None, :, None], (160, 1, 3))
    assert away_closeup(ramp, np.zeros_like(mask), np.random.default_rng(0)) is not None


def test_windows_without_people_replace_only_draws_of_human_labelled_photos_and_are_taught_as_background() -> None:
    image, subject, region = _subject_and_bystander(200, 300)
    human = LoadedSet(["h"], [image], [subject], name="human", ignore_regions=[region])
    soft = subject.copy()
    soft[soft > 0] = 200
    taught = LoadedSet(["t"], [image], [soft], name="teacher", ignore_band=0.2)
    cfg = AugmentConfig(patch_size=64, input_size=96, portrait_prob=0.0, composite_prob=0.0, away_prob=1.0)
    away = TrainingStream(EpochSampler([human, taught], seed=0), 0, 60, cfg, [])
    plain = TrainingStream(EpochSampler([human, taught], seed=0), 0, 60, dataclasses.replace(cfg, away_prob=0.0), [])
    assert away.away_set_ids == {0} and plain.away_set_ids == set()
    emptied = 0
    for i, (set_id, _) in enumerate(away.draws):
        (away_image, away_mask), (plain_image, plain_mask) = away[i], plain[i]
        if set_id == 1:
            assert torch.equal(away_image, plain_image) and torch.equal(away_mask, plain_mask)
        else:
            # every pixel is a trained background pixel: no person, nothing left out of the loss
            assert not away_mask.any()
            emptied += 1
    assert emptied > 10

    # A teacher's labels held to human boxes (train.groups: everyone it missed is in the left-out regions)
    # take part when the source says so, and their windows clear the teacher's person and the passer-by.
    boxed = LoadedSet(["b"], [image], [soft], name="boxed teacher", ignore_band=0.2, ignore_regions=[region], away_windows=True)
    away = TrainingStream(EpochSampler([human, boxed], seed=0), 0, 60, cfg, [])
    assert away.away_set_ids == {0, 1}
    red = (1.0 - cfg.mean[0]) / cfg.std[0]  # the people's red channel, normalised
    windows = [away[i] for i, (set_id, _) in enumerate(away.draws) if set_id == 1]
    assert len(windows) > 10
    for window_image, window_mask in windows:
        assert not window_mask.any()
        assert not (window_image[0] > red - 0.5).any()


def test_plain_pictures_are_empty_smooth_and_replace_any_draw_only_when_asked_for() -> None:
    rng = np.random.default_rng(0)
    pictures = [plain_picture(rng) for _ in range(40)]
    for picture in pictures:
        assert picture.dtype == np.uint8 and picture.ndim == 3 and 200 <= max(picture.shape[:2]) <= 640
        # Nothing in it: neighbouring pixels differ by the faint noise and the gradient's step only.
        assert np.abs(np.diff(picture.astype(np.int16), axis=1)).mean() < 6
    # Both kinds come out: one colour (the same colour in both corners) and a gradient between two.
    corner_gaps = [np.abs(p[0, 0].astype(int) - p[-1, -1].astype(int)).max() for p in pictures]
    assert min(corner_gaps) < 20 and max(corner_gaps) > 100

    image, subject, region = _subject_and_bystander(200, 300)
    human = LoadedSet(["h"], [image], [subject], name="human", ignore_regions=[region])
    cfg = AugmentConfig(patch_size=64, input_size=96, portrait_prob=0.0, composite_prob=0.0)
    usual = TrainingStream(EpochSampler([human], seed=0), 0, 30, cfg, [])
    off = TrainingStream(EpochSampler([human], seed=0), 0, 30, dataclasses.replace(cfg, plain_prob=0.0), [])
    plain = TrainingStream(EpochSampler([human], seed=0), 0, 30, dataclasses.replace(cfg, plain_prob=1.0), [])
    people = 0
    for i in range(30):
        assert torch.equal(usual[i][0], off[i][0]) and torch.equal(usual[i][1], off[i][1])
        people += int(usual[i][1].eq(1).any())
        plain_image, plain_mask = plain[i]
        assert plain_image.shape == (3, 64, 64) and not plain_mask.any()  # all of it trained, as background
        # Smooth: the faint noise and the gradient's step, never the person's red edge against the ramp.
        assert plain_image.diff(dim=2).abs().mean() < 0.3
    assert people > 10


def test_plain_pictures_fill_the_whole_crop_when_asked_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # One magenta far from the mean colour that fills a crop's overhang, and no photometric change but white balance.
    magenta = np.zeros((300, 500, 3), dtype=np.uint8) + np.array([250, 10, 250], dtype=np.uint8)
    monkeypatch.setattr("train.data.plain_picture", lambda rng: magenta)
    human = LoadedSet(["h"], [magenta], [np.zeros((300, 500), dtype=np.uint8)], name="human")
    cfg = AugmentConfig(
        patch_size=64, input_size=64, plain_prob=1.0, color_jitter=0.0, noise_prob=0.0, blur_prob=0.0, grayscale_prob=0.0
    )
    red_at_200 = (200 / 255 - cfg.mean[0]) / cfg.std[0]
    cut_like_photos = TrainingStream(EpochSampler([human], seed=0), 0, 20, cfg, [])
    filling = TrainingStream(EpochSampler([human], seed=0), 0, 20, dataclasses.replace(cfg, plain_fills_crop=True), [])
    assert sum(bool((cut_like_photos[i][0][0] < red_at_200).any()) for i in range(20)) > 10
    for i in range(20):
        image, mask = filling[i]
        assert image.shape == (3, 64, 64) and not mask.any()
        assert (image[0] > red_at_200).all()  # magenta to the crop's every edge: no filler
    # Any aspect, even a strip: the window is square and every pixel of it comes from the picture.
    strip = np.full((7, 90, 3), 33, dtype=np.uint8)
    window = filling_window(strip, 32, np.random.default_rng(1))
    assert window.shape == (32, 32, 3) and (window == 33).all()


def _write_coco_boxes(folder: Path, photos: dict[str, tuple[int, int]], boxes: list[tuple[str, str, list[float], int]]) -> None:
    """A COCO-format annotations/ file: photos as stem -> (width, height); boxes as (stem, category, xywh, iscrowd)."""
    categories = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}]
    ids = {name: i for i, name in enumerate(photos, start=1)}
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "instances.json").write_text(json.dumps({
        "categories": categories,
        "images": [{"id": ids[stem], "file_name": f"{stem}.jpg", "width": w, "height": h} for stem, (w, h) in photos.items()],
        "annotations": [
            {"id": n, "image_id": ids[stem], "category_id": next(c["id"] for c in categories if c["name"] == name),
             "bbox": bbox, "iscrowd": crowd}
            for n, (stem, name, bbox, crowd) in enumerate(boxes)
        ],
    }))


def test_object_boxes_are_fractions_of_the_photo_without_people_crowds_or_specks(tmp_path: Path) -> None:
    from train.sources import object_boxes

    _write_coco_boxes(tmp_path, {"a": (200, 100), "b": (100, 100)}, [
        ("a", "cat", [20, 10, 100, 50], 0),
        ("a", "person", [0, 0, 200, 100], 0),
        ("a", "cat", [0, 0, 10, 10], 0),  # 5% of the width: too small to fill a close-up
        ("b", "cat", [0, 0, 100, 100], 1),  # a crowd region, not one object
    ])
    assert object_boxes(tmp_path) == {"a": [(0.1, 0.1, 0.6, 0.6)]}
    assert object_boxes(tmp_path / "no-such-source") == {}


def test_coco128_scenes_without_people_have_object_boxes(data_root: Path) -> None:
    from train.sources import object_boxes

    boxes = object_boxes(data_root / "coco128")
    empty = [p.stem for p in (data_root / "coco128" / "masks").glob("*.png") if not np.asarray(Image.open(p)).any()]
    assert sum(stem in boxes for stem in empty) > len(empty) // 2
    assert "000000000599" in boxes  # a cat filling a quarter of the photo, in the training split
    assert all(0 <= a < c <= 1 and 0 <= b < d <= 1 for photo in boxes.values() for a, b, c, d in photo)


@pytest.mark.parametrize("seed", range(6))
def test_an_object_closeup_is_filled_by_its_object(seed: int) -> None:
    scene = np.zeros((200, 300, 3), dtype=np.uint8)
    scene[60:120, 200:260] = 255  # the object: a fifth of the height, at the right
    box = (200 / 300, 60 / 200, 260 / 300, 120 / 200)
    zoomed = closeup(scene, np.random.default_rng(seed), box)
    assert zoomed.shape == scene.shape
    # The window is 1.15-1.6 times the box's longer side (shifted by up to a tenth), so the object covers
    # roughly 1/1.6^2 to 1/1.15^2 of a square's share of the frame.
    share = (zoomed[..., 0] > 127).mean()
    assert 0.2 < share < 0.8, share
    random_shares = [(closeup(scene, np.random.default_rng(s))[..., 0] > 127).mean() for s in range(20)]
    assert share > 2 * np.mean(random_shares)


def test_object_closeups_use_the_boxes_only_when_enabled() -> None:
    scene = np.zeros((200, 300, 3), dtype=np.uint8)
    scene[60:120, 200:260] = 255
    empty = LoadedSet(["e"], [scene], [np.zeros((200, 300), np.uint8)], name="empty")
    empty.object_boxes = [[(200 / 300, 60 / 200, 260 / 300, 120 / 200)]]
    no_boxes = LoadedSet(["e"], [scene], [np.zeros((200, 300), np.uint8)], name="empty")
    cfg = AugmentConfig(patch_size=96, input_size=96, scale_jitter=(1.0, 1.0), portrait_prob=0.0, composite_prob=0.0,
                        color_jitter=0.0, noise_prob=0.0, blur_prob=0.0, grayscale_prob=0.0, closeup_prob=1.0)

    def bright_share(loaded: LoadedSet, object_closeup_prob: float) -> list[float]:
        stream = TrainingStream(EpochSampler([loaded], seed=0), 0, 24, dataclasses.replace(cfg, object_closeup_prob=object_closeup_prob), [])
        return [float((stream[i][0][0] > 0).float().mean()) for i in range(len(stream))]

    # Off, the boxes change nothing: a run that had no boxes keeps its exact sample stream.
    assert bright_share(empty, 0.0) == bright_share(no_boxes, 0.0) == bright_share(no_boxes, 1.0)
    # On, every close-up holds the object; random windows miss it in some draws.
    assert min(bright_share(empty, 1.0)) > 0.05 and min(bright_share(empty, 0.0)) == 0.0


def test_person_iou_edge_cases() -> None:
    truth = np.zeros((4, 4), dtype=np.uint8)
    assert person_iou(np.zeros((4, 4)), truth) == 1.0
    truth[:2] = 255
    assert person_iou(np.zeros((4, 4)), truth) == 0.0
    prob = np.zeros((4, 4))
    prob[:1] = 0.9
    assert person_iou(prob, truth) == pytest.approx(0.5)


def test_boundary_f_score_scores_outlines_not_areas() -> None:
    truth = np.zeros((120, 100), dtype=np.uint8)
    truth[20:100, 30:70] = 255
    exact = truth / 255.0
    assert boundary_f_score(exact, truth) == 1.0
    near = np.roll(exact, 2, axis=1)  # within the 3 px tolerance
    far = np.roll(exact, 8, axis=1)
    assert boundary_f_score(near, truth) == 1.0
    assert boundary_f_score(far, truth) < 0.6 < person_iou(far, truth)
    assert boundary_f_score(np.zeros((8, 8)), np.zeros((8, 8), np.uint8)) == 1.0
    assert boundary_f_score(np.zeros((120, 100)), truth) == 0.0
    # A person filling the frame has no outline inside the image: nothing to miss.
    assert boundary_f_score(np.ones((8, 8)), np.full((8, 8), 255, np.uint8)) == 1.0


def test_errors_by_edge_distance_tell_a_shifted_outline_from_a_missed_region() -> None:
    truth = np.zeros((120, 100), dtype=np.uint8)
    truth[20:100, 30:70] = 255
    exact = truth / 255.0
    assert errors_by_edge_distance(exact, truth) == ([0] * 6, 80 * 40)
    shifted, union = errors_by_edge_distance(np.roll(exact, 1, axis=1), truth)
    assert shifted == [160, 0, 0, 0, 0, 0] and union == 80 * 41  # one column missed, one kept, both at the edge
    legless = exact.copy()
    legless[60:100, 30:70] = 0.0  # the lower half missed: most of it far inside the outline
    wrong, _ = errors_by_edge_distance(legless, truth)
    assert sum(wrong) == 40 * 40 and wrong[0] < wrong[3] and wrong[0] + wrong[1] < sum(wrong[2:])
    assert wrong[5] == 0  # nothing in a 40-px-wide figure is 40 px from its outline
    blob = np.zeros((120, 100))
    blob[0:10, 0:10] = 1.0  # background kept far from the person
    assert errors_by_edge_distance(blob, np.zeros_like(truth)) == ([0, 0, 0, 0, 0, 100], 100)  # no outline: all far
    assert errors_by_edge_distance(blob, truth)[0][4] == 100  # 20 to 40 px from the figure's corner
    assert edge_distance_labels() == ["0-2 px", "2-5 px", "5-10 px", "10-20 px", "20-40 px", ">=40 px"]


def test_mean_absolute_error_of_soft_masks() -> None:
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[:5] = 255
    assert mean_absolute_error(truth / 255.0, truth) == 0.0
    assert mean_absolute_error(np.full((10, 10), 0.5), truth) == pytest.approx(0.5)
    assert mean_absolute_error(1.0 - truth / 255.0, truth) == pytest.approx(1.0)


# --- loop, resume, export ------------------------------------------------------------------------


def _trainer(tmp_path: Path, run: str, epochs: int, *, compile: str = "", slim: bool = False) -> Trainer:
    source = tmp_path / "synthetic"
    if not source.exists():
        make_folder_source(tmp_path)
    cfg = tiny_config(epochs=epochs, sources=[SourceConfig("synthetic")], compile=compile, slim_checkpoint=slim)
    run_dir = tmp_path / run
    run_dir.mkdir(exist_ok=True)
    return Trainer(cfg, run_dir, torch.device("cpu"), tmp_path, split_dir=tmp_path / "splits")


def test_resumed_run_continues_exactly(tmp_path: Path) -> None:
    straight = _trainer(tmp_path, "straight", epochs=2)
    straight.run(max_minutes=60)

    first = _trainer(tmp_path, "resumed", epochs=1)
    first.run(max_minutes=60)
    second = _trainer(tmp_path, "resumed", epochs=2)
    second.load(torch.load(tmp_path / "resumed" / "last.pt", map_location="cpu", weights_only=False))
    assert second.epoch == 1 and second.samples_seen == 8
    second.run(max_minutes=60)

    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert second.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["samples_seen"] == 16
    assert {"train_loss", "val_iou", "lr", "epoch_seconds", "data_wait_seconds", "validate_seconds"} <= rows[0].keys()
    assert 0 <= rows[0]["data_wait_seconds"] <= rows[0]["epoch_seconds"]
    assert (tmp_path / "resumed" / "grids" / "epoch_002.png").exists()
    assert (tmp_path / "resumed" / "best.pt").exists()


def test_a_slim_checkpoint_resumes_from_half_precision_weights_with_a_fresh_optimiser_warming_up(tmp_path: Path) -> None:
    full = _trainer(tmp_path, "full", epochs=1)
    full.run(max_minutes=60)
    slim = _trainer(tmp_path, "slim", epochs=1, slim=True)
    slim.run(max_minutes=60)
    # AdamW's two moments triple the float32 weights; float16 halves the weights again.
    assert (tmp_path / "slim" / "last.pt").stat().st_size < (tmp_path / "full" / "last.pt").stat().st_size / 4
    state = torch.load(tmp_path / "slim" / "last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer"] is None
    parameters = dict(slim.model.named_parameters())
    best = torch.load(tmp_path / "slim" / "best.pt", map_location="cpu", weights_only=True)["state_dict"]
    for saved in (state["model"], best):
        for name, value in saved.items():
            if name in parameters:
                assert value.dtype == torch.float16, name
            elif name.endswith(("running_mean", "running_var")):
                assert value.dtype == torch.float32, name  # statistics keep their precision
    export(tmp_path / "slim", tmp_path / "exported")  # float16 best.pt exports as float32 weights
    exported = load_model(tmp_path / "exported").state_dict()
    name = next(name for name in best if name in parameters)
    assert exported[name].dtype == torch.float32 and torch.equal(exported[name], best[name].float())

    resumed = _trainer(tmp_path, "slim", epochs=2, slim=True)
    resumed.load(state)
    for name, value in resumed.model.named_parameters():
        assert torch.equal(value.detach(), parameters[name].detach().half().float()), name
    scheduled = slim.optimizer.param_groups[0]["lr"]
    assert resumed.optimizer.param_groups[0]["lr"] == scheduled and resumed.epoch == 1
    assert resumed.warmup_steps_left == resumed.cfg.resume_warmup_steps == 50
    before = {name: value.detach().clone() for name, value in resumed.model.named_parameters()}
    images, masks = next(iter(resumed.epoch_loader(resumed.epoch)))
    resumed.train_step(images, masks)
    # Fresh Adam moments move every weight by about the whole rate on the first step; warming up, by 1/51 of it.
    moved = max(float((value.detach() - before[name]).abs().max()) for name, value in resumed.model.named_parameters())
    assert scheduled / 51 * 0.5 < moved <= scheduled / 51 * 1.01
    assert resumed.optimizer.param_groups[0]["lr"] == scheduled and resumed.warmup_steps_left == 49
    resumed.run(max_minutes=60)
    assert torch.load(tmp_path / "slim" / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 2


def test_a_slim_run_resumes_exactly_where_its_full_state_was_written_and_slim_from_a_newer_last_pt(tmp_path: Path) -> None:
    straight = _trainer(tmp_path, "straight", epochs=2, slim=True)
    straight.run(max_minutes=60)
    first = _trainer(tmp_path, "resumed", epochs=1, slim=True)
    first.run(max_minutes=60)
    run_dir = tmp_path / "resumed"
    assert torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["optimizer"] is None
    epoch_one_full_state = (run_dir / LOCAL_FULL_CHECKPOINT).read_bytes()

    checkpoint = resume_checkpoint(run_dir)
    assert checkpoint["optimizer"] is not None and checkpoint["epoch"] == 1
    second = _trainer(tmp_path, "resumed", epochs=2, slim=True)
    second.load(checkpoint)
    assert second.warmup_steps_left == 0
    second.run(max_minutes=60)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key

    # As when last.pt was trained further on another machine: the full state left here is an older epoch's, so it is not used.
    (run_dir / LOCAL_FULL_CHECKPOINT).write_bytes(epoch_one_full_state)
    checkpoint = resume_checkpoint(run_dir)
    assert checkpoint["optimizer"] is None and checkpoint["epoch"] == 2
    (run_dir / LOCAL_FULL_CHECKPOINT).unlink()
    assert resume_checkpoint(run_dir)["optimizer"] is None


def test_the_fcdn103_recipe_is_gpu_fcdn56s_on_the_larger_network() -> None:
    # So that the two runs compare on capacity: the data, its weights and the augmentation are the same.
    from train.config import NAMED_CONFIGS, config_edits, config_from_dict

    ended = config_from_dict(json.loads((Path(__file__).resolve().parents[1] / "train" / "runs" / "gpu-fcdn56" / "config.json").read_text()))
    fcdn103 = NAMED_CONFIGS["fcdn103"]
    # max_empty_alpha chooses among the checkpoints (best.pt); it changes nothing that is learned.
    assert config_edits(fcdn103, ended) == ["batch_size", "lr", "lr_decay", "max_empty_alpha", "name", "preset", "slim_checkpoint"]
    assert fcdn103.preset == "fcdensenet103" and fcdn103.slim_checkpoint


def test_dropout_switched_off_at_resume_keeps_the_weights_and_reaches_the_export(tmp_path: Path) -> None:
    from torch import nn

    from train.config import NAMED_CONFIGS, config_from_dict, model_kwargs

    # Unset, the preset's dropout stays the model's default and config.json does not name it, as before the field.
    assert "dropout" not in model_kwargs(NAMED_CONFIGS["fcdn103"])
    make_folder_source(tmp_path)
    run_dir = tmp_path / "run"
    common, overrides = _tiny_cli_arguments(tmp_path, run_dir)
    main([*common, *overrides, "--epochs", "1"])
    before = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    splits = tmp_path / "splits"
    with_dropout = Trainer(cfg, run_dir, torch.device("cpu"), tmp_path, split_dir=splits)
    without = Trainer(dataclasses.replace(cfg, dropout=0.0), run_dir, torch.device("cpu"), tmp_path, split_dir=splits)
    without.load(before)
    assert all(m.p == 0.0 for m in without.model.modules() if isinstance(m, nn.Dropout))
    assert any(m.p == pytest.approx(0.2) for m in with_dropout.model.modules() if isinstance(m, nn.Dropout))
    for key, value in before["model"].items():
        assert torch.equal(value, without.model.state_dict()[key]), key
    # In training mode only a dropout-free network gives the same output twice.
    batch = torch.rand(1, 3, 64, 64)
    without.model.train()
    with torch.no_grad():
        assert torch.equal(without.model(batch), without.model(batch))

    main([*common, "--resume", "--epochs", "2", "--set", "dropout=0"])
    assert json.loads((run_dir / "config.json").read_text())["dropout"] == 0.0
    session = json.loads((run_dir / "sessions.jsonl").read_text().splitlines()[-1])
    assert session["overrides"] == ["dropout=0"]
    export(run_dir, tmp_path / "exported", checkpoint="last.pt", data_root=tmp_path, split_dir=splits)
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["dropout"] == 0.0
    assert load_model(tmp_path / "exported").input_size == 64


def test_a_run_with_object_closeups_reads_its_sources_boxes(tmp_path: Path) -> None:
    source = make_folder_source(tmp_path)
    splits = split_samples(folder_samples(source), seed=0)
    trained, held_out = splits["train"][0].stem, splits["val"][0].stem
    photos = {trained: (96, 128), held_out: (96, 128)}
    _write_coco_boxes(source, photos, [(trained, "cat", [10, 10, 50, 50], 0), (held_out, "cat", [0, 0, 40, 40], 0)])
    cfg = tiny_config(epochs=1, sources=[SourceConfig("synthetic")])
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, closeup_prob=0.5, object_closeup_prob=0.5))
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), tmp_path, split_dir=tmp_path / "splits")
    loaded = trainer.sampler.sets[0]
    # The training photo's box, as fractions of the photo; the validation photo is not trained on.
    assert {stem: boxes for stem, boxes in zip(loaded.stems, loaded.object_boxes) if boxes} == {
        trained: [(10 / 96, 10 / 128, 60 / 96, 60 / 128)]
    }
    assert len(loaded.object_boxes) == len(loaded.stems) == 7


def test_config_overrides_apply_in_order_and_refuse_unknown_fields() -> None:
    from train.config import apply_overrides

    base = TrainConfig()
    cfg = apply_overrides(base, ["batch_size=32", "augment.scale_jitter=[0.5, 2]", "batch_size=16"])
    assert cfg.batch_size == 16 and cfg.augment.scale_jitter == (0.5, 2)
    assert base.batch_size == TrainConfig().batch_size  # the given config is left as it was
    with pytest.raises(SystemExit, match="batchsize"):
        apply_overrides(base, ["batchsize=8"])
    two = TrainConfig(sources=[SourceConfig("ccp"), SourceConfig("coco_people", ignore_band=0.2)])
    cfg = apply_overrides(two, ["sources.1.away_windows=true", "sources.0.weight=2"])
    assert [(s.path, s.weight, s.away_windows) for s in cfg.sources] == [("ccp", 2, False), ("coco_people", 1.0, True)]
    assert not two.sources[1].away_windows
    with pytest.raises(SystemExit, match="not one of the 2 places"):
        apply_overrides(two, ["sources.2.weight=1"])
    teacher = TrainConfig(sources=[SourceConfig("coco_people", masks="train/pseudo_labels/coco_people_groups")])
    with pytest.raises(ValueError, match="no ignore_regions"):
        apply_overrides(teacher, ["sources.0.away_windows=true"])
    held = apply_overrides(teacher, ["sources.0.ignore_regions=\"regions\"", "sources.0.away_windows=true"])
    assert held.sources[0].away_windows and held.sources[0].ignore_regions == "regions"


def test_cpu_autocast_is_used_only_when_the_run_asks_for_it(tmp_path: Path) -> None:
    for amp_cpu in (False, True):
        trainer = _trainer(tmp_path, f"amp-{amp_cpu}", epochs=1)
        trainer.cfg.amp_cpu = amp_cpu
        seen: set[torch.dtype] = set()
        first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda _m, _i, out, seen=seen: seen.add(out.dtype))
        loss, _ = trainer.train_epoch()
        assert math.isfinite(loss)
        assert seen == ({torch.bfloat16} if amp_cpu else {torch.float32})
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay float32


def test_compiled_steps_train_the_saved_weights_and_save_them_under_their_own_names(tmp_path: Path) -> None:
    # "eager" runs the same graph capture as "inductor" without generating kernels, so this stays quick on CPU.
    trainer = _trainer(tmp_path, "compiled", epochs=1, compile="eager")
    assert trainer.step_model is not trainer.model
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(max_minutes=60)
    saved = torch.load(tmp_path / "compiled" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert saved.keys() == before.keys()  # no "_orig_mod." prefix: export and resume read them as they are
    changed = [k for k, v in saved.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "the compiled steps must update the parameters that are saved"


def test_a_best_measured_on_another_val_set_size_is_not_kept_on_resume(tmp_path: Path) -> None:
    first = _trainer(tmp_path, "run", epochs=1)
    first.run(max_minutes=60)
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert state["best_iou"] >= 0.0
    same = _trainer(tmp_path, "run", epochs=2)
    same.load(state)
    assert same.best_iou == state["best_iou"]
    fewer = Trainer(
        dataclasses.replace(same.cfg, val_limit=1), tmp_path / "run", torch.device("cpu"), tmp_path,
        split_dir=tmp_path / "splits",
    )
    fewer.load(state)
    assert len(fewer.val.images) == 1 and fewer.best_iou == -1.0


def test_best_pt_goes_to_the_best_validation_among_epochs_that_leave_photos_without_people_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(tmp_path, "guarded", epochs=3)
    assert trainer.cfg.max_empty_alpha == pytest.approx(0.10)
    # (validation IoU, mean alpha on the photos without people) per epoch: the second scores best on people
    # but marks a fifth of the empty scenes as person, as FC-DenseNet103's epoch 23 did.
    measured = iter([(0.50, 0.05), (0.90, 0.20), (0.80, 0.08)])

    def validate() -> tuple[float, float, list[np.ndarray], torch.nn.Module]:
        iou, alpha = next(measured)
        return iou, alpha, [np.zeros((8, 8), np.float32)] * len(trainer.val.images), trainer.model

    monkeypatch.setattr(trainer, "validate", validate)
    trainer.run(max_minutes=60)
    best = torch.load(tmp_path / "guarded" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 3 and best["val_empty_alpha"] == pytest.approx(0.08)
    assert trainer.best_iou == pytest.approx(0.80)


def test_validation_runs_without_cudnns_per_shape_search_and_gives_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import train.trainer as training

    trainer = _trainer(tmp_path, "search", epochs=1)
    seen: list[bool] = []
    real_predict = training.predict_probabilities

    def predict(*args: object, **kwargs: object) -> list[np.ndarray]:
        seen.append(torch.backends.cudnn.benchmark)
        return real_predict(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "predict_probabilities", predict)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    trainer.validate()
    assert seen == [False, False]  # the validation photos, then the scenes without people
    assert torch.backends.cudnn.benchmark is True


def test_pseudo_labelled_source_trains_but_stays_out_of_validation(tmp_path: Path) -> None:
    human = make_folder_source(tmp_path)
    photos = tmp_path / "people" / "images"
    photos.mkdir(parents=True)
    pseudo = tmp_path / "pseudo_labels" / "people" / "masks"
    pseudo.mkdir(parents=True)
    for mask in (human / "masks").glob("*.png"):
        (photos / f"p{mask.stem}.jpg").write_bytes((human / "images" / f"{mask.stem}.jpg").read_bytes())
        (pseudo / f"p{mask.stem}.png").write_bytes(mask.read_bytes())
    cfg = tiny_config(epochs=1, sources=[
        SourceConfig("synthetic"),
        SourceConfig("people", masks=str(pseudo.parent), validate=False, ignore_band=0.2, weight=2.0),
    ])
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run", torch.device("cpu"), tmp_path, split_dir=tmp_path / "splits")
    assert [len(s.images) for s in trainer.sampler.sets] == [7, 7]
    assert [s.ignore_band for s in trainer.sampler.sets] == [0.0, 0.2]
    assert trainer.sampler.set_probs[1] == pytest.approx(2 / 3)
    assert len(trainer.val.images) == 2  # only the human-labelled val split
    trainer.run(max_minutes=60)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(row["train_loss"])


def test_negative_sources_keep_only_scenes_without_people(tmp_path: Path) -> None:

    folder = make_folder_source(tmp_path, count=10)
    for mask in sorted((folder / "masks").glob("*.png"))[:6]:
        Image.new("L", Image.open(mask).size, 0).save(mask)  # six scenes without anyone
    splits = source_splits(SourceConfig("synthetic", empty_only=True), 0, tmp_path, tmp_path / "splits")
    kept = [s for samples in splits.values() for s in samples]
    assert len(kept) == 6 and all(not np.asarray(Image.open(s.mask)).any() for s in kept)
    everything = source_splits(SourceConfig("synthetic"), 0, tmp_path, tmp_path / "splits")
    assert sum(len(v) for v in everything.values()) == 10


def _tiny_cli_arguments(data: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    """The CLI's arguments for a run of the synthetic source in ``data``: where, and a tiny config."""
    common = ["--run-dir", str(run_dir), "--data-root", str(data), "--split-dir", str(data / "splits"), "--device", "cpu"]
    overrides = [
        "--set", 'sources=[{"path": "synthetic"}]', "--set", "backgrounds=[]", "--set", "samples_per_epoch=4",
        "--set", "batch_size=2", "--set", "augment.patch_size=64", "--set", "augment.input_size=64", "--set", "val_limit=0",
    ]
    return common, overrides


def test_cli_records_config_and_commit_then_export_loads(tmp_path: Path) -> None:
    make_folder_source(tmp_path)
    run_dir = tmp_path / "run"
    common, overrides = _tiny_cli_arguments(tmp_path, run_dir)
    main([*common, *overrides, "--epochs", "1"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["augment"]["patch_size"] == 64 and config["optimizer"] == "adamw"
    session = json.loads((run_dir / "sessions.jsonl").read_text().splitlines()[0])
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", session["git_commit"]) and session["start_epoch"] == 0
    assert session["data_root"] == str(tmp_path)
    with pytest.raises(SystemExit, match="--resume"):
        main([*common, "--epochs", "1"])
    # An edit of the run folder's config.json (as marking a source `calibrate`) survives the resume.
    edited = json.loads((run_dir / "config.json").read_text())
    edited["samples_per_epoch"] = 6
    edited["sources"][0]["calibrate"] = True
    (run_dir / "config.json").write_text(json.dumps(edited))
    main([*common, "--resume", "--epochs", "2"])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run_dir / "config.json").read_text())["sources"][0]["calibrate"] is True
    session = json.loads((run_dir / "sessions.jsonl").read_text().splitlines()[-1])
    assert session["config_edits"] == ["samples_per_epoch", "sources"]
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["samples_seen"] == 4 + 6
    main([*common, "--resume", "--epochs", "3", "--set", "lr=0.01", "--set", "lr_decay=0.5"])
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == 3 and last["lr"] == pytest.approx(0.005), "a warm restart on resume sets lr, then decays it"

    info = export(run_dir, tmp_path / "exported", fp16=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eligible = [row for row in rows if row["val_empty_alpha"] < config["max_empty_alpha"]]
    best = max(eligible, key=lambda row: row["val_iou"])  # the first of equals: a later epoch must do better
    assert info["epoch"] == best["epoch"] and info["val_iou"] == pytest.approx(best["val_iou"], abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["config.json", "model.safetensors", "training_info.json"]
    model = load_model(tmp_path / "exported")
    assert model.input_size == 64 and next(model.parameters()).dtype == torch.float32
    export(run_dir, tmp_path / "exported", fp16=True, onnx=True)
    remover = BackgroundRemover(tmp_path / "exported", device="cpu", backend="onnx")
    assert remover._onnx is not None and remover._onnx.path == tmp_path / "exported" / "model.onnx"

    # last.pt holds BatchNorm statistics of augmented crops: the export re-estimates them on clean photos.
    raw = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]
    info = export(
        run_dir, tmp_path / "from_last", checkpoint="last.pt", data_root=tmp_path,
        split_dir=tmp_path / "splits",
    )
    assert info["epoch"] == 3 and info["checkpoint"] == "last.pt"
    assert info["val_iou"] == last["val_iou"]  # from metrics.jsonl: last.pt does not carry it
    exported = load_model(tmp_path / "from_last").state_dict()
    mean_key = next(k for k in raw if k.endswith("running_mean"))
    assert not torch.allclose(exported[mean_key], raw[mean_key].float())
    weight_key = next(k for k in raw if k.endswith(".weight"))
    torch.testing.assert_close(exported[weight_key], raw[weight_key].float())

    # The threshold is fitted on the run's own validation photos (the synthetic source here, not CCP).
    info = export(run_dir, tmp_path / "calibrated", calibrate_on=tmp_path, split_dir=tmp_path / "splits")
    assert 0.0 < info["calibration"]["threshold"] < 1.0  # type: ignore[index]
    assert info["calibration"]["sources"] == ["synthetic"]  # type: ignore[index]
    # Blended with the weights it was exported as, a checkpoint keeps its weights.
    info = export(
        run_dir, tmp_path / "blended", blend_with=tmp_path / "exported", blend_share=0.3, data_root=tmp_path,
        split_dir=tmp_path / "splits",
    )
    assert info["blend"] == {"with": str(tmp_path / "exported"), "share_of_checkpoint": 0.3}
    blended, alone = load_model(tmp_path / "blended").state_dict(), load_model(tmp_path / "exported").state_dict()
    torch.testing.assert_close(blended[weight_key], alone[weight_key], atol=1e-3, rtol=1e-3)
    # A source marked ``calibrate`` joins the fit without joining validation; one marked neither stays out.
    make_folder_source(tmp_path / "other")
    config = json.loads((run_dir / "config.json").read_text())
    config["sources"] += [{"path": "other/synthetic", "validate": False, "calibrate": True}, {"path": "coco", "validate": False}]
    (run_dir / "config.json").write_text(json.dumps(config))
    info = export(run_dir, tmp_path / "calibrated", calibrate_on=tmp_path, split_dir=tmp_path / "splits")
    assert info["calibration"]["sources"] == ["synthetic", "other/synthetic"]  # type: ignore[index]
    assert info["calibration"]["photos_without_people"] == 0  # type: ignore[index]
    # A source of scenes without people joins the fit, as its own group, only when marked ``calibrate``.
    scenes = make_folder_source(tmp_path / "scenes", count=12)
    for mask in (scenes / "masks").glob("*.png"):
        Image.new("L", Image.open(mask).size, 0).save(mask)
    config["sources"].append({"path": "scenes/synthetic", "validate": False, "empty_only": True})
    (run_dir / "config.json").write_text(json.dumps(config))
    info = export(run_dir, tmp_path / "calibrated", calibrate_on=tmp_path, split_dir=tmp_path / "splits")
    assert info["calibration"]["photos_without_people"] == 0  # type: ignore[index]
    config["sources"][-1]["calibrate"] = True
    (run_dir / "config.json").write_text(json.dumps(config))
    info = export(run_dir, tmp_path / "calibrated", calibrate_on=tmp_path, split_dir=tmp_path / "splits")
    scene_val = (tmp_path / "splits" / "synthetic_val.txt").read_text().split()
    assert info["calibration"]["photos_without_people"] == len(scene_val) > 0  # type: ignore[index]
    assert info["calibration"]["sources"] == ["synthetic", "other/synthetic"]  # type: ignore[index]


def test_blend_weights_mixes_two_networks_and_refuses_a_different_one(tmp_path: Path) -> None:
    from bgremove_plugin.model import TiramisuNet
    from train.export import blend_weights

    torch.manual_seed(0)
    shape = {"down_layers": [1], "bottleneck_layers": 1, "growth_rate": 4, "first_conv_channels": 8, "pad_multiple": 32}
    start, tuned = TiramisuNet(**shape), TiramisuNet(**shape)  # type: ignore[arg-type]
    start.save_pretrained(tmp_path / "start")
    expected = 0.25 * tuned.classifier.weight.detach() + 0.75 * start.classifier.weight.detach()
    blend_weights(tuned, tmp_path / "start", 0.25)
    torch.testing.assert_close(tuned.classifier.weight.detach(), expected)
    TiramisuNet(**{**shape, "growth_rate": 6}).save_pretrained(tmp_path / "wider")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different network"):
        blend_weights(tuned, tmp_path / "wider", 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        blend_weights(tuned, tmp_path / "start", 0.0)


def test_calibration_moves_the_decision_point_to_the_best_threshold() -> None:
    from bgremove_plugin.model import TiramisuNet
    from train.calibrate import best_threshold, shift_person_logit

    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[:, :4] = 255
    under_confident = np.where(truth > 0, 0.35, 0.1)  # the person is there, but below 0.5
    threshold, iou, iou_at_half = best_threshold([([under_confident], [truth])])
    assert iou == 1.0 and iou_at_half == 0.0 and threshold <= 0.35
    # Each group (a source's validation photos) weighs the same however many photos it has: ten photos that
    # want a threshold above 0.55 do not outvote one portrait that is lost above 0.35.
    confident_background = np.where(truth > 0, 0.7, 0.55)
    groups = [([confident_background] * 10, [truth] * 10), ([under_confident], [truth])]
    threshold, iou, _ = best_threshold(groups)
    assert threshold <= 0.35 and iou == pytest.approx(0.75)
    with pytest.raises(ValueError, match="at least one validation photo"):
        best_threshold([([], [])])

    # People alone want the lowest threshold; a scene without people whose 60% sits at the same probability
    # pulls it up, because keeping that background now costs as much as losing half a person.
    split_person = np.where(truth > 0, np.where(np.arange(8)[:, None] < 4, 0.3, 0.7), 0.1)
    empty_scene = np.where(np.arange(64).reshape(8, 8) < 38, 0.3, 0.05)
    threshold, score, _ = best_threshold([([split_person], [truth])])
    assert threshold == pytest.approx(0.3) and score == 1.0
    threshold, score, score_at_half = best_threshold([([split_person], [truth])], without_people=[empty_scene])
    assert threshold == 0.5 and score == score_at_half == pytest.approx((0.5 + 1.0) / 2)
    # Each scene scores the share of it left out, not an IoU that one kept pixel would zero.
    _, score, _ = best_threshold([([truth / 255.0], [truth])], without_people=[np.where(np.arange(64).reshape(8, 8) < 1, 0.9, 0.0)])
    assert score == pytest.approx((1.0 + 63 / 64) / 2)

    torch.manual_seed(0)
    model = TiramisuNet(down_layers=[1], bottleneck_layers=1, growth_rate=4, first_conv_channels=8, pad_multiple=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)[0]
    shift_person_logit(model, 0.3)
    with torch.inference_mode():
        after = model(x)[0]
    # p = sigmoid(person - background): probability 0.3 before is exactly 0.5 after.
    gap_before, gap_after = before[1] - before[0], after[1] - after[0]
    assert torch.allclose(gap_after, gap_before - math.log(0.3 / 0.7), atol=1e-4)


def test_evaluation_harness_writes_csv_summary_and_gallery(
    tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.evaluate import AREA_BUCKETS
    from train.evaluate import main as evaluate_main

    make_folder_source(tmp_path, count=5)
    out = tmp_path / "report"
    evaluate_main(["--model", str(tiny_weights), "--model", str(tiny_weights) + "/", "--source", "synthetic",
                   "--split", "all", "--data-root", str(tmp_path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| model | images | mean IoU" in printed and "boundary F" in printed and "by their distance from the true outline" in printed
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["models"].values()  # the same weights named two ways: the same figures
    speed = ("seconds_per_image", "seconds_p95")
    assert {k: v for k, v in first.items() if k not in speed} == {k: v for k, v in second.items() if k not in speed}
    areas = [np.mean(np.asarray(Image.open(m)) > 127) for m in sorted((tmp_path / "synthetic" / "masks").glob("*.png"))]
    expected_buckets = {
        label: sum(low <= area < high for area in areas) for low, high, label in AREA_BUCKETS
        if any(low <= area < high for area in areas)
    }
    assert first["images"] == 5 and {label: b["images"] for label, b in first["by_person_area"].items()} == expected_buckets
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0] == "model,stem,iou,boundary_f,mae,person_area,seconds" and len(rows) == 1 + 2 * 5
    ious = [float(row.split(",")[2]) for row in rows[1:6]]
    assert first["iou"] == pytest.approx(np.mean(ious), abs=1e-3)
    bands = first["wrong_per_union_by_edge_distance"]
    assert list(bands) == edge_distance_labels() and all(value >= 0 for value in bands.values())
    gallery = Image.open(next(out.glob("worst_*.png")))
    assert gallery.width == 12 * 192 and gallery.height >= 192


def test_the_second_pass_crops_each_group_of_people_and_keeps_what_the_crop_says() -> None:
    from train.evaluate import second_pass

    calls: list[tuple[int, ...]] = []

    def predict(rgb: np.ndarray) -> np.ndarray:
        # A model that is surer of people it sees large: 0.6 on the whole photo, 1.0 on a crop.
        calls.append(rgb.shape)
        red = (rgb[..., 0] > 128) & (rgb[..., 1] < 100)
        return np.where(red, 0.6 if max(rgb.shape[:2]) > 100 else 1.0, 0.0).astype(np.float32)

    photo = np.zeros((120, 300, 3), dtype=np.uint8)
    photo[20:40, 10:30, 0] = 255     # two people far apart
    photo[70:100, 250:280, 0] = 255
    result = second_pass(predict, photo)
    assert calls[0] == photo.shape and len(calls) == 3                    # one crop per group
    assert all(max(shape[:2]) <= 100 for shape in calls[1:])  # each crop is a close-up of its group
    assert result[25, 15] == 1.0 and result[80, 260] == 1.0 and result.max() == 1.0
    assert result[0, 0] == 0.0 and result.shape == photo.shape[:2]

    calls.clear()
    assert not second_pass(predict, np.zeros((40, 40, 3), dtype=np.uint8)).any() and len(calls) == 1  # no one
    calls.clear()
    filled = np.zeros((120, 300, 3), dtype=np.uint8)
    filled[5:115, 5:295, 0] = 255    # a crop would not magnify
    assert second_pass(predict, filled)[60, 150] == np.float32(0.6) and len(calls) == 1


def test_keeping_the_largest_person_drops_detached_parts_and_their_rims_only() -> None:
    from train.evaluate import largest_person

    alpha = np.zeros((100, 200), dtype=np.float32)
    alpha[10:90, 20:80] = 0.9          # the subject
    alpha[10:90, 80:82] = 0.3          # its soft rim, kept
    alpha[40:60, 150:170] = 0.8        # a detached reflection, dropped
    alpha[38:40, 150:170] = 0.3        # the reflection's rim, dropped
    alpha[0:5, 190:200] = 0.2          # a faint veil far from the subject, dropped
    kept = largest_person(alpha)
    assert kept.dtype == alpha.dtype and kept.shape == alpha.shape
    assert (kept[10:90, 20:82] == alpha[10:90, 20:82]).all()
    assert not kept[:, 100:].any()
    assert np.array_equal(largest_person(np.full((20, 20), 0.3, np.float32)), np.full((20, 20), 0.3, np.float32))
    one = np.zeros((30, 30), np.float32)
    one[5:25, 5:25] = 1.0
    assert np.array_equal(largest_person(one), one)    # one part: nothing to drop


def test_the_harness_scores_at_the_threshold_asked_for(tmp_path: Path) -> None:
    from train.evaluate import score

    truth = np.zeros((16, 16), dtype=np.uint8)
    truth[:, :8] = 255
    Image.fromarray(truth).save(tmp_path / "mask.png")
    samples = [Sample("a", tmp_path / "photo.jpg", tmp_path / "mask.png")]
    faint = np.where(truth > 0, 0.35, 0.05).astype(np.float32)  # the person, under-confident

    def predict(_: object) -> np.ndarray:
        return faint

    at_half, = score(predict, samples)
    at_low, = score(predict, samples, threshold=0.3)
    assert at_half["iou"] == 0.0 and at_low["iou"] == 1.0 and at_low["boundary_f"] == 1.0
    assert at_half["mae"] == at_low["mae"]  # the soft alpha's error does not depend on the threshold
    # The distance bands split 1 - IoU: all of the missed half at 0.5, nothing at 0.3.
    from train.evaluate import summarise

    assert sum(summarise([at_half])["wrong_per_union_by_edge_distance"].values()) == 1.0
    assert sum(summarise([at_low])["wrong_per_union_by_edge_distance"].values()) == 0.0


def test_full_size_masks_fit_a_downscaled_copy_of_their_photos(tmp_path: Path) -> None:
    from train.data import load_set

    Image.new("RGB", (160, 120), "gray").save(tmp_path / "small.jpg")
    full = np.zeros((480, 640), dtype=np.uint8)
    full[:, 320:] = 255
    Image.fromarray(full).save(tmp_path / "full.png")
    loaded = load_set([Sample("a", tmp_path / "small.jpg", tmp_path / "full.png")], long_side=None)
    assert loaded.masks[0].shape == (120, 160)
    assert loaded.masks[0][:, :70].max() == 0 and loaded.masks[0][:, 90:].min() == 255
    Image.new("L", (640, 640)).save(tmp_path / "square.png")
    with pytest.raises(ValueError, match="its image is"):
        load_set([Sample("b", tmp_path / "small.jpg", tmp_path / "square.png")], long_side=None)


# --- pseudo-labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["interfaces_cc0", "congress_pd"])
def test_committed_pseudo_labels_match_their_photos(data_root: Path, name: str) -> None:
    from train.config import PSEUDO_LABELLED_PEOPLE
    from train.datasets import REPO

    source = next(s for s in PSEUDO_LABELLED_PEOPLE if s.path.endswith(name))
    label_set = REPO / str(source.masks)
    provenance = json.loads((label_set / "provenance.json").read_text())
    available = sorted((data_root / source.path / "images").glob("*.jpg"))
    assert provenance["photos_in_folder"] == len(available) and "u2net" in provenance["teacher"]
    photos = available[: provenance["count"]]  # the teacher labels the first N in name order
    masks = {p.stem: p for p in (label_set / "masks").glob("*.png")}
    assert photos and {p.stem for p in photos} == set(masks)
    # Spot checks: same size as the photo, soft 8-bit, and a person that fills part of the portrait.
    for photo in photos[:: max(1, len(photos) // 8)]:
        mask = Image.open(masks[photo.stem])
        assert mask.mode == "L" and mask.size == Image.open(photo).size
        person = (np.asarray(mask) > 127).mean()
        assert 0.1 < person < 0.95, (photo.stem, person)


def test_the_gpu_data_copy_is_downscaled_and_keeps_photos_without_masks(tmp_path: Path) -> None:
    from train.cache import downscale_folder

    labelled, unlabelled = tmp_path / "labelled", tmp_path / "unlabelled"
    for folder in (labelled, unlabelled):
        (folder / "images").mkdir(parents=True)
    (labelled / "masks").mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (640, 480), (200, 10, 10)).save(labelled / "images" / f"{stem}.jpg")
        Image.new("RGB", (480, 640), (10, 200, 10)).save(unlabelled / "images" / f"{stem}.jpg")
    # b has no mask, like coco_people's multi-person photos (boxes, and pseudo-labels kept elsewhere)
    Image.new("L", (640, 480), 255).save(labelled / "masks" / "a.png")

    assert downscale_folder(labelled, tmp_path / "out" / "labelled", 320, quality=75) == 2
    copy = Image.open(tmp_path / "out" / "labelled" / "images" / "a.jpg")
    assert copy.size == (320, 240)
    assert Image.open(tmp_path / "out" / "labelled" / "images" / "b.jpg").size == (320, 240)
    assert [p.name for p in (tmp_path / "out" / "labelled" / "masks").iterdir()] == ["a.png"]
    assert Image.open(tmp_path / "out" / "labelled" / "masks" / "a.png").size == (320, 240)

    _write_coco_boxes(labelled, {"a": (640, 480)}, [("a", "cat", [64, 48, 320, 240], 0)])
    downscale_folder(labelled, tmp_path / "out" / "boxed", 320)
    from train.sources import object_boxes

    assert object_boxes(tmp_path / "out" / "boxed") == object_boxes(labelled) == {"a": [(0.1, 0.1, 0.6, 0.6)]}
    (labelled / "annotations" / "captions.json").write_text(json.dumps({"annotations": []}))
    downscale_folder(labelled, tmp_path / "out" / "captioned", 320)
    # the boxes are copied; captions are never read in training
    assert [p.name for p in (tmp_path / "out" / "captioned" / "annotations").iterdir()] == ["instances.json"]

    assert downscale_folder(unlabelled, tmp_path / "out" / "unlabelled", 320, only_stems={"b"}) == 1
    assert [p.name for p in (tmp_path / "out" / "unlabelled" / "images").iterdir()] == ["b.jpg"]
    assert Image.open(tmp_path / "out" / "unlabelled" / "images" / "b.jpg").size == (240, 320)


@pytest.mark.parametrize("item, complaint", [
    ("people/typo=MASKS", "not among the sources"),
    ("people/photos", "expected NAME=MASK_DIR"),
    ("people/photos=EMPTY", "holds no .png masks"),
])
def test_the_gpu_data_copy_refuses_a_mask_filter_it_cannot_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], item: str, complaint: str
) -> None:
    from train.cache import main

    (tmp_path / "masks").mkdir()
    (tmp_path / "empty").mkdir()
    Image.new("L", (8, 8), 255).save(tmp_path / "masks" / "a.png")
    item = item.replace("MASKS", str(tmp_path / "masks")).replace("EMPTY", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        main(["people/photos", "--out", str(tmp_path / "out"), "--data-root", str(tmp_path), "--only-with-masks", item])
    assert complaint in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing copied before the refusal






def test_full_size_pseudo_labels_fit_a_downscaled_copy_of_a_thin_photo(tmp_path: Path) -> None:
    # 400x133 scaled to a long side of 320 rounds to 320x106: the ratio moves by more than 1%.
    Image.new("RGB", (320, 106)).save(tmp_path / "thin.jpg")
    Image.new("L", (400, 133), 255).save(tmp_path / "thin.png")
    Image.new("L", (400, 300), 255).save(tmp_path / "other.png")

    loaded = load_set([Sample("thin", tmp_path / "thin.jpg", tmp_path / "thin.png")], long_side=320)

    assert loaded.masks[0].shape == (106, 320) and loaded.masks[0].min() == 255
    with pytest.raises(ValueError, match="its image is"):
        load_set([Sample("thin", tmp_path / "thin.jpg", tmp_path / "other.png")], long_side=320)
