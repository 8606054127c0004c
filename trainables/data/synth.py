"""Generated pictures of Oxford-IIIT Pet and Cityscapes in their exact on-disk layouts (synth_layouts.py
calls them, with the other layouts).

The pictures are simple but learnable: pets are blobby animals (body, head, ears,
legs, tail) with warm fur colours and fine fur texture on cool, smoothly blotched or
tiled backgrounds; streets have sky above buildings, a road in perspective with
sidewalks, and cars, people, poles and signs, each class with its own colour and
texture. Every picture comes from its own random generator seeded by (seed, index),
so a dataset is the same for a seed however it is generated.
"""

from __future__ import annotations

import concurrent.futures
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainables.data.cache import available_cores
from trainables.errors import DatasetError

# -- pets ------------------------------------------------------------------------
# A few real breeds: cats capitalised and dogs in lower case, as in the real file names.
# Each has its own fur colours, so breeds look different but all pets look warm.
BREEDS = {
    "Abyssinian": [(190, 120, 70), (160, 100, 60)],
    "Bengal": [(210, 150, 80), (225, 170, 100)],
    "Persian": [(235, 220, 195), (200, 160, 120)],
    "Siamese": [(230, 210, 175), (215, 195, 160)],
    "beagle": [(200, 130, 60), (240, 230, 215)],
    "boxer": [(180, 105, 50), (150, 85, 40)],
    "pug": [(215, 180, 130), (60, 45, 35)],
    "samoyed": [(245, 240, 230), (230, 225, 210)],
}
BACKGROUND_COLOURS = [
    (70, 130, 60), (110, 160, 80), (40, 80, 50), (70, 100, 160), (120, 150, 200),
    (110, 80, 140), (60, 140, 140), (120, 130, 150), (180, 200, 225), (90, 110, 90),
]
TRIMAP_PET, TRIMAP_BACKGROUND, TRIMAP_BORDER = 1, 2, 3
LIST_HEADER = """\
#Image CLASS-ID SPECIES BREED ID
#ID: 1:8 Class ids
#SPECIES: 1:Cat 2:Dog
#BREED ID: 1-4:Cat 1-4:Dog
#All images with 1st letter as captial are cat images
#images with small first letter are dog images
"""

# -- cityscapes --------------------------------------------------------------------
# Raw label ids of the official table (cityscapesscripts.helpers.labels).
UNLABELED, EGO_VEHICLE, STATIC, GROUND = 0, 1, 4, 6
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 7, 8, 11, 12, 13, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33
STREET_COLOURS = {
    UNLABELED: (20, 20, 20), EGO_VEHICLE: (30, 30, 35), STATIC: (110, 80, 40), GROUND: (90, 60, 90),
    ROAD: (120, 100, 120), SIDEWALK: (220, 150, 210), BUILDING: (110, 110, 110), WALL: (130, 130, 170),
    FENCE: (190, 160, 150), POLE: (160, 160, 160), TRAFFIC_LIGHT: (240, 170, 40), TRAFFIC_SIGN: (220, 220, 20),
    VEGETATION: (90, 140, 40), TERRAIN: (160, 220, 140), SKY: (80, 140, 200), PERSON: (210, 40, 70),
    RIDER: (250, 30, 20), CAR: (20, 30, 150), TRUCK: (20, 40, 80), BUS: (30, 90, 110), TRAIN: (40, 110, 100),
    MOTORCYCLE: (40, 40, 230), BICYCLE: (130, 30, 50),
}
FINE_TEXTURE = {SKY: 2, ROAD: 10, SIDEWALK: 6, BUILDING: 8, VEGETATION: 22, TERRAIN: 14, WALL: 5}  # noise, default 6
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau", "munster")


def write_pets(root: Path, train: int, val: int, seed: int, size: tuple[int, int] | None) -> None:
    """The pets tree under root; size None: a size drawn per picture (100-200 pixels each way)."""
    _run(_write_pet, _plan_pets(root, train, val, seed, size))


