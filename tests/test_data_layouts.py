"""Every layout a declaration reads, on real files in their exact on-disk form: `study data synth` writes
them, `check` counts exactly the pixels the generator drew, every bad file is named in one line (all at
once, exit 2, nothing written), the binary-mask traps are warned about, and a declared folder trains."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from study.cli import main
from trainables.config import TrainConfig
from trainables.data import (
    DataDeclaration,
    cache,
    check_dataset,
    class_pixel_counts,
    declare,
    load_split,
    synth_declared,
)
from trainables.data.presets import PRESETS, SYNTH_LAYOUTS
from trainables.data.synth_layouts import synth_pixels
from trainables.errors import DatasetError

SIZE = (24, 32)
TRAIN, VAL = 4, 3


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Each layout written once by `study data synth`: {layout: (root, the declaration it printed)}."""
    base = tmp_path_factory.mktemp("layouts")
    made = {}
    for layout in SYNTH_LAYOUTS:
        root = base / layout
        assert main(["data", "synth", layout, "--root", str(root), "--train", str(TRAIN), "--val", str(VAL),
                     "--seed", "2", "--image-size", *map(str, SIZE)]) == 0
        made[layout] = root
    return made


def copy_of(generated, layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated[layout], tmp_path / layout, ignore=shutil.ignore_patterns(".segstudy-*")))


def declared(layout: str, root: Path) -> DataDeclaration:
    from trainables.data.presets import LAYOUT_DECLARATIONS

    declaration, problems = declare(layout, LAYOUT_DECLARATIONS[layout], root)
    assert problems == []
    return declaration


def expected_pixels(counts: np.ndarray, num_classes: int) -> dict:
    pixels = {str(c): int(counts[c]) for c in range(num_classes)}
    if counts[255]:
        pixels["255"] = int(counts[255])
    return pixels


def cache_folders(root: Path) -> list[str]:
    folder = root / ".segstudy-cache"
    return sorted(p.name for p in folder.iterdir() if p.name != "fingerprints") if folder.exists() else []


# -- each layout: exactly what was drawn --------------------------------------------------
def test_synth_prints_a_declaration_that_reads_what_it_wrote(capsys, tmp_path):
    code, out, _ = cli(capsys, "data", "synth", "folder-rgb", "--root", tmp_path / "rgb", "--train", 2, "--val", 1,
                       "--image-size", 16)
    assert code == 0
    entry = yaml.safe_load(out[out.index("datasets:"):])["datasets"]["mydata"]
    assert entry["root"] == str(tmp_path / "rgb") and entry["mask_encoding"] == "rgb"
    root = entry.pop("root")
    declaration, problems = declare("mydata", entry, root)
    assert problems == [] and check_dataset(declaration, root, 16, progress=False)["splits"]["val"]["samples"] == 1


@pytest.mark.parametrize("layout", SYNTH_LAYOUTS)
def test_check_counts_exactly_the_pixels_the_generator_drew(layout, generated):
    root = generated[layout]
    declaration = declared(layout, root)
    report = check_dataset(declaration, root, SIZE, name=layout, progress=False)
    drawn = synth_pixels(layout, TRAIN, VAL, seed=2, image_size=SIZE)
    assert report["dataset"] == layout and report["image_size"] == list(SIZE)
    # the only warnings: the classes the generator happened to draw no pixel of in a split (tiny images)
    absent = {role: [k for k in range(declaration.num_classes) if not drawn[role][k]] for role in ("train", "val")}
    assert len(report["warnings"]) == sum(map(bool, absent.values()))
    for warning, (role, classes) in zip(report["warnings"], [item for item in absent.items() if item[1]]):
        named = ", ".join(f"{k} ({declaration.class_names[k]})" for k in classes[:10])
        assert warning.startswith(f"the {role} masks hold no pixel of class {named}"), warning
    for role, samples in (("train", TRAIN), ("val", VAL)):
        assert report["splits"][role] == {"samples": samples,
                                          "pixels": expected_pixels(drawn[role], declaration.num_classes)}
    assert sum(report["splits"]["train"]["pixels"].values()) == TRAIN * SIZE[0] * SIZE[1]
    if layout not in ("pets", "parquet"):  # these draw no ignored pixels; every other layout's ignore is counted
        assert report["splits"]["train"]["pixels"]["255"] > 0


