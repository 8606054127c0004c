"""Dataset declarations: a study file's entry validated with every problem's key path, the presets as fixed
values of the same fields, the JSON round trip the plan stores, and fingerprints (the presets' unchanged)."""

import hashlib
import json

import pytest

from trainables.data import FORMATS, DataDeclaration, dataset_fingerprint, declare, label_files, preset, synth_dataset
from trainables.data.declaration import FIELDS
from trainables.data.presets import LAYOUT_DECLARATIONS, PRESETS
from trainables.errors import ConfigError, DatasetError

ROADS = {"format": "folder", "classes": ["background", "road", "car"],
         "splits": {"train": {"subdir": "train"}, "val": {"subdir": "val"}}}


def problems_of(mapping, root=".", name="roads"):
    declaration, problems = declare(name, mapping, root)
    assert (declaration is None) == bool(problems)
    return dict(problems)


# -- what a declaration is --------------------------------------------------------------
def test_every_field_is_documented_in_one_line_and_every_format_named():
    for name, field in FIELDS.items():
        doc = field.metadata.get("doc", "")
        assert doc and "\n" not in doc, name
    assert FORMATS == ("folder", "parquet", "pets", "cityscapes", "voc", "ade20k")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    declaration = preset(name)
    stored = json.loads(json.dumps(declaration.to_dict()))
    again = DataDeclaration.from_dict(stored)
    assert again == declaration and hash(again) == hash(declaration)
    assert len(declaration.colours) == declaration.num_classes == len(declaration.class_names)
    assert len(set(declaration.colours)) == declaration.num_classes or name == "ade20k"


def test_preset_facts():
    voc, ade, pets, city = preset("voc"), preset("ade20k"), preset("pets"), preset("cityscapes")
    assert voc.num_classes == 21 and voc.class_names[15] == "person" and voc.ignore_index == 255
    assert voc.colours[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]  # the devkit's colour map
    assert ade.num_classes == 150 and ade.reduce_zero_label and ade.class_names[:3] == ["wall", "building", "sky"]
    assert ade.class_of_value(0) is None and ade.class_of_value(1) == 0 and ade.class_of_value(150) == 149
    assert pets.split_name("train") == "trainval" and pets.split_name("val") == "test"
    assert [pets.class_of_value(v) for v in (1, 2, 3)] == [0, 1, 2]
    assert city.class_of_value(7) == 0 and city.class_of_value(26) == 13 and city.class_of_value(0) is None
    assert len(set(ade.colours)) == 150  # generated colours, all distinct


def test_a_study_file_entry_without_format_named_after_a_preset_is_that_preset():
    assert declare("voc", {}, ".") == (preset("voc"), [])
    assert declare("pets", {"format": "pets"}, ".") == (preset("pets"), [])


def test_a_valid_folder_entry_and_its_derived_values():
    declaration = declare("roads", {**ROADS, "label_map": {"255": 1, 7: 255}}, ".")[0]
    assert declaration.num_classes == 3 and declaration.label_map == {255: 1, 7: 255}
    assert declaration.class_of_value(255) == 1 and declaration.class_of_value(7) is None
    assert declaration.class_of_value(2) == 2 and declaration.class_of_value(9) is None
    assert DataDeclaration.from_dict(json.loads(json.dumps(declaration.to_dict()))) == declaration


def test_rgb_colours_follow_the_palette_through_the_label_transforms():
    mapping = {**ROADS, "mask_encoding": "rgb", "reduce_zero_label": True,
               "palette": [[1, 1, 1], [10, 0, 0], [0, 20, 0], [0, 0, 30]]}
    declaration = declare("roads", mapping, ".")[0]
    assert declaration.colours == [(10, 0, 0), (0, 20, 0), (0, 0, 30)]  # position 0 is read as ignored