def write_cityscapes(root: Path, train: int, val: int, seed: int, size: tuple[int, int] | None) -> None:
    """The Cityscapes tree under root; size None: 128x256, the real 1:2 aspect."""
    _run(_write_street, _plan_streets(root, train, val, seed, size or (128, 256)))


def pets_classes(train: int, val: int, seed: int, size: tuple[int, int]):
    """(role, class ids) of each picture write_pets draws, without writing: trimap 1/2/3 -> 0/1/2."""
    for index, (_, breed, _) in enumerate(_pet_names(train, val, seed)):
        _, trimap = _draw_pet(seed, index, breed, size)
        yield ("train" if index < train else "val"), trimap - 1


def cityscapes_classes(train: int, val: int, seed: int, size: tuple[int, int] | None):
    """(role, train ids) of each picture write_cityscapes draws, without writing."""
    from trainables.data.classes import CITYSCAPES_TRAIN_IDS

    table = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    height, width = size or (128, 256)
    for index in range(train + val):
        _, label_ids = _Street(np.random.default_rng([seed, 2, index]), height, width).draw()
        yield ("train" if index < train else "val"), table[label_ids]


def _run(worker, jobs: list[tuple]) -> None:
    # Threads: PIL encodes and numpy fills large arrays with the GIL released (1.4-1.9x on 2 cores).
    with concurrent.futures.ThreadPoolExecutor(available_cores()) as pool:
        list(pool.map(worker, jobs))


def _refuse_existing(*folders: Path) -> None:
    # Never mix generated pictures into an existing tree, nor leave stale files in one.
    for folder in folders:
        if folder.exists():
            raise DatasetError(f"{folder} already exists; generate into an empty folder or remove it first")


# -- pets ----------------------------------------------------------------------------
def _pet_names(train: int, val: int, seed: int) -> list[tuple[str, str, str]]:
    """(name, breed, list line) of each picture, in order: the first `train` are trainval, the rest test."""
    breeds = sorted(BREEDS, key=str.lower)
    species_breeds = {1: [b for b in breeds if b[0].isupper()], 2: [b for b in breeds if b[0].islower()]}
    picker = np.random.default_rng([seed, 0])
    numbers = dict.fromkeys(breeds, 0)
    names = []
    for _ in range(train + val):
        breed = breeds[picker.integers(len(breeds))]
        numbers[breed] += 1
        name = f"{breed}_{numbers[breed]}"
        species = 1 if breed[0].isupper() else 2
        names.append((name, breed, f"{name} {breeds.index(breed) + 1} {species} "
                                    f"{species_breeds[species].index(breed) + 1}"))
    return names


def _plan_pets(root: Path, train: int, val: int, seed: int, size) -> list[tuple]:
    base = root / "oxford-iiit-pet"
    _refuse_existing(base)
    images, trimaps = base / "images", base / "annotations" / "trimaps"
    images.mkdir(parents=True)
    trimaps.mkdir(parents=True)
    jobs, lines = [], {"trainval": [], "test": []}
    for index, (name, breed, line) in enumerate(_pet_names(train, val, seed)):
        lines["trainval" if index < train else "test"].append(line)
        jobs.append((seed, index, breed, size, str(images / f"{name}.jpg"), str(trimaps / f"{name}.png")))
    for split, split_lines in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    (base / "annotations" / "list.txt").write_text(LIST_HEADER + "\n".join(lines["trainval"] + lines["test"]) + "\n")
    return jobs


def _write_pet(job: tuple) -> None:
    seed, index, breed, size, image_path, trimap_path = job
    picture, trimap = _draw_pet(seed, index, breed, size)
    Image.fromarray(_to_uint8(picture)).save(image_path, quality=92)
    Image.fromarray(trimap).save(trimap_path)