@pytest.mark.parametrize("preset", list(PRESETS))
def test_data_check_of_a_preset_through_the_cli(preset, generated, capsys):
    code, out, _ = cli(capsys, "data", "check", preset, "--root", generated[preset], "--image-size", *SIZE, "--json")
    assert code == 0
    report = json.loads(out)
    drawn = synth_pixels(preset, TRAIN, VAL, seed=2, image_size=SIZE)
    for role in ("train", "val"):
        assert report["splits"][role]["pixels"] == expected_pixels(drawn[role], len(PRESETS[preset]["classes"]))


def test_a_rerun_of_the_check_decodes_nothing(generated, tmp_path, monkeypatch):
    root = copy_of(generated, "folder", tmp_path)
    first = check_dataset(declared("folder", root), root, SIZE, progress=False)

    def fail(*args):
        raise AssertionError("decoded although the caches hold what the check needs")

    monkeypatch.setattr(cache, "decode_chunk", fail)
    assert check_dataset(declared("folder", root), root, SIZE, progress=False) == first
    arrays = load_split(declared("folder", root), root, "train", SIZE, progress=False)
    counts = class_pixel_counts(arrays)
    assert counts.tolist() == np.bincount(np.asarray(arrays.masks).ravel(), minlength=256).tolist()
    assert counts[:4].tolist() == [first["splits"]["train"]["pixels"][str(c)] for c in range(4)]


def test_loaded_masks_are_the_drawn_classes(generated):
    root = generated["folder-rgb"]
    arrays = load_split(declared("folder-rgb", root), root, "val", SIZE, progress=False)
    drawn = synth_pixels("folder-rgb", TRAIN, VAL, seed=2, image_size=SIZE)["val"]
    assert arrays.images.shape == (VAL, *SIZE, 3) and np.bincount(np.asarray(arrays.masks).ravel(),
                                                                  minlength=256).tolist() == drawn.tolist()


# -- the splits ---------------------------------------------------------------------------------
def test_a_val_fraction_is_carved_reproducibly(tmp_path):
    mapping = {"format": "folder", "classes": ["background", "a", "b"], "splits": {"val": {"fraction": 0.25,
                                                                                           "seed": 3}}}
    declaration = declare("carved", mapping, tmp_path)[0]
    synth_declared(declaration, tmp_path / "carved", train=9, val=3, seed=1, image_size=16)
    report = check_dataset(declaration, tmp_path / "carved", 16, progress=False)
    assert (report["splits"]["train"]["samples"], report["splits"]["val"]["samples"]) == (9, 3)
    drawn = synth_pixels(declaration, 9, 3, seed=1, image_size=16)
    total = {key: report["splits"]["train"]["pixels"].get(key, 0) + report["splits"]["val"]["pixels"].get(key, 0)
             for key in report["splits"]["train"]["pixels"]}
    assert total == expected_pixels(drawn["train"] + drawn["val"], 3)
    before = _val_images(declaration, tmp_path / "carved")
    assert before == _val_images(declaration, tmp_path / "carved") and len(before) == 3
    for extra in ("zz_new.jpg", "aa_new.jpg"):  # new pictures move no other picture between the splits
        shutil.copy(tmp_path / "carved" / "images" / "img_00000.jpg", tmp_path / "carved" / "images" / extra)
        shutil.copy(tmp_path / "carved" / "masks" / "img_00000.png",
                    tmp_path / "carved" / "masks" / extra.replace(".jpg", ".png"))
    after = _val_images(declaration, tmp_path / "carved")
    assert len(after) == 4 and len(before - after) <= 1


def _val_images(declaration, root) -> set:
    from trainables.data.layouts import list_split

    return {Path(s.image).name for s in list_split(declaration, root, "val")[0]}


def test_list_lines_may_carry_more_fields_and_comments(generated, tmp_path):
    root = copy_of(generated, "voc", tmp_path)
    listing = root / "ImageSets" / "Segmentation" / "val.txt"
    names = listing.read_text().split()
    listing.write_text("# the val images\n" + "".join(f"{name} -1 extra\n\n" for name in names))
    assert check_dataset("voc", root, SIZE, progress=False)["splits"]["val"]["samples"] == VAL


