"""The preset datasets: fixed values of a declaration's fields (plain data; declaration.py builds them).

`{format: voc}` in a study file means exactly the values below; a preset entry takes no other key.
Each preset also has the layout text that a missing folder's message shows. The declarations of the
generated layouts (`study data synth`) are here too, as plain data.
"""

from __future__ import annotations

from trainables.data.classes import CITYSCAPES_TRAIN_IDS, CLASS_NAMES, PALETTES

PRESETS = {
    "pets": {  # root: the folder that holds oxford-iiit-pet/, as for torchvision.datasets.OxfordIIITPet
        "format": "pets",
        "images": "oxford-iiit-pet/images",
        "masks": "oxford-iiit-pet/annotations/trimaps",
        "image_suffix": ".jpg",
        "mask_suffix": ".png",
        "classes": CLASS_NAMES["pets"],
        "palette": PALETTES["pets"],
        "reduce_zero_label": True,  # trimaps 1 pet / 2 background / 3 border -> classes 0 / 1 / 2
        "splits": {"train": {"list": "oxford-iiit-pet/annotations/trainval.txt"},
                   "val": {"list": "oxford-iiit-pet/annotations/test.txt"}},
    },
    "cityscapes": {  # root: the folder that holds leftImg8bit/ and gtFine/
        "format": "cityscapes",
        "images": "leftImg8bit",
        "masks": "gtFine",
        "image_suffix": "_leftImg8bit.png",
        "mask_suffix": "_gtFine_labelIds.png",
        "classes": CLASS_NAMES["cityscapes"],
        "palette": PALETTES["cityscapes"],
        "label_map": CITYSCAPES_TRAIN_IDS,  # cityscapesscripts' table: raw label id -> train id (255: ignored)
        "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}},
    },
    "voc": {  # root: VOCdevkit/VOC2012
        "format": "voc",
        "images": "JPEGImages",
        "masks": "SegmentationClass",
        "image_suffix": ".jpg",
        "mask_suffix": ".png",
        "classes": CLASS_NAMES["voc"],
        "palette": PALETTES["voc"],
        "splits": {"train": {"list": "ImageSets/Segmentation/train.txt"},
                   "val": {"list": "ImageSets/Segmentation/val.txt"}},
    },
    "ade20k": {  # root: ADEChallengeData2016
        "format": "ade20k",
        "images": "images",
        "masks": "annotations",
        "image_suffix": ".jpg",
        "mask_suffix": ".png",
        "classes": CLASS_NAMES["ade20k"],
        "reduce_zero_label": True,  # 0 is "other" (ignored), 1-150 are the classes 0-149
        "splits": {"train": {"subdir": "training"}, "val": {"subdir": "validation"}},
    },
}

# Files beside a preset's masks that already hold class ids, preferred where they exist and read as they
# are (no label_map): cityscapesscripts' createTrainIdLabelImgs writes *_gtFine_labelTrainIds.png.
READY_MASK_SUFFIX = {"cityscapes": "_gtFine_labelTrainIds.png"}

LAYOUTS = {
    "pets": """\
<root>/
  oxford-iiit-pet/
    images/<Name>.jpg                    e.g. Abyssinian_100.jpg, beagle_12.jpg
    annotations/
      trainval.txt, test.txt             lines 'Abyssinian_100 1 1 1' (name class species breed)
      trimaps/<Name>.png                 1 pet, 2 background, 3 border""",
    "cityscapes": """\
<root>/
  leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
  gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
                        (optional: ..._gtFine_labelTrainIds.png beside it, used as it is)""",
    "voc": """\
<root>/                                  VOCdevkit/VOC2012
  JPEGImages/<name>.jpg                  e.g. 2007_000032.jpg
  SegmentationClass/<name>.png           palette PNGs: 0 background, 1-20 the classes, 255 border (ignored)
  ImageSets/Segmentation/train.txt, val.txt   one name per line""",
    "ade20k": """\
<root>/                                  ADEChallengeData2016
  images/training/ADE_train_<n>.jpg, images/validation/ADE_val_<n>.jpg
  annotations/training/ADE_train_<n>.png, annotations/validation/ADE_val_<n>.png
                                         0 other (ignored), 1-150 the classes""",
}

ROAD_CLASSES = ["background", "road", "car", "person"]
ROAD_PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142], [220, 20, 60]]
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
                  "bicyclist"]
# The generated layouts (`study data synth LAYOUT`) and the declaration that reads each (synth_layouts.py writes
# them; the README shows them).
LAYOUT_DECLARATIONS = {
    "pets": {"format": "pets"},
    "cityscapes": {"format": "cityscapes"},
    "folder": {"format": "folder", "images": "images", "masks": "masks", "image_suffix": ".jpg",
               "mask_suffix": ".png", "mask_encoding": "index", "classes": ROAD_CLASSES,
               "splits": {"train": {"subdir": "train"}, "val": {"list": "splits/val.txt"}}},
    "folder-rgb": {"format": "folder", "images": "images", "masks": "masks", "image_suffix": ".jpg",
                   "mask_suffix": "_mask.png", "mask_encoding": "rgb", "classes": ROAD_CLASSES,
                   "palette": ROAD_PALETTE, "ignore_colors": [[255, 255, 255]],
                   "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}}},
    "sibling": {"format": "folder", "image_suffix": ".png", "mask_suffix": ".png", "classes": CAMVID_CLASSES,
                "ignore_index": 11,  # SegNet's CamVid: 11 is void
                "splits": {"train": {"images": "train", "masks": "trainannot"},
                           "val": {"images": "val", "masks": "valannot"}}},
    "voc": {"format": "voc"},
    "ade20k": {"format": "ade20k"},
    "parquet": {"format": "parquet", "files": {"train": "data/train-*.parquet", "val": "data/validation-*.parquet"},
                "image_column": "image", "label_column": "label", "id2label": "id2label.json"},
}
PARQUET_CLASSES = ["road", "sidewalk", "vegetation", "sky", "car"]
SYNTH_LAYOUTS = tuple(LAYOUT_DECLARATIONS)