def _draw_pet(seed: int, index: int, breed: str, size) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 1, index])
    height, width = size or (int(rng.integers(100, 201)), int(rng.integers(100, 201)))
    background = _pet_background(rng, height, width)
    pet_mask = _pet_shape(rng, height, width)
    fur = _fur(rng, height, width, BREEDS[breed])
    # soft edges, as in photographs: the border band really is a mix of both
    alpha = _box_blur(pet_mask.astype(np.float32), 1)[..., None]
    picture = alpha * fur + (1 - alpha) * background
    trimap = np.where(pet_mask, TRIMAP_PET, TRIMAP_BACKGROUND).astype(np.uint8)
    band = max(1, round(min(height, width) / 60))  # a few pixels, like the real trimaps
    trimap[_dilate(pet_mask, band) & _dilate(~pet_mask, band)] = TRIMAP_BORDER  # both sides of the outline
    return picture, trimap


def _pet_shape(rng, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height))
    draw = ImageDraw.Draw(canvas)
    scale = min(height, width) * rng.uniform(0.75, 1.1)
    facing = rng.choice([-1.0, 1.0])
    angle = rng.uniform(-0.5, 0.5)
    body_rx, body_ry = scale * rng.uniform(0.28, 0.4), scale * rng.uniform(0.15, 0.22)
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.1, 0.15) * height
    along = np.array([math.cos(angle), math.sin(angle)]) * facing
    up = np.array([math.sin(angle), -math.cos(angle)])  # towards the top of the picture
    centre = np.array([cx, cy])
    draw.polygon(_ellipse_points(centre, body_rx, body_ry, angle), fill=255)
    for offset in rng.uniform(-0.75, 0.75, size=int(rng.integers(2, 5))):  # legs
        top = centre + along * offset * body_rx
        foot = top - up * (body_ry + scale * rng.uniform(0.12, 0.22))
        _thick_line(draw, top, foot, scale * rng.uniform(0.05, 0.08))
    tail_root = centre - along * body_rx * 0.9
    _thick_line(draw, tail_root, tail_root - along * scale * 0.2 + up * scale * rng.uniform(0.0, 0.25),
                scale * rng.uniform(0.03, 0.06))
    head_r = body_ry * rng.uniform(0.9, 1.3)
    head = centre + along * body_rx * 0.95 + up * body_ry * rng.uniform(0.6, 1.2)
    draw.ellipse([*(head - head_r), *(head + head_r)], fill=255)
    ear_size = head_r * rng.uniform(0.5, 0.9)
    for side in (-0.6, 0.6):
        base = head + up * head_r * 0.6 + along * side * head_r
        tip = base + up * ear_size + along * side * ear_size * 0.3
        draw.polygon([tuple(base - along * ear_size * 0.4), tuple(base + along * ear_size * 0.4), tuple(tip)], fill=255)
    return np.asarray(canvas) > 127