# -- bad data: every problem named, nothing written ---------------------------------------------
def write_mask(path: Path, values: np.ndarray, mode: str | None = None) -> None:
    image = Image.fromarray(values)
    (image.convert(mode) if mode else image).save(path)


def test_every_bad_file_of_a_preset_is_named_by_the_cli_and_nothing_is_written(generated, tmp_path, capsys):
    root = copy_of(generated, "voc", tmp_path)
    train = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    masks = root / "SegmentationClass"
    (masks / f"{train[0]}.png").unlink()  # an image without its mask
    write_mask(masks / f"{train[1]}.png", np.zeros((10, 10), np.uint8))  # another size
    values = np.zeros(SIZE, np.uint8)
    values[0, :3] = 30
    values[1, 0] = 40
    write_mask(masks / f"{train[2]}.png", values)  # values that are no VOC class
    write_mask(masks / f"{val[0]}.png", np.full((*SIZE, 3), (128, 0, 0), np.uint8))  # an RGB mask
    (root / "JPEGImages" / f"{val[1]}.jpg").unlink()  # a listed image that is missing
    code, _, err = cli(capsys, "data", "check", "voc", "--root", root, "--image-size", *SIZE)
    err = err[err.index("error: "):]  # after the cache's progress lines
    assert code == 2 and err.startswith("error: 5 problems in the dataset:\n")
    lines = err.splitlines()
    for text in (f"the image {root / 'JPEGImages' / train[0]}.jpg has no label file: expected {masks / train[0]}.png",
                 f"label {masks / train[1]}.png is 10x10 (width x height) but its image "
                 f"{root / 'JPEGImages' / train[1]}.jpg is {SIZE[1]}x{SIZE[0]}",
                 f"{masks / train[2]}.png: values outside the classes (0-20) and the ignore index (255): "
                 f"30 (3 pixels), 40 (1 pixel)",
                 f"{masks / val[0]}.png: an RGB mask (mode RGB) but mask_encoding is index; declare mask_encoding: "
                 f"rgb with a palette of its colours, or save the masks as single-channel class ids (mode L or P)",
                 f"{root / 'JPEGImages' / val[1]}.jpg is listed in the split (" + str(root / "ImageSets" /
                                                                                     "Segmentation" / "val.txt")):
        assert sum(text in line for line in lines) == 1, (text, err)
    assert cache_folders(root) == [] and not list((root / ".segstudy-cache").glob(".tmp-*"))


def test_a_mask_without_an_image_is_named(generated, tmp_path, capsys):
    root = copy_of(generated, "ade20k", tmp_path)
    image = root / "images" / "validation" / "ADE_val_00000002.jpg"
    image.unlink()
    code, _, err = cli(capsys, "data", "check", "ade20k", "--root", root, "--image-size", *SIZE)
    mask = root / "annotations" / "validation" / "ADE_val_00000002.png"
    assert code == 2 and err.endswith(f"\nerror: the label file {mask} has no image: expected {image}\n")
    assert cache_folders(root) == []


def test_colours_not_in_the_palette_are_named_with_their_file(generated, tmp_path):
    root = copy_of(generated, "folder-rgb", tmp_path)
    mask = sorted((root / "masks" / "val").rglob("*_mask.png"))[0]
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[0, 0] = (1, 2, 3)
    pixels[1, :2] = (250, 0, 0)
    Image.fromarray(pixels).save(mask)
    with pytest.raises(DatasetError) as error:
        check_dataset(declared("folder-rgb", root), root, SIZE, progress=False)
    assert str(error.value) == (f"{mask}: colours not in the palette: (1, 2, 3) in 1 pixel, (250, 0, 0) in 2 pixels; "
                                f"add each to palette (a class) or ignore_colors")


def test_many_problems_are_capped_with_a_count(generated, tmp_path):
    root = copy_of(generated, "sibling", tmp_path)
    for mask in sorted((root / "trainannot").glob("*.png")) + sorted((root / "valannot").glob("*.png")):
        write_mask(mask, np.full(SIZE, 12, np.uint8))  # 11 classes and void 11: 12 is neither
    for index in range(40):
        shutil.copy(sorted((root / "trainannot").glob("*.png"))[0], root / "trainannot" / f"orphan_{index:02d}.png")
    with pytest.raises(DatasetError) as error:
        check_dataset(declared("sibling", root), root, SIZE, progress=False)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{40 + TRAIN + VAL} problems in the dataset:" and lines[-1] == "  ... and 17 more"
    bad_values = f": values outside the classes (0-10) and the ignore index (11): 12 ({SIZE[0] * SIZE[1]} pixels)"
    assert len(lines) == 32 and sum(bad_values in line for line in error.value.problems) == TRAIN + VAL
    assert cache_folders(root) == []


