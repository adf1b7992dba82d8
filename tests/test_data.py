"""Tests for minildm.data: item format, determinism, disjoint splits, ground truth, streaming, errors."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from minildm.data import (BACKGROUND_NAMES, COLOUR_NAMES, COLOURS, DATASET_NAMES, SHAPE_NAMES, SHAPE_SYNONYMS,
                          SIZE_NAMES, ShapeObject, ShapesDataset, ShapesStream, collate, label_names, load_dataset,
                          pad_boxes, photos, relation, render_scene)
from minildm.data import fashion_mnist as fm
from minildm.data.image_folder import read_captions
from minildm.data.shapes import MAX_OVERLAP, box_overlap, generate

KEYS = {"image", "caption", "label", "boxes", "objects"}


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_item_format(size):
    ds = load_dataset("shapes", "train", size, length=20)
    assert len(ds) == 20 and ds.num_classes == len(SHAPE_NAMES)
    for i in range(len(ds)):
        it = ds[i]
        assert KEYS <= set(it)
        x = it["image"]
        assert x.dtype == torch.float32 and x.shape == (3, size, size)
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
        n = len(it["objects"])
        assert 1 <= n <= 3
        assert it["boxes"].dtype == torch.float32 and it["boxes"].shape == (n, 4)
        b = it["boxes"]
        assert (b >= 0).all() and (b <= 1).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert isinstance(it["caption"], str) and len(it["caption"]) > 5
        assert it["label"] == SHAPE_NAMES.index(it["objects"][0]["shape"])
        for o, box in zip(it["objects"], b):
            assert o["shape"] in SHAPE_NAMES and o["colour"] in COLOUR_NAMES and o["size"] in SIZE_NAMES
            assert torch.allclose(torch.tensor(o["box"]), box)
            cx, cy = o["centre"]
            assert box[0] < cx < box[2] and box[1] < cy < box[3]
    assert ds[-1]["index"] == 19
    with pytest.raises(IndexError):
        ds[20]


def test_shapes_deterministic_across_fresh_objects_and_cache():
    a = ShapesDataset("val", 64, length=30, seed=3)
    b = ShapesDataset("val", 64, length=30, seed=3, cache=False)
    for i in (0, 7, 29):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
        assert x["objects"] == y["objects"] and torch.equal(x["boxes"], y["boxes"])
        again = a[i]  # from the cache
        assert torch.equal(again["image"], x["image"]) and again["caption"] == x["caption"]
    assert not torch.equal(ShapesDataset("val", 64, length=1, seed=4)[0]["image"], a[0]["image"])
    # The scene does not depend on the resolution.
    small, large = ShapesDataset("val", 32, length=5, seed=3), ShapesDataset("val", 128, length=5, seed=3)
    for i in range(5):
        assert small[i]["objects"] == large[i]["objects"] and small[i]["caption"] == large[i]["caption"]


def test_shapes_splits_never_overlap():
    digests = {}
    for split in ("train", "val", "test"):
        ds = ShapesDataset(split, 32, length=300, cache=False)
        digests[split] = {_digest(ds[i]["image"]) for i in range(len(ds))}
        assert len(digests[split]) == 300  # no duplicates within a split either
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def test_shapes_scene_rules_and_label_definition():
    ds = ShapesDataset("train", 64, length=400)
    counts = {1: 0, 2: 0, 3: 0}
    seen_shapes, seen_colours, seen_bgs = set(), set(), set()
    for i in range(len(ds)):
        scene = ds.scene(i)
        objs = scene.objects
        counts[len(objs)] += 1
        assert len({o.colour for o in objs}) == len(objs)  # distinct colours
        main = SIZE_NAMES.index(objs[0].size)
        assert all(SIZE_NAMES.index(o.size) < main for o in objs[1:])  # main object is strictly largest
        assert all(o.radius < objs[0].radius for o in objs[1:])
        for j in range(len(objs)):
            for k in range(j):
                assert box_overlap(objs[j].box, objs[k].box) <= MAX_OVERLAP
        seen_shapes |= {o.shape for o in objs}
        seen_colours |= {o.colour for o in objs}
        seen_bgs.add(scene.background.kind)
    assert all(c > 40 for c in counts.values()), counts
    assert seen_shapes == set(SHAPE_NAMES) and seen_colours == set(COLOUR_NAMES)
    assert seen_bgs == set(BACKGROUND_NAMES)


def test_shapes_captions_name_every_object_and_vary():
    ds = ShapesDataset("train", 32, length=300)
    captions = []
    for i in range(len(ds)):
        _, scene, caption = generate("train", i, 32)
        captions.append(caption)
        for o in scene.objects:
            assert o.colour in caption, (caption, o)
            assert any(s in caption for s in SHAPE_SYNONYMS[o.shape]), (caption, o)
    assert len(set(captions)) > 280
    joined = " ".join(captions)
    for phrase in ("left of", "above", "three", "two", "background", "large", "small", "in the top",
                   "disc", "striped", "checkered"):
        assert phrase in joined, phrase
    # Captions with a relation only when the relation holds for the main object and another one.
    for i, cap in enumerate(captions):
        scene = ds.scene(i)
        if " to the left of " in cap:
            assert any(relation(scene.objects[0], o) == "left of" for o in scene.objects[1:]), cap


def test_relation_is_unambiguous():
    a = ShapeObject("circle", "red", "medium", 0.2, 0.5, 0.12)
    b = ShapeObject("square", "blue", "medium", 0.8, 0.55, 0.12)
    c = ShapeObject("star", "green", "small", 0.25, 0.9, 0.08)
    assert relation(a, b) == "left of" and relation(b, a) == "right of"
    assert relation(a, c) == "above" and relation(c, a) == "below"
    d = ShapeObject("star", "green", "small", 0.5, 0.5, 0.1)  # diagonal neighbour: boxes touch in x
    e = ShapeObject("cross", "pink", "small", 0.62, 0.62, 0.1)
    assert relation(d, e) is None


def _colour_mask(image: torch.Tensor, colour: str) -> torch.Tensor:
    u8 = ((image + 1) * 127.5).round()
    ref = torch.tensor(COLOURS[colour], dtype=torch.float32).view(3, 1, 1)
    return ((u8 - ref).abs() <= 2).all(dim=0)


@pytest.mark.parametrize("size", [64, 128])
def test_shapes_boxes_match_object_pixels(size):
    ds = ShapesDataset("test", size, length=60, cache=False)
    for i in range(len(ds)):
        it = ds[i]
        for o in it["objects"]:
            mask = _colour_mask(it["image"], o["colour"])
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(xs) > 0, (i, o)
            x0, y0, x1, y1 = (v * size for v in o["box"])
            # every body pixel lies inside the box (pixel centres, half a pixel of slack)
            assert (xs + 0.5 >= x0 - 0.5).all() and (xs + 0.5 <= x1 + 0.5).all(), (i, o)
            assert (ys + 0.5 >= y0 - 0.5).all() and (ys + 0.5 <= y1 + 0.5).all(), (i, o)
            cx, cy = (xs.float() + 0.5).mean() / size, (ys.float() + 0.5).mean() / size
            bx0, by0, bx1, by1 = o["box"]
            assert bx0 < cx < bx1 and by0 < cy < by1
            assert len(xs) >= 0.1 * (x1 - x0) * (y1 - y0), (i, o, len(xs))


def test_shapes_background_has_fine_detail():
    """Energy above half the Nyquist frequency: what an L2-trained autoencoder blurs away."""
    ds = ShapesDataset("train", 64, length=100, cache=False)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    blurred = F.interpolate(F.avg_pool2d(x, 4), scale_factor=4, mode="bilinear", align_corners=False)
    detail = (x - blurred).abs().mean(dim=(1, 2, 3))
    assert (detail > 0.03).float().mean() > 0.9, detail.sort().values[:10]
    # ...yet low contrast: background pixels stay away from the saturated object colours.
    assert x.std(dim=(2, 3)).mean() < 0.5


def test_shapes_label_kinds_and_channels():
    for kind, n in (("shape", 7), ("colour", 8), ("shape_colour", 56), ("count", 3)):
        ds = load_dataset("shapes", "train", 32, length=40, label=kind)
        assert ds.num_classes == n == len(label_names(kind))
        labels = [ds[i]["label"] for i in range(len(ds))]
        assert all(0 <= v < n for v in labels)
        for i in range(5):
            o = ds[i]["objects"][0]
            expected = {"shape": o["shape_id"], "colour": o["colour_id"],
                        "shape_colour": o["shape_id"] * 8 + o["colour_id"], "count": len(ds[i]["objects"]) - 1}
            assert labels[i] == expected[kind]
    grey = load_dataset("shapes", "val", 48, length=2, channels=1)[0]["image"]
    assert grey.shape == (1, 48, 48)


def test_render_scene_requested_layout():
    objects = [{"shape": "circle", "colour": "red", "centre": (0.3, 0.4), "size": "large"},
               {"shape": "triangle", "colour": "blue", "box": (0.6, 0.6, 0.9, 0.9)}]
    item = render_scene(objects, 64, background_seed=5)
    assert item["label"] == SHAPE_NAMES.index("circle")
    assert item["objects"][0]["size"] == "large" and item["objects"][0]["position"] == "left"
    x0, y0, x1, y1 = item["objects"][1]["box"]
    assert 0.6 - 1e-6 <= x0 and x1 <= 0.9 + 1e-6 and 0.6 - 1e-6 <= y0 and y1 <= 0.9 + 1e-6
    assert max(x1 - x0, y1 - y0) > 0.29  # fitted to the box
    img = item["image"]
    assert _colour_mask(img, "red")[int(0.4 * 64), int(0.3 * 64)]  # centre pixel has the object's colour
    assert _colour_mask(img, "blue")[int(0.78 * 64), int(0.75 * 64)]
    assert "red" in item["caption"] and "blue" in item["caption"]
    again = render_scene(objects, 64, background_seed=5)
    assert torch.equal(again["image"], img)
    other = render_scene(objects, 64, background_seed=6, background="dots")
    assert not torch.equal(other["image"], img)
    assert render_scene(objects, 32, background_seed=5)["image"].shape == (3, 32, 32)


def test_shapes_render_speed():
    generate("train", 0, 64)
    t = time.perf_counter()
    for i in range(200):
        generate("train", i, 64)
    per_item = (time.perf_counter() - t) / 200
    assert per_item < 0.015, f"{per_item * 1000:.2f} ms per 64 px image"


# ----------------------------------------------------------------------------------------- streaming


def test_stream_is_endless_and_resumable():
    stream = load_dataset("shapes", "train", 32, length=None)
    assert isinstance(stream, ShapesStream)
    it = iter(stream)
    items = [next(it) for _ in range(25)]
    assert [x["index"] for x in items] == list(range(25))
    fixed = ShapesDataset("train", 32, length=30)
    assert torch.equal(items[12]["image"], fixed[12]["image"]) and items[12]["caption"] == fixed[12]["caption"]
    resumed = iter(load_dataset("shapes", "train", 32, length=None, start=20))
    for k in range(5):
        r = next(resumed)
        assert r["index"] == 20 + k and torch.equal(r["image"], items[20 + k]["image"])
    assert torch.equal(stream[7]["image"], items[7]["image"])


def test_stream_shards_partition_indices():
    parts = []
    for rank in range(2):
        s = ShapesStream("train", 32, rank=rank, world_size=2, start=3)
        it = iter(s)
        parts.append([next(it)["index"] for _ in range(10)])
    assert parts[0] == list(range(3, 23, 2)) and parts[1] == list(range(4, 24, 2))
    # DataLoader workers: each worker takes every num_workers-th index; together they cover all.
    stream = ShapesStream("val", 32)
    loader = DataLoader(stream, batch_size=4, num_workers=2, collate_fn=collate)
    seen = []
    for b, batch in enumerate(loader):
        idx = batch["index"].tolist()
        assert len({i % 2 for i in idx}) == 1  # one worker per batch
        seen += idx
        if b == 5:
            break
    assert sorted(seen) == list(range(24))


def test_collate_and_pad_boxes():
    ds = ShapesDataset("train", 32, length=8)
    batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].shape == (8,)
    assert batch["label"].dtype == torch.long and isinstance(batch["caption"], list)
    assert len(batch["caption"]) == len(batch["boxes"]) == len(batch["objects"]) == 8
    boxes, mask = pad_boxes(batch["boxes"], max_objects=3)
    assert boxes.shape == (8, 3, 4) and mask.sum() == sum(len(o) for o in batch["objects"])
    assert torch.equal(boxes[mask], torch.cat(batch["boxes"]))
    with pytest.raises(ValueError):
        pad_boxes(batch["boxes"], max_objects=0)
    with pytest.raises(ValueError):
        collate([])
    with pytest.raises(ValueError):
        collate([ds[0], ShapesDataset("train", 64, length=1)[0]])


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs", [
    dict(name="mnist"), dict(split="validation"), dict(image_size=20), dict(image_size=300),
    dict(image_size=64.0), dict(image_size=True), dict(length=0), dict(length=-3), dict(length=2.5),
    dict(channels=2), dict(label="size"), dict(seed=-1), dict(colour="red"), dict(start=5),
    dict(length=None, start=-1), dict(length=None, rank=2, world_size=2),
    dict(name="photos", split_by="pixel"), dict(name="photos", image_size=4), dict(name="photos", sources=("moon",)),
    dict(name="photos", length=0), dict(name="fashion_mnist", root="/nonexistent/fm"),
    dict(name="fashion_mnist", image_size=4), dict(name="image_folder"),
    dict(name="image_folder", root="/nonexistent/images"),
])
def test_bad_inputs_raise_value_error(kwargs):
    kwargs = dict(kwargs)
    name = kwargs.pop("name", "shapes")
    split = kwargs.pop("split", "train")
    size = kwargs.pop("image_size", 64)
    with pytest.raises(ValueError):
        load_dataset(name, split, size, **kwargs)


def test_bad_render_requests_raise_value_error():
    good = {"shape": "star", "colour": "pink", "centre": (0.5, 0.5)}
    for bad in ({**good, "shape": "heart"}, {**good, "colour": "brown"}, {"shape": "star", "colour": "pink"},
                {**good, "size": "huge"}, {**good, "centre": (1.5, 0.5)}, {**good, "radius": 0.0},
                {"shape": "star", "colour": "pink", "box": (0.5, 0.5, 0.4, 0.9)}):
        with pytest.raises(ValueError):
            render_scene([bad], 64)
    for kwargs in (dict(image_size=16), dict(background="plaid"), dict(channels=4), dict(label="x")):
        with pytest.raises(ValueError):
            render_scene([good], **{"image_size": 64, **kwargs})
    with pytest.raises(ValueError):
        render_scene([], 64)
    assert set(DATASET_NAMES) == {"shapes", "fashion_mnist", "photos", "image_folder", "shapes+photos"}


# ----------------------------------------------------------------------------------------- photos


def test_photos_deterministic_disjoint_and_well_formed():
    a = load_dataset("photos", "train", 48, length=120)
    b = load_dataset("photos", "train", 48, length=120)
    val = load_dataset("photos", "val", 48, length=120)
    test = load_dataset("photos", "test", 48, length=60)
    for i in (0, 5, 119):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
    it = a[3]
    assert it["image"].shape == (3, 48, 48) and it["image"].dtype == torch.float32
    assert -1 <= it["image"].min() and it["image"].max() <= 1
    assert it["boxes"].shape == (0, 4) and it["objects"] == []
    assert it["label"] == photos.SOURCE_NAMES.index(it["source"])
    assert photos.SOURCES[it["source"]][1] in it["caption"]
    crops = {s: [d.crop(i) for i in range(len(d))] for s, d in (("train", a), ("val", val), ("test", test))}
    assert len({c[0] for c in crops["train"]}) >= 8  # many sources are used
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        for n1, c1, _ in crops[s1]:
            for n2, c2, _ in crops[s2]:
                if n1 == n2:
                    assert min(c1[2], c2[2]) <= max(c1[0], c2[0]) or min(c1[3], c2[3]) <= max(c1[1], c2[1])
    digests = {s: {_digest(d[i]["image"]) for i in range(40)} for s, d in (("train", a), ("val", val))}
    assert not digests["train"] & digests["val"]


def test_photos_split_by_image_and_flip():
    val = load_dataset("photos", "val", 32, length=30, split_by="image")
    assert set(val.source_names) == set(photos.HELD_OUT["val"])
    train = load_dataset("photos", "train", 32, length=30, split_by="image")
    assert not set(train.source_names) & (set(photos.HELD_OUT["val"]) | set(photos.HELD_OUT["test"]))
    plain = load_dataset("photos", "train", 32, length=40)
    flipped = load_dataset("photos", "train", 32, length=40, flip=True)
    flips = [flipped.crop(i)[2] for i in range(40)]
    assert 5 < sum(flips) < 35
    for i in range(40):
        assert plain.crop(i)[:2] == flipped.crop(i)[:2]
        expected = plain[i]["image"].flip(-1) if flips[i] else plain[i]["image"]
        assert torch.equal(flipped[i]["image"], expected)
    assert load_dataset("photos", "test", 32, length=2, channels=1)[0]["image"].shape == (1, 32, 32)


# ----------------------------------------------------------------------------------------- fashion-mnist

needs_fmnist = pytest.mark.skipif(fm.find_files() is None,
                                  reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")


@needs_fmnist
def test_fashion_mnist_splits_shapes_and_labels():
    train = load_dataset("fashion_mnist", "train", 32)
    val = load_dataset("fashion_mnist", "val", 32, channels=1)
    test = load_dataset("fashion_mnist", "test", 40)
    assert (len(train), len(val), len(test)) == (55_000, 5_000, 10_000)
    it = train[0]
    assert it["image"].shape == (3, 32, 32) and it["image"].dtype == torch.float32
    assert -1 <= it["image"].min() and it["image"].max() <= 1
    assert torch.equal(it["image"][0], it["image"][1])  # grey repeated
    assert val[0]["image"].shape == (1, 32, 32) and test[0]["image"].shape == (3, 40, 40)
    labels = torch.tensor([train[i]["label"] for i in range(500)])
    assert labels.min() == 0 and labels.max() == 9 and len(labels.unique()) == 10
    for i in range(20):
        x = train[i]
        assert fm.CAPTION_NOUNS[x["label"]] in x["caption"]
    # val is the tail of the training file, resized from the raw 28x28 image
    images, raw_labels = fm._load_arrays(*fm.find_files()["train"])
    raw = torch.from_numpy(images[55_000].astype(np.float32)) / 127.5 - 1
    assert val[0]["label"] == int(raw_labels[55_000])
    assert torch.allclose(load_dataset("fashion_mnist", "val", 28, channels=1)[0]["image"][0], raw)
    assert len(load_dataset("fashion_mnist", "test", 28, length=100)) == 100


@needs_fmnist
def test_fashion_mnist_torchvision_root_and_bad_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, (img, lab) in fm.FILES.items():
        src_img, src_lab = fm.find_files()[split]
        with gzip.open(src_img) as f_in, open(raw / img, "wb") as f_out:  # uncompressed, as torchvision keeps
            f_out.write(f_in.read())
        shutil.copy(src_lab, raw / (lab + ".gz"))
    ds = load_dataset("fashion_mnist", "test", 28, root=tmp_path, channels=1)
    ref = load_dataset("fashion_mnist", "test", 28, channels=1)
    assert torch.equal(ds[123]["image"], ref[123]["image"]) and ds[123]["label"] == ref[123]["label"]
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(struct.pack(">HBB3I", 0, 8, 3, 2, 28, 28) + b"\0" * 10)
    with pytest.raises(ValueError, match="header"):
        fm.read_idx(bad)
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", "train", 28, root=tmp_path / "empty")


# ----------------------------------------------------------------------------------------- image folder


def _make_folder(root, n_per_class=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            h, w = (40, 60) if i % 2 else (50, 30)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i:02d}.{'png' if i % 3 else 'jpg'}")
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(root / "loose.png")


def test_image_folder_splits_captions_labels(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "captions.json").write_text(json.dumps({"cats/cats_01.png": "a tabby cat", "loose.png": "grey"}))
    splits = {s: load_dataset("image_folder", s, 32, root=tmp_path, val_fraction=0.25, test_fraction=0.25)
              for s in ("train", "val", "test")}
    files = [f for s in splits.values() for f in s.files]
    assert len(files) == len(set(files)) == 25  # the splits partition the folder
    again = load_dataset("image_folder", "train", 32, root=tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert again.files == splits["train"].files == sorted(splits["train"].files)
    ds = splits["train"]
    assert ds.class_names == ("", "cats", "dogs")
    for i in range(len(ds)):
        it = ds[i]
        assert it["image"].shape == (3, 32, 32) and -1 <= it["image"].min() and it["image"].max() <= 1
        folder = it["path"].split("/")[0] if "/" in it["path"] else ""
        assert it["label"] == ds.class_names.index(folder)
    by_path = {f: s for s, d in splits.items() for f in d.files}
    d = splits[by_path["cats/cats_01.png"]]
    assert d[d.files.index("cats/cats_01.png")]["caption"] == "a tabby cat"
    d = splits[by_path["dogs/dogs_02.png"]]
    assert d[d.files.index("dogs/dogs_02.png")]["caption"] == "a photo of dogs"
    d = splits[by_path["loose.png"]]
    item = d[d.files.index("loose.png")]
    assert item["caption"] == "grey" and torch.allclose(item["image"], torch.full((3, 32, 32), 200 / 127.5 - 1))
    grey = load_dataset("image_folder", "train", 16, root=tmp_path, channels=1, captions={"x.png": "y"})
    assert grey[0]["image"].shape == (1, 16, 16)


def test_caption_file_formats(tmp_path):
    (tmp_path / "c.csv").write_text("file_name,text\na.png,a red car\nb.png,\"a dog, running\"\n")
    (tmp_path / "c.tsv").write_text("a.png\ta red car\nb.png\ta dog, running\n")
    (tmp_path / "m.jsonl").write_text('{"file_name": "a.png", "text": "a red car"}\n'
                                      '{"file_name": "b.png", "caption": "a dog, running"}\n')
    expected = {"a.png": "a red car", "b.png": "a dog, running"}
    for name in ("c.csv", "c.tsv", "m.jsonl"):
        assert read_captions(tmp_path / name) == expected
    (tmp_path / "bad.json").write_text("[1, 2]")
    (tmp_path / "bad.csv").write_text("onlyonecolumn\n")
    for name in ("bad.json", "bad.csv", "missing.json"):
        with pytest.raises(ValueError):
            read_captions(tmp_path / name)


def test_image_folder_empty_or_missing(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        load_dataset("image_folder", "train", 32, root=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("image_folder", "train", 32, root=tmp_path / "nope")
    _make_folder(tmp_path, n_per_class=1)
    with pytest.raises(ValueError):
        load_dataset("image_folder", "train", 32, root=tmp_path, val_fraction=0.6, test_fraction=0.5)


def test_holdout_removes_combinations_from_train_only():
    held = ["red star", "blue circle"]
    pairs = {("red", "star"), ("blue", "circle")}
    train = load_dataset("shapes", "train", 32, length=300, holdout=held)
    assert len(train) == 300
    assert not any((o["colour"], o["shape"]) in pairs for i in range(300) for o in train[i]["objects"])
    plain = load_dataset("shapes", "train", 32, length=400)
    kept = [i for i in range(400) if not any((o["colour"], o["shape"]) in pairs for o in plain[i]["objects"])]
    assert [train[i]["index"] for i in range(len(kept[:300]))] == kept[:300]  # the accepted scenes, in order
    assert torch.equal(train[5]["image"], plain[train[5]["index"]]["image"])
    val = load_dataset("shapes", "val", 32, length=400, holdout=held)
    assert any((o["colour"], o["shape"]) in pairs for i in range(400) for o in val[i]["objects"])
    stream = load_dataset("shapes", "train", 32, length=None, holdout=held)
    it = iter(stream)
    assert [next(it)["index"] for _ in range(20)] == kept[:20]
    with pytest.raises(ValueError, match="colour shape"):
        load_dataset("shapes", "train", 32, length=4, holdout=["red"])
    with pytest.raises(ValueError, match="colour shape"):
        load_dataset("shapes", "train", 32, length=4, holdout=["golden star"])


def test_a_registered_dataset_is_loadable_by_name():
    from minildm.data import DATASETS, register_dataset

    @register_dataset("dummy", options=("length",))
    def dummy(split: str, image_size: int, length: int = 2):
        return [{"image": torch.zeros(3, image_size, image_size), "split": split}] * length

    try:
        ds = load_dataset("dummy", "val", 8, length=3)
        assert len(ds) == 3 and ds[0]["split"] == "val" and ds[0]["image"].shape == (3, 8, 8)
        with pytest.raises(ValueError, match="unknown option.*allowed: length"):
            load_dataset("dummy", "val", 8, seed=1)
        with pytest.raises(ValueError, match="registered twice"):
            register_dataset("dummy", options=())(dummy)
    finally:
        DATASETS.pop("dummy", None)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_image_is_a_value_error_naming_the_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    ds = load_dataset("image_folder", "train", 16, root=tmp_path, val_fraction=0, test_fraction=0)
    assert ds[0]["image"].shape == (3, 16, 16)
    _truncate(tmp_path / ds.files[0])
    with pytest.raises(ValueError) as err:
        ds[0]
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / ds.files[0]) in msg and "truncated" in msg
    assert f"python -m minildm check-data {tmp_path}" in msg
    (tmp_path / "im1.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="im1.png"):
        ds[ds.files.index("im1.png")]


def test_malformed_caption_files_name_file_line_and_column(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text('{\n  "a.png": "a red car",\n  "b.png": "a dog" "c.png"\n}\n')
    with pytest.raises(ValueError) as err:
        read_captions(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "line 3, column 20" in msg and "JSON" in msg
    lines = tmp_path / "metadata.jsonl"
    lines.write_text('{"file_name": "a.png", "text": "a red car"}\n{"file_name": "b.png", "text": \n')
    with pytest.raises(ValueError, match=rf"{lines}:2.*column"):
        read_captions(lines)
    lines.write_text('["a.png", "a red car"]\n')
    with pytest.raises(ValueError, match=rf"{lines}:1.*file_name"):
        read_captions(lines)
    binary = tmp_path / "c.csv"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=rf"{binary}.*UTF-8"):
        read_captions(binary)
    # a dataset with a broken captions file in its folder says which file
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="captions.json.*line 3"):
        load_dataset("image_folder", "train", 8, root=tmp_path, val_fraction=0, test_fraction=0)
