"""In-memory training data and paired augmentations (image and mask always move together).

Every random choice for sample ``i`` of epoch ``e`` comes from ``default_rng((seed, e, i))``, so a
resumed run sees exactly the samples and augmentations it would have seen without stopping.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from bgremove_plugin.transforms import normalize, scaled_size

from .sources import Box, Sample

IGNORE_LABEL = 255
"""Target value that cross-entropy skips (``ignore_index``)."""

log = logging.getLogger(__name__)

PASTE_FEATHER = 0.7
"""Gaussian radius, in pixels, that softens the edge of every cut-out pasted into a training sample."""


@dataclass(frozen=True)
class AugmentConfig:
    patch_size: int = 128
    """Side of the square training crop, in network pixels."""
    input_size: int = 224
    """Long side the whole photo has at inference: crops keep people at that scale (with jitter)."""
    scale_jitter: tuple[float, float] = (0.7, 1.5)
    portrait_prob: float = 0.35
    """Share of crops framed head-to-waist, turning full-body photos into portraits."""
    composite_prob: float = 0.3
    """Share of samples whose person is pasted onto a photo without people."""
    crowd_prob: float = 0.0
    """Share of the draws from human-labelled sets with people replaced by a scene of 1-4 small people pasted
    onto a photo without people (coco128's busy scenes are mostly people under 20% of the frame; the
    human-labelled photos hold one large person)."""
    closeup_prob: float = 0.0
    """Share of the draws of photos without people that become a close-up: a window of 20-50% of the photo,
    enlarged to the photo's size, so that one object or animal fills the frame the way a portrait's subject
    does. The scenes without people are all wide shots; weights trained on them marked 34% of a close-up
    coffee cup as person."""
    object_closeup_prob: float = 0.0
    """Share of those close-ups centred on an annotated object of the photo (a COCO box: an animal, a cup, a
    teddy bear), where it has any, instead of a random window, which mostly misses the objects. Random
    windows fixed the coffee cup but not the close-up cat: it swung between 0.05 and 0.65 of its pixels
    marked person from one checkpoint to the next (epochs 101-111)."""
    away_prob: float = 0.0
    """Share of the draws of human-labelled photos with people (hard masks, no teacher band) that become a
    close-up of a window holding no one: 30-60% of the sides, clear of every labelled person and every region
    the label leaves out by a margin, enlarged to the photo's size and taught as background. The 46 training
    scenes without people are too few: trained on them, weights kept up to 0.03 of the held-out scenes, most of
    it on a few person-like things (a dark silhouette, a pole, teddy bears); the photos with people hold
    thousands of streets, rooms and objects that are only ever seen beside a person."""
    plain_prob: float = 0.0
    """Share of all draws replaced by a picture with nothing in it (:func:`plain_picture`), taught as
    background. Given no texture at all, weights trained on COCO fell back on where people usually are and
    drew a head and shoulders: 0.58 of a plain light-grey 640x480 frame kept (epoch 28), a covered camera or
    a bare wall in a video; no photo or window of the training sets is that empty."""
    plain_fills_crop: bool = False
    """Cut a picture of nothing so that it fills the whole crop (:func:`filling_window`), as a blank frame
    fills the network's input at inference. Cut like a photo, the crop reaches past it and fills with the
    mean colour: 44% of a crop was the picture on average and 0.3% of crops were all picture, and weights
    trained so kept a blob where people stand on a flat frame, larger the more of the input it filled."""
    flip_prob: float = 0.5
    grayscale_prob: float = 0.08
    blur_prob: float = 0.15
    noise_prob: float = 0.2
    color_jitter: float = 0.3
    """Max relative change of brightness, contrast and saturation."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class LoadedSet:
    """Images and masks decoded once and kept in RAM at a reduced size."""

    stems: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    weight: float = 1.0
    name: str = ""
    ignore_band: float = 0.0
    object_boxes: list[list[Box]] = field(default_factory=list)
    """Per photo, the boxes of its annotated non-person objects; empty when the source has no annotations."""
    ignore_regions: list[np.ndarray | None] = field(default_factory=list)
    """Per photo, where the label is not to be trained on (> 127: people it leaves out, ``train.bystanders``),
    or None; empty when the source has none."""
    away_windows: bool = False
    """Whether windows away from everyone may be cut from these photos although the labels are a teacher's
    (:class:`train.config.SourceConfig`'s ``away_windows``)."""

    @cached_property
    def mask_peaks(self) -> np.ndarray:
        """Each mask's largest value, scanned once per run: every epoch's stream asks which photos are
        empty (0) and which hold a confident person (> 127), and the set never changes once loaded."""
        return np.array([int(m.max()) if m.size else 0 for m in self.masks], dtype=np.uint8)


