"""trainables.data: layouts, label mapping, preprocessing, the cache and bad-input messages."""

import json
import os
import re
import threading

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official_labels
from PIL import Image

from trainables.config import PRESET_CLASSES
from trainables.data import (
    CLASS_NAMES,
    NUM_CLASSES,
    SPLITS,
    cache,
    check_dataset,
    dataset_fingerprint,
    load_split,
    synth_dataset,
)
from trainables.errors import DatasetError


def small_pets(tmp_path, train=6, val=2, size=(40, 60)):
    synth_dataset("pets", tmp_path / "pets", train=train, val=val, seed=1, image_size=size)
    return tmp_path / "pets"


def small_streets(tmp_path, train=4, val=2, size=(32, 64)):
    synth_dataset("cityscapes", tmp_path / "cityscapes", train=train, val=val, seed=1, image_size=size)
    return tmp_path / "cityscapes"


def pet_files(root, split):
    """(image, trimap) paths of a split, in load_split's order (sorted by image path)."""
    base = root / "oxford-iiit-pet"
    names = [line.split()[0] for line in (base / "annotations" / f"{split}.txt").read_text().splitlines()]
    pairs = [(base / "images" / f"{n}.jpg", base / "annotations" / "trimaps" / f"{n}.png") for n in names]
    return sorted(pairs, key=lambda pair: str(pair[0]))


def load(dataset, root, split, size, cache_dir, **options):
    return load_split(dataset, root, split, size, cache_dir, progress=False, **options)


def cache_folders(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir() if p.name != "fingerprints")


# -- layouts and generation --------------------------------------------------------
def test_generated_trees_open_with_torchvision(pets_root, cityscapes_root):
    from torchvision.datasets import Cityscapes, OxfordIIITPet

    pets = {s: OxfordIIITPet(pets_root, split=s, target_types="segmentation", download=False) for s in SPLITS["pets"]}
    assert (len(pets["trainval"]), len(pets["test"])) == (48, 24)
    image, trimap = pets["test"][0]
    assert image.mode == "RGB" and image.size == trimap.size and set(np.unique(trimap)) <= {1, 2, 3}
    streets = {s: Cityscapes(cityscapes_root, split=s, mode="fine", target_type="semantic") for s in ("train", "val")}
    assert (len(streets["train"]), len(streets["val"])) == (16, 8)
    image, label_ids = streets["val"][0]
    assert image.size == label_ids.size
    assert (pets_root / "oxford-iiit-pet" / "annotations" / "list.txt").is_file()


def test_generation_is_deterministic_and_refuses_to_overwrite(tmp_path):
    assert synth_dataset("pets", tmp_path / "a", train=3, val=2, seed=7) == {"format": "pets"}
    synth_dataset("pets", tmp_path / "b", train=3, val=2, seed=7)
    first, second = tmp_path / "a", tmp_path / "b"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    with pytest.raises(DatasetError, match="already exists"):
        synth_dataset("pets", tmp_path / "a", train=3, val=2)


def test_public_constants():
    assert SPLITS == {"pets": ("trainval", "test"), "cityscapes": ("train", "val"), "voc": ("train", "val"),
                      "ade20k": ("training", "validation")}
    assert NUM_CLASSES == {"pets": 3, "cityscapes": 19, "voc": 21, "ade20k": 150} == PRESET_CLASSES
    assert CLASS_NAMES["pets"] == ("pet", "background", "border")
    names = CLASS_NAMES["cityscapes"]
    assert len(names) == 19 and names[:3] == ("road", "sidewalk", "building") and names[-1] == "bicycle"


# -- label mapping -------------------------------------------------------------------
def test_pets_trimap_1_2_3_becomes_classes_0_1_2(tmp_path):
    root = small_pets(tmp_path)  # every picture 40x60: loading at 40x60 resizes nothing
    arrays = load("pets", root, "trainval", (40, 60), tmp_path / "cache")
    files = pet_files(root, "trainval")
    assert arrays.masks.shape == (6, 40, 60) and arrays.images.shape == (6, 40, 60, 3)
    for index, (image, trimap) in enumerate(files):
        assert np.array_equal(arrays.masks[index], np.asarray(Image.open(trimap)) - 1)
        assert np.array_equal(arrays.images[index], np.asarray(Image.open(image).convert("RGB")))
    assert set(np.unique(arrays.masks)) == {0, 1, 2}


def official_train_ids(label_ids):
    table = {label.id: label.trainId if 0 <= label.trainId < 255 else 255 for label in official_labels if label.id >= 0}
    return np.vectorize(table.__getitem__)(label_ids)