# -- problems, each with its key path ---------------------------------------------------------
BAD_ENTRIES = {
    "preset with a key of its own": ({"format": "voc", "classes": ["a"]},
                                     {"classes": "format voc is a preset: its classes is fixed"}),
    "unknown format": ({**ROADS, "format": "folders"}, {"format": "did you mean 'folder'?"}),
    "no format": ({"classes": ["a"]}, {"format": "required: one of"}),
    "unknown key": ({**ROADS, "mask_sufix": ".png"}, {"mask_sufix": "unknown key; did you mean 'mask_suffix'?"}),
    "label_map and reduce_zero_label": ({**ROADS, "label_map": {255: 1}, "reduce_zero_label": True},
                                        {"label_map": "not with reduce_zero_label"}),
    "jpeg masks": ({**ROADS, "mask_suffix": "_mask.JPG"}, {"mask_suffix": "masks saved as JPEG are lossy"}),
    "rgb without palette": ({**ROADS, "mask_encoding": "rgb"}, {"palette": "required with mask_encoding: rgb"}),
    "folder without classes": ({"format": "folder", "splits": ROADS["splits"]},
                               {"classes": "required for format folder"}),
    "parquet without classes": ({"format": "parquet", "files": {"train": "a-*.parquet", "val": "b.parquet"}},
                                {"classes": "required for format parquet: classes (or id2label)"}),
    "too many classes": ({**ROADS, "classes": [f"c{i}" for i in range(256)]},
                         {"classes": "expected 1 to 255 classes, got 256"}),
    "no classes": ({**ROADS, "classes": []}, {"classes": "expected 1 to 255 classes, got 0"}),
    "repeated class": ({**ROADS, "classes": ["a", "b", "a"]}, {"classes": "each class once: ['a'] repeat"}),
    "list not a string": ({**ROADS, "splits": {"train": {"subdir": "t"}, "val": {"list": 3}}},
                          {"splits.val.list": "expected a non-empty string, got 3"}),
    "fraction out of range": ({**ROADS, "splits": {"val": {"fraction": 1.5}}},
                              {"splits.val.fraction": "expected a number between 0 and 1, got 1.5"}),
    "train beside a fraction": ({**ROADS, "splits": {"train": {"subdir": "t"}, "val": {"fraction": 0.2}}},
                                {"splits.train": "omit it when val is a fraction"}),
    "fraction for train": ({**ROADS, "splits": {"train": {"fraction": 0.5}, "val": {"subdir": "v"}}},
                           {"splits.train.fraction": "only val is carved as a fraction"}),
    "unknown role": ({**ROADS, "splits": {**ROADS["splits"], "test": {"subdir": "t"}}},
                     {"splits.test": "unknown role; the roles are train and val"}),
    "two kinds in one split": ({**ROADS, "splits": {"train": {"subdir": "a", "list": "b"}, "val": {"subdir": "v"}}},
                               {"splits.train": "expected one of {subdir: X}"}),
    "sibling without masks": ({**ROADS, "splits": {"train": {"images": "train"}, "val": {"subdir": "v"}}},
                              {"splits.train.masks": "required beside images"}),
    "no val": ({**ROADS, "splits": {"train": {"subdir": "t"}}}, {"splits.val": "required"}),
    "path outside root": ({**ROADS, "images": "../elsewhere"}, {"images": "a path relative to the dataset's root"}),
    "ignore index is a class": ({**ROADS, "ignore_index": 2}, {"ignore_index": "not a class id (>= 3, e.g. 255)"}),
    "label_map to no class": ({**ROADS, "label_map": {255: 7}},
                              {"label_map.255": "expected a class id (0-2) or the ignore_index (255), got 7"}),
    "bad colour": ({**ROADS, "palette": [[0, 0, 0], [0, 0], [1, 2, 300]]},
                   {"palette[1]": "expected [r, g, b]", "palette[2]": "expected [r, g, b]"}),
    "palette length": ({**ROADS, "palette": [[0, 0, 0]]}, {"palette": "expected one colour per class (3), got 1"}),
    "repeated rgb colour": ({**ROADS, "mask_encoding": "rgb", "palette": [[0, 0, 0], [1, 1, 1], [0, 0, 0]]},
                            {"palette": "each colour once"}),
    "ignore colours under index": ({**ROADS, "ignore_colors": [[1, 2, 3]]}, {"ignore_colors": "only with"}),
    "folder key for parquet": ({"format": "parquet", "classes": ["a"], "images": "x",
                                "files": {"train": "t.parquet", "val": "v.parquet"}},
                               {"images": "only for format folder"}),
    "parquet without val files": ({"format": "parquet", "classes": ["a"], "files": {"train": "t.parquet"}},
                                  {"files.val": "required"}),
    "classes and id2label": ({"format": "parquet", "classes": ["a"], "id2label": "x.json",
                              "files": {"train": "t.parquet", "val": "v.parquet"}},
                             {"id2label": "give classes or id2label, not both"}),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_a_bad_entry_names_the_key_path_and_what_was_expected(case):
    mapping, expected = BAD_ENTRIES[case]
    found = problems_of(mapping)
    for path, text in expected.items():
        assert path in found and text in found[path], (case, found)


def test_every_problem_of_an_entry_is_returned_at_once():
    mapping = {**ROADS, "mask_suffix": ".jpg", "mask_encoding": "rgb", "label_map": {255: 1},
               "reduce_zero_label": True, "ignore_index": "x", "splits": {"val": {"list": ""}, "tests": {}}}
    found = problems_of(mapping)
    assert set(found) >= {"mask_suffix", "palette", "label_map", "ignore_index", "splits.val.list", "splits.tests",
                          "splits.train"}


def test_id2label_is_read_at_declaration_time(tmp_path):
    mapping = {"format": "parquet", "files": {"train": "t-*.parquet", "val": "v.parquet"}, "id2label": "labels.json"}
    assert "cannot read" in problems_of(mapping, tmp_path)["id2label"]
    (tmp_path / "labels.json").write_text(json.dumps({"0": "road", "2": "car"}))
    assert "every id from 0" in problems_of(mapping, tmp_path)["id2label"]
    (tmp_path / "labels.json").write_text(json.dumps({"1": "car", "0": "road"}))
    declaration, problems = declare("side", mapping, tmp_path)
    assert problems == [] and declaration.class_names == ["road", "car"]


def test_declare_never_raises_on_odd_values():
    for mapping in (None, [], "voc", {"format": ["folder"]}, {**ROADS, "splits": "train"},
                    {**ROADS, "label_map": [1]}, {**ROADS, "classes": "abc"}, {**ROADS, "palette": "red"},
                    {**ROADS, "splits": {"val": None}}, {**ROADS, "label_map": {"x": 1, True: 1}}):
        declaration, problems = declare("roads", mapping, ".")
        assert declaration is None and problems and all(isinstance(m, str) for _, m in problems)


# -- fingerprints -----------------------------------------------------------------------
def content_hash(lines):
    total = hashlib.sha256()
    for split, relative, path in lines:
        total.update(f"{split}\0{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return total.hexdigest()[:16]


def test_preset_fingerprints_are_the_files_as_torchvision_lists_them(tmp_path):
    """The pets and cityscapes fingerprints key pretrained encoders that studies reuse: they stay the hash of
    (split, relative path, sha256) over torchvision's listing of each split, as before the declarations."""
    from torchvision.datasets import Cityscapes, OxfordIIITPet

    synth_dataset("pets", tmp_path / "pets", train=4, val=2, seed=5, image_size=(24, 32))
    synth_dataset("cityscapes", tmp_path / "city", train=3, val=2, seed=5, image_size=(16, 32))
    lines = []
    for split in ("trainval", "test"):
        listing = OxfordIIITPet(tmp_path / "pets", split=split, target_types="segmentation")
        for image, trimap in sorted(zip(map(str, listing._images), map(str, listing._segs))):
            for path in (image, trimap):
                lines.append((split, path[len(str(tmp_path / "pets")) + 1:], tmp_path / "pets" / path))
    assert dataset_fingerprint("pets", tmp_path / "pets") == content_hash(lines)
    lines = []
    for split in ("train", "val"):
        listing = Cityscapes(tmp_path / "city", split=split, mode="fine", target_type="semantic")
        for image, (label,) in sorted(zip(listing.images, listing.targets)):
            for path in (image, label):
                lines.append((split, path[len(str(tmp_path / "city")) + 1:], tmp_path / "city" / path))
    assert dataset_fingerprint(preset("cityscapes"), tmp_path / "city") == content_hash(lines)


def test_a_declarations_fingerprint_covers_how_its_masks_are_read(tmp_path):
    mapping = synth_dataset("folder", tmp_path / "roads", train=3, val=2, seed=0, image_size=(16, 16))
    declaration = declare("roads", mapping, tmp_path / "roads")[0]
    other = declare("roads", {**mapping, "label_map": {3: 255}}, tmp_path / "roads")[0]
    assert dataset_fingerprint(declaration, tmp_path / "roads") != dataset_fingerprint(other, tmp_path / "roads")
    assert dataset_fingerprint(declaration, tmp_path / "roads") == dataset_fingerprint(
        DataDeclaration.from_dict(declaration.to_dict()), tmp_path / "roads")


def test_label_files_name_the_masks_of_an_image(tmp_path):
    roads = declare("roads", {**ROADS, "mask_suffix": "_mask.png", "image_suffix": ".png"}, ".")[0]
    assert [name for name, _ in label_files(roads, "a/scene_1.png")] == ["scene_1_mask.png"]
    assert [name for name, _ in label_files("cityscapes", "x_000001_000019_leftImg8bit.png")] == [
        "x_000001_000019_gtFine_labelTrainIds.png", "x_000001_000019_gtFine_labelIds.png"]


def test_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError, match="not a preset dataset .presets: pets, cityscapes, voc, ade20k"):
        preset("roads")
    with pytest.raises(ConfigError, match="unknown dataset declaration key"):
        DataDeclaration.from_dict({"format": "folder", "colour": 1})


def test_the_generated_layouts_declarations_are_valid(tmp_path):
    for layout, mapping in LAYOUT_DECLARATIONS.items():
        if layout != "parquet":  # its id2label.json must exist: test_data_layouts generates it
            assert declare(layout, mapping, tmp_path)[1] == [], layout
    with pytest.raises(DatasetError, match="already exists"):
        synth_dataset("voc", tmp_path / "v", train=1, val=1, image_size=8)
        synth_dataset("voc", tmp_path / "v", train=1, val=1, image_size=8)