def _fur(rng, height: int, width: int, palette) -> np.ndarray:
    base = np.array(palette[rng.integers(len(palette))], np.float32) + rng.uniform(-15, 15, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = 1 + 0.15 * (_smooth_noise(rng, height, width, 3) - 0.5)
    fur = base * shade[..., None]
    pattern = rng.choice(["stripes", "spots", "plain"])
    if pattern == "stripes":
        direction = rng.uniform(0, math.pi)
        wave = np.sin((xx * math.cos(direction) + yy * math.sin(direction)) * rng.uniform(0.35, 0.7))
        fur *= np.where(wave > 0.4, 0.6, 1.0)[..., None]
    elif pattern == "spots":
        fur *= np.where(_smooth_noise(rng, height, width, 12) > 0.65, 0.55, 1.0)[..., None]
    return fur + rng.normal(0, 14, (height, width, 1)).astype(np.float32)  # fine fur grain


def _pet_background(rng, height: int, width: int) -> np.ndarray:
    first, second = (np.array(BACKGROUND_COLOURS[i], np.float32) + rng.uniform(-15, 15, 3)
                     for i in rng.choice(len(BACKGROUND_COLOURS), 2, replace=False))
    kind = rng.choice(["blotches", "gradient", "tiles"])
    if kind == "blotches":
        mix = _smooth_noise(rng, height, width, int(rng.integers(2, 6)))
    elif kind == "gradient":
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        direction = rng.uniform(0, 2 * math.pi)
        mix = xx * math.cos(direction) + yy * math.sin(direction)
        mix = (mix - mix.min()) / max(float(np.ptp(mix)), 1.0)
    else:
        tile = int(rng.integers(14, 32))
        yy, xx = np.mgrid[0:height, 0:width]
        mix = (((yy // tile) + (xx // tile)) % 2).astype(np.float32) * 0.5
        mix[(yy % tile < 2) | (xx % tile < 2)] = 1.0  # grout lines
    picture = first + (second - first) * mix[..., None]
    return picture + rng.normal(0, 3, (height, width, 1)).astype(np.float32)


# -- cityscapes --------------------------------------------------------------------
def _plan_streets(root: Path, train: int, val: int, seed: int, size) -> list[tuple]:
    _refuse_existing(root / "leftImg8bit", root / "gtFine")
    jobs = []
    for index in range(train + val):
        split, cities = ("train", TRAIN_CITIES) if index < train else ("val", VAL_CITIES)
        city = cities[index % len(cities)]
        stem = f"{city}_{index:06d}_000019"  # frame 19: the annotated frame of each real sequence
        images, labels = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        jobs.append((seed, index, size, str(images / f"{stem}_leftImg8bit.png"),
                     str(labels / f"{stem}_gtFine_labelIds.png")))
    return jobs


def _write_street(job: tuple) -> None:
    seed, index, (height, width), image_path, label_path = job
    street = _Street(np.random.default_rng([seed, 2, index]), height, width)
    picture, label_ids = street.draw()
    Image.fromarray(_to_uint8(picture)).save(image_path)
    Image.fromarray(label_ids).save(label_path)


class _Street:
    """A street scene painted back to front into a picture and its label ids."""

    def __init__(self, rng, height: int, width: int):
        self.rng, self.height, self.width = rng, height, width
        self.picture = np.zeros((height, width, 3), np.float32)
        self.ids = np.full((height, width), UNLABELED, np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.grain = rng.normal(0, 1, (height, width, 1)).astype(np.float32)
        self.horizon = int(height * rng.uniform(0.38, 0.5))
        self.vanish = width * rng.uniform(0.4, 0.6)  # where the road meets the horizon
        self.left_spread, self.right_spread = (width * rng.uniform(0.4, 0.7) for _ in range(2))

    def paint(self, where: np.ndarray, label_id: int, colour=None, shade=None) -> None:
        colour = np.array(colour or STREET_COLOURS[label_id], np.float32) + self.rng.uniform(-12, 12, 3)
        fill = colour + self.grain[where] * FINE_TEXTURE.get(label_id, 6)
        if shade is not None:
            fill *= shade[where][:, None]
        self.picture[where] = fill
        self.ids[where] = label_id

    def box(self, top: float, bottom: float, left: float, right: float) -> np.ndarray:
        return (self.yy >= top) & (self.yy < bottom) & (self.xx >= left) & (self.xx < right)

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        rng, height, width, horizon = self.rng, self.height, self.width, self.horizon
        self.paint(self.yy < horizon + 1, SKY, shade=0.85 + 0.3 * self.yy / max(horizon, 1))
        self.buildings()
        for _ in range(int(rng.integers(1, 4))):  # trees
            cx, cy = rng.uniform(0, width), horizon - rng.uniform(0.05, 0.25) * height
            radius = rng.uniform(0.06, 0.14) * height
            crown = (self.xx - cx) ** 2 + ((self.yy - cy) * 1.3) ** 2 < radius**2
            self.paint(crown, VEGETATION, shade=0.75 + 0.5 * _smooth_noise(rng, height, width, 16))
        self.ground()
        self.street_furniture()
        self.vehicles_and_people()
        if rng.random() < 0.5:
            self.paint(self.yy > height * rng.uniform(0.9, 0.95), EGO_VEHICLE)
        return self.picture, self.ids

    def buildings(self) -> None:
        rng, height, width, horizon = self.rng, self.height, self.width, self.horizon
        x = 0.0
        while x < width:
            right = x + rng.uniform(0.08, 0.3) * width
            if rng.random() < 0.15:  # a low wall in front of the skyline
                self.paint(self.box(horizon - rng.uniform(0.04, 0.1) * height, horizon + 2, x, right), WALL)
            else:
                top = rng.uniform(0.05, 0.3) * height
                facade = self.box(top, horizon + 2, x, right)
                step = rng.uniform(5, 9)
                windows = ((self.yy - top) % step < step * 0.5) & ((self.xx - x) % step < step * 0.5)
                grey = rng.uniform(80, 160)
                self.paint(facade, BUILDING, colour=(grey + rng.uniform(0, 25), grey, grey - rng.uniform(0, 15)),
                           shade=np.where(windows, 0.55, 1.0))
            x = right

    def road_edges(self, y):
        """Left and right x of the road at row y (it narrows to the vanishing point)."""
        depth = np.clip((y - self.horizon) / max(self.height - self.horizon, 1), 0, None)
        return self.vanish - depth * self.left_spread, self.vanish + depth * self.right_spread

    def beside_road(self, left: float, right: float, nearest: float, farthest: float) -> float:
        """An x off the road on a random side, a share of the road's width away."""
        gap = self.rng.uniform(nearest, farthest) * (right - left)
        return left - gap if self.rng.random() < 0.5 else right + gap

    def ground(self) -> None:
        rng, height, width, horizon = self.rng, self.height, self.width, self.horizon
        below = self.yy > horizon
        left, right = self.road_edges(self.yy)
        walk = (right - left) * 0.35
        outer_left, outer_right = left - walk, right + walk
        for side in (self.xx < outer_left, self.xx > outer_right):
            self.paint(below & side, rng.choice([TERRAIN, VEGETATION, GROUND, SIDEWALK]))
        self.paint(below & (self.xx >= outer_left) & (self.xx <= outer_right), SIDEWALK,
                   shade=np.where((self.xx.astype(int) // 6 + self.yy.astype(int) // 6) % 2 == 0, 0.92, 1.0))
        road = below & (self.xx >= left) & (self.xx <= right)
        lanes = (np.abs(self.xx - (left + right) / 2) < 1 + (self.yy - horizon) / 30) & ((self.yy // 5) % 2 == 0)
        self.paint(road, ROAD, shade=np.where(lanes, 1.8, 1.0))
        if rng.random() < 0.5:
            x = rng.uniform(0, width * 0.6)
            top = horizon - rng.uniform(0.05, 0.1) * height
            fence = self.box(top, horizon + 1, x, x + rng.uniform(0.15, 0.4) * width)
            self.paint(fence, FENCE, shade=np.where(self.xx.astype(int) % 4 == 0, 0.6, 1.0))

    def street_furniture(self) -> None:
        rng, height, horizon = self.rng, self.height, self.horizon
        for _ in range(int(rng.integers(1, 4))):
            foot = rng.uniform(horizon + 0.05 * height, height * 0.85)
            left, right = self.road_edges(foot)
            x = self.beside_road(left, right, 0.05, 0.15)
            scale = (foot - horizon) / (height - horizon)
            pole_top = foot - scale * rng.uniform(0.5, 0.9) * height
            thickness = max(1.0, 3 * scale)
            self.paint(self.box(pole_top, foot, x - thickness / 2, x + thickness / 2), POLE)
            box = max(3.0, 12 * scale)
            if rng.random() < 0.5:
                self.paint(self.box(pole_top - box, pole_top, x - box / 2, x + box / 2), TRAFFIC_SIGN)
            else:
                light = self.box(pole_top - box * 1.8, pole_top, x - box / 3, x + box / 3)
                lamps = (self.yy - pole_top) % (box * 0.6) < box * 0.3
                self.paint(light, TRAFFIC_LIGHT, shade=np.where(lamps, 1.2, 0.5))
        if rng.random() < 0.3:
            y, x = rng.uniform(horizon, height * 0.8), rng.uniform(0, self.width - 8)
            self.paint(self.box(y - rng.uniform(4, 10), y, x, x + rng.uniform(6, 20)), STATIC)  # a bin, a bench

    def vehicles_and_people(self) -> None:
        rng, height, horizon = self.rng, self.height, self.horizon
        kinds = [CAR, CAR, CAR, TRUCK, BUS, PERSON, PERSON, BICYCLE, MOTORCYCLE, TRAIN]
        objects = [(rng.uniform(horizon + 0.08 * height, height * 0.98), kinds[rng.integers(len(kinds))])
                   for _ in range(int(rng.integers(2, 7)))]
        for foot, kind in sorted(objects):  # far ones first, near ones in front
            scale = (foot - horizon) / (height - horizon)
            left, right = self.road_edges(foot)
            if kind == PERSON:
                self.person(self.beside_road(left, right, 0.05, 0.3), foot, scale, PERSON)
            elif kind in (BICYCLE, MOTORCYCLE):
                x = rng.uniform(left, right)
                length = 0.35 * height * scale
                self.paint(self.box(foot - 0.25 * length, foot, x - length / 2, x + length / 2), kind)
                self.person(x, foot - 0.2 * length, scale, RIDER)
            else:
                length = {CAR: 0.5, TRUCK: 0.7, BUS: 0.9, TRAIN: 1.6}[kind] * height * scale
                tall = {CAR: 0.45, TRUCK: 0.8, BUS: 0.7, TRAIN: 0.5}[kind] * length
                x = rng.uniform(left, max(left, right - length))
                body = self.box(foot - tall, foot, x, x + length)
                windows = self.box(foot - tall * 0.9, foot - tall * 0.55, x + length * 0.1, x + length * 0.9)
                self.paint(body, kind, shade=np.where(windows, 0.45, 1.0))

    def person(self, x: float, foot: float, scale: float, label_id: int) -> None:
        tall = max(6.0, 0.4 * self.height * scale)
        body = self.box(foot - tall * 0.8, foot, x - tall * 0.13, x + tall * 0.13)
        head = (self.xx - x) ** 2 + (self.yy - (foot - tall * 0.88)) ** 2 < (tall * 0.11) ** 2
        self.paint(body | head, label_id)


# -- drawing helpers ---------------------------------------------------------------
def _ellipse_points(centre, rx: float, ry: float, angle: float, count: int = 48) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, count, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return list(zip(centre[0] + c * x - s * y, centre[1] + s * x + c * y))


def _thick_line(draw: ImageDraw.ImageDraw, start, end, thickness: float) -> None:
    draw.line([tuple(start), tuple(end)], fill=255, width=max(1, round(thickness * 2)))


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """Values in [0, 1] varying smoothly over about `cells` blobs across the picture."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).clip(0, 1)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(mask, radius)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                grown |= padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
    return grown


def _box_blur(values: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(values, radius, mode="edge")
    height, width = values.shape
    size = 2 * radius + 1
    return sum(padded[dy : dy + height, dx : dx + width] for dy in range(size) for dx in range(size)) / size**2


def _to_uint8(picture: np.ndarray) -> np.ndarray:
    return np.clip(picture, 0, 255).round().astype(np.uint8)
