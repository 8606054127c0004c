"""What each preset dataset is: its class names and colours (what a report, a prediction and an export
name and draw). Plain Python: the readers of a study's record import this without numpy.

Cityscapes' come from the official `cityscapesscripts` table (names and colours of the 19 train
ids, and the label id -> train id table its presets read raw label ids with); the pets' three trimap
classes get names and colours of their own; VOC's are the devkit's 21 classes and its colour map;
ADE20K's are the 150 classes of the SceneParsing benchmark (objectInfo150), drawn in generated colours.
"""

from __future__ import annotations

import colorsys

from cityscapesscripts.helpers.labels import labels as OFFICIAL_LABELS

IGNORE_INDEX = 255
_TRAINED = sorted((label for label in OFFICIAL_LABELS if 0 <= label.trainId < IGNORE_INDEX),
                  key=lambda label: label.trainId)
# Raw Cityscapes label id -> train id (255: not trained on); license plate (-1) never appears in files.
CITYSCAPES_TRAIN_IDS = {label.id: label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
                        for label in OFFICIAL_LABELS if label.id >= 0}

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def voc_colour(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC devkit's colour of a label value (its bit-interleaved colour map; 255 is the border)."""
    red = green = blue = 0
    for bit in range(8):
        red |= ((index >> 0) & 1) << (7 - bit)
        green |= ((index >> 1) & 1) << (7 - bit)
        blue |= ((index >> 2) & 1) << (7 - bit)
        index >>= 3
    return red, green, blue


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` colours far apart for neighbouring ids: golden-ratio hue steps, alternating saturation and value."""
    colours = []
    for i in range(count):
        hue = (i * 0.6180339887498949) % 1.0
        saturation = (0.9, 0.6)[i % 2]
        value = (0.95, 0.75, 0.55)[(i // 2) % 3]
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return colours


CLASS_NAMES = {
    "pets": ("pet", "background", "border"),
    "cityscapes": tuple(label.name for label in _TRAINED),
    "voc": VOC_CLASSES,
    "ade20k": ADE20K_CLASSES,
}
# RGB per class id; ignored pixels are drawn black.
PALETTES = {
    "pets": ((230, 159, 0), (86, 180, 233), (240, 228, 66)),
    "cityscapes": tuple(tuple(label.color) for label in _TRAINED),
    "voc": tuple(voc_colour(i) for i in range(len(VOC_CLASSES))),
    "ade20k": tuple(distinct_colours(len(ADE20K_CLASSES))),
}
NUM_CLASSES = {name: len(names) for name, names in CLASS_NAMES.items()}


def class_names(dataset: str | None, count: int) -> list[str]:
    """The dataset's class names; "class i" past their end (or for a dataset not known)."""
    known = CLASS_NAMES.get(dataset, ())
    return [known[i] if i < len(known) else f"class {i}" for i in range(count)]


def palette(dataset: str | None, count: int) -> list[tuple[int, int, int]]:
    """An RGB colour per class id: the dataset's own, then distinct greys past their end."""
    known = PALETTES.get(dataset, ())
    return [known[i] if i < len(known) else (40 + (i * 37) % 200,) * 3 for i in range(count)]