def _load_pair(sample: Sample, long_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    image = Image.open(sample.image).convert("RGB")
    mask = Image.open(sample.mask).convert("L")
    if mask.size != image.size:
        # Committed pseudo-labels are at the photos' full size; a downscaled cache of the photos is fine.
        # Same shape, within the pixel that rounding a thin photo's short side can cost.
        expected = scaled_size(mask.width, mask.height, max(image.size))
        if abs(expected[0] - image.width) > 1 or abs(expected[1] - image.height) > 1:
            raise ValueError(f"{sample.mask} is {mask.size}, its image is {image.size}")
        mask = mask.resize(image.size, Image.Resampling.BILINEAR)
    if long_side and max(image.size) > long_side:
        size = scaled_size(image.width, image.height, long_side)
        image = image.resize(size, Image.Resampling.LANCZOS)
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image), np.asarray(mask)


def _load_region(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The region mask at ``path`` resized to ``size`` (width, height), or None when the photo has none."""
    if not path.exists():
        return None
    with Image.open(path) as region:
        return np.asarray(region.convert("L").resize(size, Image.Resampling.BILINEAR))


def load_set(
    samples: Sequence[Sample], *, long_side: int | None = 320, name: str = "", weight: float = 1.0,
    ignore_band: float = 0.0, ignore_dir: Path | None = None,
) -> LoadedSet:
    """Decode ``samples``; ``ignore_dir`` holds ``<stem>.png`` region masks for the photos that have one."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        pairs = list(pool.map(lambda s: _load_pair(s, long_side), samples))
    loaded = LoadedSet([s.stem for s in samples], [p[0] for p in pairs], [p[1] for p in pairs], weight, name, ignore_band)
    if ignore_dir is not None:
        if not ignore_dir.is_dir():
            raise FileNotFoundError(f"ignore regions folder {ignore_dir} is missing")
        loaded.ignore_regions = [
            _load_region(ignore_dir / f"{stem}.png", (image.shape[1], image.shape[0]))
            for stem, image in zip(loaded.stems, loaded.images)
        ]
    return loaded


def load_backgrounds(paths: Sequence[Path], long_side: int = 320) -> list[np.ndarray]:
    backgrounds = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
        backgrounds.append(np.asarray(image))
    return backgrounds


def _mean_colour(cfg: AugmentConfig) -> tuple[int, int, int]:
    r, g, b = (round(m * 255) for m in cfg.mean)
    return (r, g, b)


def _composite(image: np.ndarray, mask: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste the labelled person onto ``background`` (cropped/resized to cover the image)."""
    height, width = mask.shape
    bg = Image.fromarray(background)
    scale = max(width / bg.width, height / bg.height) * rng.uniform(1.0, 1.4)
    bg = bg.resize((max(width, round(bg.width * scale)), max(height, round(bg.height * scale))), Image.Resampling.BILINEAR)
    left = int(rng.integers(0, bg.width - width + 1))
    top = int(rng.integers(0, bg.height - height + 1))
    bg_array = np.asarray(bg)[top : top + height, left : left + width].astype(np.float32)
    # A one-pixel feather hides the label's jagged superpixel edge without inventing hair detail.
    alpha = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)[..., None] / 255.0
    return (image.astype(np.float32) * alpha + bg_array * (1.0 - alpha)).round().astype(np.uint8)


def _masked_cutout(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    ys, xs = np.nonzero(mask > 127)
    if len(ys) == 0:
        return None
    return image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def closeup(image: np.ndarray, rng: np.random.Generator, around: Box | None = None) -> np.ndarray:
    """A window of ``image`` enlarged back to ``image``'s size, with the photo's aspect ratio.

    Without ``around``: a random window of 20-50% of the sides. With it: a window that holds that box with
    a 15-60% margin (25% of the sides at least, the whole photo at most), its centre moved by up to a tenth
    of the window, so that the object fills the frame the way a portrait's subject does.
    """
    height, width = image.shape[:2]
    if around is None:
        fraction = rng.uniform(0.2, 0.5)
    else:
        left_f, top_f, right_f, bottom_f = around
        fraction = float(np.clip(max(right_f - left_f, bottom_f - top_f) * rng.uniform(1.15, 1.6), 0.25, 1.0))
    box_h, box_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    if around is None:
        top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    else:
        centre_x = (left_f + right_f) / 2 * width + rng.uniform(-0.1, 0.1) * box_w
        centre_y = (top_f + bottom_f) / 2 * height + rng.uniform(-0.1, 0.1) * box_h
        left = int(np.clip(round(centre_x - box_w / 2), 0, width - box_w))
        top = int(np.clip(round(centre_y - box_h / 2), 0, height - box_h))
    return _enlarged(image, top, left, box_h, box_w)


def _enlarged(
    image: np.ndarray, top: int, left: int, box_h: int, box_w: int, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """The window of ``image`` at (``top``, ``left``) of ``box_h`` x ``box_w`` pixels resized to ``size``
    (width, height), by default ``image``'s own."""
    height, width = image.shape[:2]
    window = Image.fromarray(image[top : top + box_h, left : left + box_w])
    return np.asarray(window.resize(size or (width, height), Image.Resampling.BILINEAR))


AWAY_MARGIN = 0.06
"""Clearance, as a share of the photo's long side, between a window without people and anyone labelled or
left out: polygons are coarse and hair, fingers and shadows reach past them."""


def away_closeup(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, left_out: np.ndarray | None = None, tries: int = 12
) -> np.ndarray | None:
    """A window of ``image`` of 30-60% of the sides (its aspect ratio) that holds no pixel of ``mask`` above 0
    nor of ``left_out`` above 127, both grown by ``AWAY_MARGIN``, enlarged to ``image``'s size; None when
    ``tries`` random windows all touch someone."""
    height, width = mask.shape
    occupied = mask > 0
    if left_out is not None:
        occupied |= left_out > 127
    grow = max(1, round(max(height, width) * AWAY_MARGIN))
    # Summed-area table: the occupied pixels of any window, grown by the margin, in four lookups.
    table = np.pad(occupied.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for _ in range(tries):
        fraction = rng.uniform(0.3, 0.6)
        box_h, box_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
        y0, x0 = max(top - grow, 0), max(left - grow, 0)
        y1, x1 = min(top + box_h + grow, height), min(left + box_w + grow, width)
        if table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0] == 0:
            return _enlarged(image, top, left, box_h, box_w)
    return None


def plain_picture(rng: np.random.Generator) -> np.ndarray:
    """A picture of nothing, 200-640 px on its long side at a random aspect: one colour or, half of the time,
    a straight gradient between two in a random direction (a wall under a lamp, a sky), with faint sensor
    noise, as uint8 RGB."""
    long_side = int(rng.integers(200, 641))
    aspect = float(rng.uniform(0.5, 2.0))  # width over height
    short_side = max(1, round(long_side * min(aspect, 1 / aspect)))
    height, width = (long_side, short_side) if aspect < 1 else (short_side, long_side)
    first = rng.uniform(0, 255, 3)
    second = rng.uniform(0, 255, 3) if rng.random() < 0.5 else first
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    along = np.cos(angle) * cols / width + np.sin(angle) * rows / height
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    picture = first + along[..., None] * (second - first)
    picture += rng.normal(0.0, rng.uniform(0.0, 4.0), picture.shape)
    return np.clip(picture, 0, 255).round().astype(np.uint8)


def filling_window(picture: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square window of ``picture`` lying wholly inside it, 50-100% of its short side, resized to
    ``size`` x ``size``: nothing of the crop is filler."""
    height, width = picture.shape[:2]
    side = max(1, round(min(height, width) * rng.uniform(0.5, 1.0)))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    return _enlarged(picture, top, left, side, side, size=(size, size))


def _feathered(part: np.ndarray, part_mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A cut-out scaled by ``scale`` (float32) and its 0-255 mask as a 0-1 alpha softened by ``PASTE_FEATHER``:
    the edge every pasted cut-out gets, person or object, so that the edge alone cannot tell them apart."""
    size = (max(1, round(part.shape[1] * scale)), max(1, round(part.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(part).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    alpha = np.asarray(
        Image.fromarray(part_mask).resize(size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(PASTE_FEATHER)),
        dtype=np.float32,
    ) / 255.0
    return resized, alpha


def _blend(
    canvas: np.ndarray, part: np.ndarray, alpha: np.ndarray, left: int, top: int
) -> tuple[slice, slice, np.ndarray] | None:
    """Blend ``part`` into float ``canvas`` in place with its top-left corner at (``left``, ``top``), which may
    lie outside; returns the canvas rows and columns it covers with its alpha there, or None if it missed."""
    height, width = canvas.shape[:2]
    y0, y1 = max(top, 0), min(top + part.shape[0], height)
    x0, x1 = max(left, 0), min(left + part.shape[1], width)
    if y0 >= y1 or x0 >= x1:
        return None
    window = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    a = alpha[window]
    canvas[y0:y1, x0:x1] = part[window] * a[..., None] + canvas[y0:y1, x0:x1] * (1.0 - a[..., None])
    return slice(y0, y1), slice(x0, x1), a


def crowd_scene(
    people: Sequence[tuple[np.ndarray, np.ndarray]], background: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``background`` with each of ``people`` (image, 0-255 mask) cut out, scaled to 15-70% of its height and
    pasted standing at a random place; later people occlude earlier ones. Returns the scene and its mask."""
    canvas = background.astype(np.float32)
    height, width = background.shape[:2]
    scene_mask = np.zeros((height, width), dtype=np.float32)
    for image, mask in people:
        cutout = _masked_cutout(image, mask)
        if cutout is None:
            continue
        part, alpha = _feathered(*cutout, height * rng.uniform(0.15, 0.7) / cutout[0].shape[0])
        # Feet land anywhere in the lower 60% of the frame, sometimes below it (people cut by the border).
        left = int(rng.integers(-part.shape[1] // 3, max(1, width - part.shape[1] * 2 // 3)))
        top = round(height * rng.uniform(0.4, 1.15)) - part.shape[0]
        placed = _blend(canvas, part, alpha, left, top)
        if placed is not None:
            rows, columns, a = placed
            scene_mask[rows, columns] = np.maximum(scene_mask[rows, columns], a)
    return canvas.round().astype(np.uint8), (scene_mask * 255).round().astype(np.uint8)


def _crop_box(mask: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in image pixels; may extend past the image (filled with the mean)."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask > 127)
    has_person = len(ys) > 0
    if has_person and rng.random() < cfg.portrait_prob:
        top, bottom = ys.min(), ys.max()
        person_height = bottom - top + 1
        crop_top = top - person_height * rng.uniform(0.02, 0.15)
        crop_bottom = top + person_height * rng.uniform(0.25, 0.6)
        box_h = crop_bottom - crop_top
        box_w = box_h * rng.uniform(0.75, 1.3)
        upper = ys < top + person_height * 0.3
        centre_x = xs[upper].mean() + box_w * rng.uniform(-0.15, 0.15)
        return centre_x - box_w / 2, crop_top, centre_x + box_w / 2, crop_bottom
    # Keep people at the scale inference gives them: the whole photo's long side maps to input_size.
    side = max(height, width) * cfg.patch_size / cfg.input_size * rng.uniform(*cfg.scale_jitter)
    if has_person and rng.random() < 0.7:
        idx = int(rng.integers(len(ys)))
        centre_x = xs[idx] + side * rng.uniform(-0.3, 0.3)
        centre_y = ys[idx] + side * rng.uniform(-0.3, 0.3)
    else:
        centre_x = rng.uniform(0, width)
        centre_y = rng.uniform(0, height)
    return centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2


def _photometric(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    j = cfg.color_jitter
    pixels *= rng.uniform(1 - j, 1 + j)  # brightness
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
    grey = pixels.mean(axis=2, keepdims=True)
    saturation = 0.0 if rng.random() < cfg.grayscale_prob else rng.uniform(1 - j, 1 + j)
    pixels = grey + (pixels - grey) * saturation
    pixels *= rng.uniform(0.93, 1.07, size=3)  # white balance
    if rng.random() < cfg.noise_prob:
        pixels += rng.normal(0.0, rng.uniform(2.0, 10.0), size=pixels.shape)
    result = np.clip(pixels, 0, 255).astype(np.uint8)
    if rng.random() < cfg.blur_prob:
        result = np.asarray(Image.fromarray(result).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.5))))
    return result


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    backgrounds: Sequence[np.ndarray] = (),
    ignore_band: float = 0.0,
    ignore_region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One random training crop: uint8 (P, P, 3) image and uint8 (P, P) mask in {0, 1}, plus
    ``IGNORE_LABEL`` where a soft mask lies within 0.5 +/- ``ignore_band`` (the teacher was unsure) and
    where ``ignore_region`` (the photo's size) is over 127."""
    if backgrounds and rng.random() < cfg.composite_prob:
        image = _composite(image, mask, backgrounds[int(rng.integers(len(backgrounds)))], rng)
        # The pasted background replaced the people the label left out.
        ignore_region = None
    box = _crop_box(mask, cfg, rng)
    size = (cfg.patch_size, cfg.patch_size)
    crop = Image.fromarray(image).transform(
        size, Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=_mean_colour(cfg)
    )
    crop_mask = Image.fromarray(mask).transform(size, Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=0)
    image_out = np.asarray(crop)
    soft = np.asarray(crop_mask)
    mask_out = (soft > 127).astype(np.uint8)
    if ignore_band > 0:
        mask_out[np.abs(soft / 255.0 - 0.5) < ignore_band] = IGNORE_LABEL
    if ignore_region is not None:
        region = Image.fromarray(ignore_region).transform(size, Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=0)
        mask_out[np.asarray(region) > 127] = IGNORE_LABEL
    if rng.random() < cfg.flip_prob:
        image_out = image_out[:, ::-1]
        mask_out = mask_out[:, ::-1]
    return _photometric(image_out, cfg, rng), np.ascontiguousarray(mask_out)


class EpochSampler:
    """Draws the (set, index) pairs of one epoch; sets are sampled in proportion to their weight."""

    def __init__(self, sets: Sequence[LoadedSet], seed: int) -> None:
        self.sets = list(sets)
        self.seed = seed
        sizes = np.array([len(s.images) * s.weight for s in self.sets], dtype=np.float64)
        self.set_probs = sizes / sizes.sum()

    def draw(self, epoch: int, count: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng((self.seed, epoch, 0x5A))
        set_ids = rng.choice(len(self.sets), size=count, p=self.set_probs)
        return [(int(s), int(rng.integers(len(self.sets[s].images)))) for s in set_ids]


class TrainingStream(torch.utils.data.Dataset):
    """The ``count`` augmented samples of one epoch, reproducible from (seed, epoch)."""

    def __init__(
        self,
        sampler: EpochSampler,
        epoch: int,
        count: int,
        cfg: AugmentConfig,
        backgrounds: Sequence[np.ndarray] = (),
    ) -> None:
        self.draws = sampler.draw(epoch, count)
        self.sets = sampler.sets
        self.seed = sampler.seed
        self.epoch = epoch
        self.cfg = cfg
        self.backgrounds = backgrounds
        # Crowds and windows without people take photos with hard human labels only: a teacher's soft edges
        # would need their ignore band, and a teacher may miss someone a window would then teach as background,
        # unless human boxes mark everyone the teacher missed (``away_windows``).
        human_ids = [i for i, s in enumerate(self.sets) if s.ignore_band == 0 and bool((s.mask_peaks > 127).any())]
        crowd_ids = human_ids if cfg.crowd_prob > 0 and backgrounds else []
        self.crowd_set_ids = frozenset(crowd_ids)
        away_ids = {*human_ids, *(i for i, s in enumerate(self.sets) if s.away_windows)}
        self.away_set_ids = frozenset(away_ids if cfg.away_prob > 0 else ())
        self.crowd_sets = [self.sets[i] for i in crowd_ids]
        # Read here, in the main process, so that data-loader workers inherit the scan instead of each repeating it.
        self.empty_masks = [s.mask_peaks == 0 for s in self.sets]
        # The scene already has its background and its people are small: no re-compositing or portrait framing.
        self.scene_cfg = dataclasses.replace(cfg, composite_prob=0.0, portrait_prob=0.0)

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        set_id, index = self.draws[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        chosen = self.sets[set_id]
        # Drawn only when enabled, so runs without plain pictures or crowds keep their exact sample streams.
        if self.cfg.plain_prob > 0 and rng.random() < self.cfg.plain_prob:
            picture = plain_picture(rng)
            if self.cfg.plain_fills_crop:
                image = _photometric(filling_window(picture, self.cfg.patch_size, rng), self.cfg, rng)
                mask = np.zeros(image.shape[:2], dtype=np.uint8)
            else:
                image, mask = augment(picture, np.zeros(picture.shape[:2], dtype=np.uint8), self.scene_cfg, rng)
        elif set_id in self.crowd_set_ids and rng.random() < self.cfg.crowd_prob:
            image, mask = augment(*self._crowd(rng), self.scene_cfg, rng)
        else:
            image, mask = chosen.images[index], chosen.masks[index]
            region = chosen.ignore_regions[index] if chosen.ignore_regions else None
            # Drawn only when enabled, as above; the mask stays empty, so no label changes.
            if self.cfg.closeup_prob > 0 and self.empty_masks[set_id][index] and rng.random() < self.cfg.closeup_prob:
                image = closeup(image, rng, self._object_box(chosen, index, rng))
                region = None  # the enlarged window no longer lines up with it
            elif set_id in self.away_set_ids and rng.random() < self.cfg.away_prob:
                window = away_closeup(image, mask, rng, region)
                if window is not None:
                    image, mask, region = window, np.zeros_like(mask), None
            image, mask = augment(image, mask, self.cfg, rng, self.backgrounds, chosen.ignore_band, region)
        return torch.from_numpy(normalize(image, self.cfg.mean, self.cfg.std)), torch.from_numpy(mask.astype(np.int64))

    def _object_box(self, chosen: LoadedSet, index: int, rng: np.random.Generator) -> Box | None:
        """One of the photo's object boxes for an object close-up, or None for a random window. Draws from
        ``rng`` only when the photo has boxes and object close-ups are on, so older runs keep their streams."""
        boxes = chosen.object_boxes[index] if chosen.object_boxes else []
        if not boxes or self.cfg.object_closeup_prob <= 0 or rng.random() >= self.cfg.object_closeup_prob:
            return None
        return boxes[int(rng.integers(len(boxes)))]

    def _crowd(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        count = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
        people = []
        for _ in range(count):
            source = self.crowd_sets[int(rng.integers(len(self.crowd_sets)))]
            k = int(rng.integers(len(source.images)))
            people.append((source.images[k], source.masks[k]))
        return crowd_scene(people, self.backgrounds[int(rng.integers(len(self.backgrounds)))], rng)