def test_cityscapes_ids_map_to_train_ids_with_the_official_table(tmp_path):
    root = small_streets(tmp_path)
    arrays = load("cityscapes", root, "train", (32, 64), tmp_path / "cache")
    labels = sorted((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    raw = np.stack([np.asarray(Image.open(p)) for p in labels])
    assert np.array_equal(arrays.masks, official_train_ids(raw))
    present = set(np.unique(arrays.masks).tolist())
    assert 255 in present and len(present - {255}) >= 8  # a street: many classes and some ignored pixels


def test_label_train_ids_file_is_used_when_present(tmp_path):
    root = small_streets(tmp_path)
    label_ids = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    # a train-id file that disagrees with what mapping the labelIds would give
    train_ids = np.full((32, 64), 5, np.uint8)
    train_ids[:, :10] = 255
    Image.fromarray(train_ids).save(str(label_ids[0]).replace("_labelIds.png", "_labelTrainIds.png"))
    arrays = load("cityscapes", root, "val", (32, 64), tmp_path / "cache")
    assert np.array_equal(arrays.masks[0], train_ids)
    assert np.array_equal(arrays.masks[1], official_train_ids(np.asarray(Image.open(label_ids[1]))))


# -- preprocessing -------------------------------------------------------------------
def test_odd_image_modes_become_rgb(tmp_path):
    root = small_pets(tmp_path, train=5, val=1)
    files = pet_files(root, "trainval")
    rgb = np.asarray(Image.open(files[0][0]))
    odd = {
        "L": Image.fromarray(rgb).convert("L"),
        "RGBA": Image.fromarray(rgb).convert("RGBA"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "P": Image.fromarray(rgb).convert("P"),
        "I;16": Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257),
    }
    for (image_path, _), (mode, image) in zip(files, odd.items()):
        assert image.mode == mode
        # like the real dataset, some ".jpg" files hold other formats: PIL opens by content
        image.save(image_path, format="JPEG" if mode in ("L", "CMYK") else "PNG")
    arrays = load("pets", root, "trainval", (24, 36), tmp_path / "cache")
    assert arrays.images.shape == (5, 24, 36, 3) and arrays.images.dtype == np.uint8
    grey, sixteen_bit = arrays.images[0], arrays.images[4]
    assert np.array_equal(grey[..., 0], grey[..., 1])  # L: three equal channels
    assert 0 < sixteen_bit.mean() < 250  # scaled to 8 bits, not clipped to white


def test_masks_are_resized_with_nearest_neighbour_only(tmp_path):
    root = small_pets(tmp_path, train=2, val=1, size=(60, 60))
    # stripes of 1 (pet) and 3 (border) only: any interpolation would create 2 (background)
    stripes = np.where((np.arange(60) // 2) % 2 == 0, 1, 3).astype(np.uint8)[None, :].repeat(60, 0)
    for _, trimap in pet_files(root, "trainval"):
        Image.fromarray(stripes).save(trimap)
    for size in ((20, 20), (37, 53), (90, 70)):
        masks = load("pets", root, "trainval", size, tmp_path / "cache").masks
        assert set(np.unique(masks)) == {0, 2}, size


def test_non_square_and_int_image_sizes(pets_root, cityscapes_root, tmp_path):
    assert load("pets", pets_root, "test", (24, 40), tmp_path / "c").images.shape == (24, 24, 40, 3)
    assert load("pets", pets_root, "test", 20, tmp_path / "c").masks.shape == (24, 20, 20)
    arrays = load("cityscapes", cityscapes_root, "val", (16, 32), tmp_path / "c")
    assert arrays.images.shape == (8, 16, 32, 3) and arrays.masks.shape == (8, 16, 32)
    assert set(np.unique(arrays.masks)) <= set(range(19)) | {255}


# -- the cache -------------------------------------------------------------------------
def no_decoding(monkeypatch):
    def fail(*args):
        raise AssertionError("decoded although the cache should have been reused")

    monkeypatch.setattr(cache, "decode_chunk", fail)


def test_cache_is_reused_without_decoding(tmp_path, monkeypatch):
    root, cache_dir = small_pets(tmp_path), tmp_path / "cache"
    first = load("pets", root, "trainval", (32, 32), cache_dir)
    assert cache_folders(cache_dir) == [f"pets-trainval-32x32-{first.fingerprint[:16]}"]
    assert isinstance(first.images, np.memmap) and not first.images.flags.writeable
    meta = json.loads((cache_dir / cache_folders(cache_dir)[0] / "meta.json").read_text())
    assert meta["count"] == 6 and meta["size"] == [32, 32] and set(meta["files"]) == {"images", "masks"}
    no_decoding(monkeypatch)
    second = load("pets", root, "trainval", (32, 32), cache_dir)
    assert second.fingerprint == first.fingerprint and np.array_equal(second.images, first.images)


def test_changed_file_or_size_builds_a_new_cache(tmp_path):
    root, cache_dir = small_pets(tmp_path), tmp_path / "cache"
    first = load("pets", root, "trainval", (32, 32), cache_dir).fingerprint
    other_size = load("pets", root, "trainval", (32, 48), cache_dir).fingerprint
    image = pet_files(root, "trainval")[0][0]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = load("pets", root, "trainval", (32, 32), cache_dir).fingerprint
    assert len({first, other_size, touched}) == 3
    assert len(cache_folders(cache_dir)) == 3


@pytest.mark.parametrize("damage", ["truncate", "edit_byte", "remove_meta"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys, damage):
    root, cache_dir = small_pets(tmp_path), tmp_path / "cache"
    original = load("pets", root, "trainval", (32, 32), cache_dir)
    expected = np.array(original.images)
    folder = cache_dir / cache_folders(cache_dir)[0]
    images_file = folder / "images.npy"
    if damage == "truncate":
        os.truncate(images_file, images_file.stat().st_size - 100)
    elif damage == "edit_byte":
        with open(images_file, "r+b") as file:
            file.seek(-5, os.SEEK_END)
            byte = file.read(1)
            file.seek(-5, os.SEEK_END)
            file.write(bytes([byte[0] ^ 0xFF]))
        monkeypatch.setattr(cache, "_verified", set())  # as in a new process (timestamps can be coarse)
    else:
        (folder / "meta.json").unlink()
    capsys.readouterr()
    rebuilt = load("pets", root, "trainval", (32, 32), cache_dir)
    assert "damaged" in capsys.readouterr().err
    assert np.array_equal(rebuilt.images, expected)
    assert cache_folders(cache_dir) == [folder.name]  # same key, no leftovers


def test_concurrent_builders_share_one_cache(tmp_path, monkeypatch):
    root, cache_dir = small_pets(tmp_path), tmp_path / "cache"
    both_started = threading.Barrier(2)
    decode = cache.decode_chunk

    def decode_side_by_side(samples, size):
        both_started.wait(timeout=20)  # each builder is inside its build when the other is
        return decode(samples, size)

    monkeypatch.setattr(cache, "decode_chunk", decode_side_by_side)
    results = [None, None]

    def build(slot):
        results[slot] = load("pets", root, "trainval", (32, 32), cache_dir, workers=1)

    threads = [threading.Thread(target=build, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in results)
    assert np.array_equal(results[0].images, results[1].images)
    assert cache_folders(cache_dir) == [f"pets-trainval-32x32-{results[0].fingerprint[:16]}"]  # no temp folders


def test_max_samples_takes_the_first_samples(tmp_path, monkeypatch):
    root, cache_dir = small_pets(tmp_path), tmp_path / "cache"
    alone = load("pets", root, "trainval", (32, 32), cache_dir, max_samples=4)
    assert alone.images.shape[0] == 4 and cache_folders(cache_dir)[0].startswith("pets-trainval-32x32-first4-")
    full = load("pets", root, "trainval", (32, 32), cache_dir)
    assert np.array_equal(full.images[:4], alone.images) and full.fingerprint != alone.fingerprint
    no_decoding(monkeypatch)  # from now on the full split's cache serves any max_samples
    sliced = load("pets", root, "trainval", (32, 32), cache_dir, max_samples=3)
    assert np.array_equal(sliced.masks, full.masks[:3])
    assert load("pets", root, "trainval", (32, 32), cache_dir, max_samples=4).fingerprint == alone.fingerprint
    assert load("pets", root, "trainval", (32, 32), cache_dir, max_samples=100).images.shape[0] == 6


def test_default_cache_dir(tmp_path, monkeypatch):
    root = small_pets(tmp_path, train=2, val=1)
    load_split("pets", root, "test", (16, 16), progress=False)
    assert (root / ".segstudy-cache").is_dir()
    monkeypatch.setattr(os, "access", lambda *args: False)  # a read-only dataset folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    assert cache.default_cache_dir(tmp_path / "elsewhere") == tmp_path / "user-cache" / "segstudy"


def test_dataset_fingerprint_follows_content_not_timestamps(tmp_path):
    root = small_pets(tmp_path, train=3, val=1)
    first = dataset_fingerprint("pets", root)
    image = pet_files(root, "test")[0][0]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert dataset_fingerprint("pets", root) == first
    image.write_bytes(image.read_bytes() + b"\0")
    assert dataset_fingerprint("pets", root) != first


# -- bad input -------------------------------------------------------------------------
def test_missing_roots_show_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError) as pets_error:
        load("pets", tmp_path / "nowhere", "trainval", 32, tmp_path / "cache")
    assert "oxford-iiit-pet" in str(pets_error.value) and "annotations" in str(pets_error.value)
    assert "trimaps/<Name>.png" in str(pets_error.value)
    with pytest.raises(DatasetError) as streets_error:
        load("cityscapes", tmp_path / "nowhere", "train", 32, tmp_path / "cache")
    assert "leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png" in str(streets_error.value)
    assert "gtFine_labelIds.png" in str(streets_error.value)


def test_dataset_folder_itself_as_root_gets_a_hint(tmp_path):
    root = small_pets(tmp_path, train=2, val=1)
    with pytest.raises(DatasetError, match="pass its parent folder"):
        load("pets", root / "oxford-iiit-pet", "test", 32, tmp_path / "cache")


def test_missing_list_file_and_malformed_line(tmp_path):
    root = small_pets(tmp_path, train=2, val=1)
    annotations = root / "oxford-iiit-pet" / "annotations"
    (annotations / "test.txt").unlink()
    with pytest.raises(DatasetError, match="test.txt is missing"):
        load("pets", root, "test", 32, tmp_path / "cache")
    (annotations / "trainval.txt").write_text("../../../etc/passwd 1 1\n")
    with pytest.raises(DatasetError, match="trainval.txt, line 1"):
        load("pets", root, "trainval", 32, tmp_path / "cache")


def bad_pets(tmp_path, damage):
    root = small_pets(tmp_path, train=3, val=1)
    image, trimap = pet_files(root, "trainval")[1]
    damage(image, trimap)
    return root, image, trimap


@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_image_is_named(tmp_path, workers):
    root, image, _ = bad_pets(tmp_path, lambda image, trimap: image.write_bytes(image.read_bytes()[:300]))
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {image}")):
        load("pets", root, "trainval", 32, tmp_path / "cache", workers=workers)
    assert not (tmp_path / "cache").exists() or cache_folders(tmp_path / "cache") == []  # nothing half-built


def test_missing_image_is_named(tmp_path):
    root, image, _ = bad_pets(tmp_path, lambda image, trimap: image.unlink())
    with pytest.raises(DatasetError, match=re.escape(f"{image} is listed in the split")):
        load("pets", root, "trainval", 32, tmp_path / "cache")


def test_mask_size_mismatch_names_both_files(tmp_path):
    root, image, trimap = bad_pets(tmp_path, lambda image, trimap: Image.new("L", (30, 20), 2).save(trimap))
    with pytest.raises(DatasetError) as error:
        load("pets", root, "trainval", 32, tmp_path / "cache")
    assert str(trimap) in str(error.value) and str(image) in str(error.value)
    assert "30x20" in str(error.value) and "60x40" in str(error.value)


def test_trimap_values_outside_1_to_3(tmp_path):
    def write_bad_trimap(image, trimap):
        values = np.full((40, 60), 2, np.uint8)
        values[0, :3] = (0, 7, 1)
        Image.fromarray(values).save(trimap)

    root, _, trimap = bad_pets(tmp_path, write_bad_trimap)  # 0 is read as ignored (reduce_zero_label), 7 is no class
    expected = (f"{trimap}: values outside the classes (0-2) and the ignore index (255) after reduce_zero_label "
                f"(value k is class k-1): 7 (1 pixel)")
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load("pets", root, "trainval", 32, tmp_path / "cache")


def test_cityscapes_label_id_outside_the_table(tmp_path):
    root = small_streets(tmp_path)
    label = sorted((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))[2]
    values = np.asarray(Image.open(label)).copy()
    values[3, 3] = 200
    Image.fromarray(values).save(label)
    with pytest.raises(DatasetError, match=re.escape(f"{label}: values outside the classes (0-18) and the ignore "
                                                     f"index (255) after label_map: 200 (1 pixel)")):
        load("cityscapes", root, "train", 32, tmp_path / "cache")


def test_cityscapes_image_without_label_is_named(tmp_path):
    root = small_streets(tmp_path)
    label = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]
    label.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"has no label file: expected {label}")):
        load("cityscapes", root, "val", 32, tmp_path / "cache")


# -- check_dataset -----------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["pets", "cityscapes"])
def test_check_dataset_report(dataset, pets_root, cityscapes_root):
    root = pets_root if dataset == "pets" else cityscapes_root
    report = json.loads(json.dumps(check_dataset(dataset, root, (24, 40))))
    assert report["dataset"] == dataset and list(report["splits"]) == ["train", "val"]
    for info in report["splits"].values():
        assert set(info) == {"samples", "pixels"}
        assert sum(info["pixels"].values()) == info["samples"] * 24 * 40
        assert {str(c) for c in range(NUM_CLASSES[dataset])} <= set(info["pixels"]) <= {
            str(c) for c in range(NUM_CLASSES[dataset])} | {"255"}
    assert report["splits"]["train"]["samples"] == {"pets": 48, "cityscapes": 16}[dataset]
    if dataset == "cityscapes":
        assert report["splits"]["train"]["pixels"]["255"] > 0