def test_equal_channel_rgb_masks_and_16_bit_masks(tmp_path):
    mapping = {"format": "folder", "classes": ["background", "object"], "label_map": {1000: 1},
               "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}}}
    declaration = declare("deep", mapping, tmp_path)[0]
    synth_declared(declaration, tmp_path / "deep", train=2, val=1, seed=0, image_size=16)
    mask = sorted((tmp_path / "deep" / "masks" / "train").rglob("*.png"))[0]
    assert Image.open(mask).mode.startswith("I") and 1000 in np.unique(np.asarray(Image.open(mask)))
    drawn = synth_pixels(declaration, 2, 1, seed=0, image_size=16)
    assert check_dataset(declaration, tmp_path / "deep", 16, progress=False)["splits"]["train"]["pixels"] == (
        expected_pixels(drawn["train"], 2))
    grey = np.asarray(Image.open(mask)).clip(0, 1).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(mask)
    with pytest.raises(DatasetError, match="its three channels are equal: save one channel"):
        check_dataset(declaration, tmp_path / "deep", 16, progress=False)


def test_a_parquet_cell_without_bytes_and_a_missing_column(generated, tmp_path):
    import pyarrow.parquet as pq

    root = copy_of(generated, "parquet", tmp_path)
    shard = sorted((root / "data").glob("validation-*.parquet"))[0]
    table = pq.read_table(shard)
    labels = table.column("label").to_pylist()
    labels[1] = {"bytes": None, "path": "lost.png"}
    pq.write_table(table.set_column(1, "label", [labels]), shard)
    declaration = declare("parquet", {**_parquet_mapping(), "id2label": "id2label.json"}, root)[0]
    with pytest.raises(DatasetError, match=f"{shard}, row 1: the 'label' cell holds no encoded image bytes "
                                           f".path 'lost.png'."):
        check_dataset(declaration, root, SIZE, progress=False)
    labels[1] = {"bytes": b"not a png", "path": "damaged.png"}
    pq.write_table(table.set_column(1, "label", [labels]), shard)
    with pytest.raises(DatasetError, match=f"cannot read label image {shard}, row 1 .label.: not an image file Pillow "
                                           "can read .truncated, damaged or another format.$"):
        check_dataset(declaration, root, SIZE, progress=False)
    renamed = declare("parquet", {**_parquet_mapping(), "label_column": "mask"}, root)[0]
    with pytest.raises(DatasetError, match="no column 'mask' .label_column.; its columns: .'image', 'label'."):
        check_dataset(renamed, root, SIZE, progress=False)


def _parquet_mapping() -> dict:
    from trainables.data.presets import LAYOUT_DECLARATIONS

    return dict(LAYOUT_DECLARATIONS["parquet"])


# -- the binary-mask traps -------------------------------------------------------------------------
def test_0_255_masks_read_with_255_ignored_are_warned_about(tmp_path, capsys):
    binary = {"format": "folder", "classes": ["background", "lesion"], "label_map": {255: 1},
              "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}}}
    declaration = declare("lesions", binary, tmp_path)[0]
    synth_declared(declaration, tmp_path / "lesions", train=3, val=2, seed=0, image_size=16)
    masks = sorted((tmp_path / "lesions" / "masks").rglob("*.png"))
    assert set(np.unique(np.concatenate([np.asarray(Image.open(m)).ravel() for m in masks]))) == {0, 255}
    right = check_dataset(declaration, tmp_path / "lesions", 16, progress=False)
    assert right["warnings"] == [] and right["splits"]["train"]["pixels"]["1"] > 0
    plain = declare("lesions", {k: v for k, v in binary.items() if k != "label_map"}, tmp_path)[0]
    wrong = check_dataset(plain, tmp_path / "lesions", 16, progress=False)
    assert wrong["splits"]["train"]["pixels"]["1"] == 0 and wrong["warnings"] == [
        f"the {role} masks hold only 0 and 255; 255 is read as ignored, so no pixel is foreground; if 255 is a "
        f"class, set label_map: {{255: 1}}" for role in ("train", "val")]
    reduced = declare("lesions", {**binary, "label_map": {}, "reduce_zero_label": True}, tmp_path)[0]
    assert "both are read as ignored" in check_dataset(reduced, tmp_path / "lesions", 16, progress=False)[
        "warnings"][0]


def test_0_1_masks_with_reduce_zero_label_or_more_classes_are_warned_about(tmp_path):
    mapping = {"format": "folder", "classes": ["background", "road"],
               "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}}}
    declaration = declare("roads", mapping, tmp_path)[0]
    synth_declared(declaration, tmp_path / "roads", train=3, val=2, seed=0, image_size=16)
    assert check_dataset(declaration, tmp_path / "roads", 16, progress=False)["warnings"] == []
    reduced = declare("roads", {**mapping, "reduce_zero_label": True, "classes": ["road"]}, tmp_path)[0]
    warning = check_dataset(reduced, tmp_path / "roads", 16, progress=False)["warnings"][0]
    assert warning.startswith("the train masks hold only 0 and 1; reduce_zero_label reads 0 as ignored")
    assert warning.endswith("set reduce_zero_label: false")
    more = declare("roads", {**mapping, "classes": ["background", "road", "car"]}, tmp_path)[0]
    assert "but 3 classes are declared; classes [2] never appear" in check_dataset(
        more, tmp_path / "roads", 16, progress=False)["warnings"][0]


def test_a_class_no_mask_holds_and_a_label_map_for_other_masks_are_warned_about(tmp_path):
    mapping = {"format": "folder", "classes": ["background", "road", "car", "sign"],
               "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}}}
    declaration = declare("roads", mapping, tmp_path)[0]
    synth_declared(declaration, tmp_path / "roads", train=3, val=2, seed=0, image_size=16)
    assert check_dataset(declaration, tmp_path / "roads", 16, progress=False)["warnings"] == []
    for mask in (tmp_path / "roads" / "masks" / "val").rglob("*.png"):  # no sign left in val
        values = np.asarray(Image.open(mask))
        Image.fromarray(np.where(values == 3, 0, values).astype(np.uint8)).save(mask)
    mapped = declare("roads", {**mapping, "label_map": {7: 1, 2: 2}}, tmp_path)[0]
    assert check_dataset(mapped, tmp_path / "roads", 16, progress=False)["warnings"] == [
        "the val masks hold no pixel of class 3 (sign): val_miou counts each as IoU 0 (val_miou_present leaves out "
        "those never predicted)",
        "label_map: no mask holds the value(s) 7; the masks hold 0, 1, 2, 3, 255: check that the map was written "
        "for these masks"]


def test_an_image_in_both_splits_is_warned_about(tmp_path):
    mapping = {"format": "folder", "classes": ["background", "a", "b"],
               "splits": {"train": {"subdir": "all"}, "val": {"list": "val.txt"}}}
    declaration = declare("leaky", mapping, tmp_path)[0]
    synth_declared(declaration, tmp_path / "leaky", train=3, val=2, seed=0, image_size=16)
    first = sorted((tmp_path / "leaky" / "images" / "all").rglob("*.jpg"))[0]
    stem = first.relative_to(tmp_path / "leaky" / "images").as_posix()[: -len(".jpg")]
    with open(tmp_path / "leaky" / "val.txt", "a") as listing:
        listing.write(f"{stem}\n")
    warnings = check_dataset(declaration, tmp_path / "leaky", 16, progress=False)["warnings"]
    assert warnings == [f"1 images are in both train and val (e.g. {first}); validation then measures "
                        f"memorisation: give each image one split"]


# -- training on a declared dataset ------------------------------------------------------------------
def test_fit_trains_on_a_declared_folder(generated, tmp_path):
    from trainables.engine import fit

    root = generated["sibling"]
    declaration = declared("sibling", root)
    config = TrainConfig(arch="segformer_b0", dataset="camvid", num_classes=11, data_root=str(root),
                         cache_dir=str(tmp_path / "cache"), image_size=(16, 16), epochs=1, batch_size=4,
                         device="cpu", seed=0)
    result = fit(config, declaration)
    assert len(result.records) == 1 and len(result.records[0]["val_iou"]) == 11
