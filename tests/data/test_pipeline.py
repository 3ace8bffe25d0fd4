from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import write_png
from kfacemtl.errors import SourceError
from kfacemtl.data import (decode_image, make_dataset, mixing_weights, prefetch_to_gpu, preprocess_image,
                               resize_batch)
from kfacemtl.data import CsvSource, Source, make_source
from kfacemtl.tasks import resolve_tasks

TASKS = resolve_tasks(None)


def test_every_batch_has_every_task_with_finite_placeholders():
    srcs = [make_source("synthetic:lab?n=32"), make_source("synthetic:portraits?n=32")]
    images, labels, weights = next(iter(make_dataset(srcs, TASKS, batch_size=64, training=False)))
    assert images.shape == (64, 64, 64, 3) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert set(labels) == set(weights) == {t.name for t in TASKS}
    w = {k: v.numpy() for k, v in weights.items()}
    # rows 0-31 lab (expression, AUs), rows 32-63 portraits (age, gender, race)
    assert w["expression"][:32].all() and not w["expression"][32:].any()
    assert w["age"][32:].all() and not w["age"][:32].any()
    assert not w["valence_arousal"].any()
    for k, v in labels.items():
        assert np.all(np.isfinite(v.numpy())), k
    assert labels["action_units"].shape == (64, 14) and labels["gender"].dtype == tf.int32


@pytest.mark.parametrize("mixing,expected", [("proportional", 0.8), ("balanced", 0.5), ("sqrt", 2 / 3),
                                             ({"lab-train": 1, "portraits-train": 3}, 0.25)])
def test_mixing_controls_how_often_each_source_is_drawn(mixing, expected):
    srcs = [make_source("synthetic:lab?n=64"), make_source("synthetic:portraits?n=16")]
    ds = make_dataset(srcs, TASKS, batch_size=100, mixing=mixing, augment=False)
    share = np.mean([w["expression"].numpy().mean() for _, _, w in ds.take(10)])
    assert share == pytest.approx(expected, abs=0.06)


def test_bad_mixing_is_an_error_naming_the_argument():
    srcs = [make_source("synthetic:lab?n=8")]
    with pytest.raises(ValueError, match=r"^mixing\.nope: not a source; sources are \['lab-train'\]"):
        mixing_weights(srcs, {"nope": 1.0})
    with pytest.raises(ValueError, match=r"^mixing: expected one of \('proportional'"):
        mixing_weights(srcs, "random")


def test_files_gray_rgba_any_size_become_rgb_model_size(tmp_path):
    write_png(tmp_path / "g.png", np.full((30, 20, 1), 200, "uint8"))
    write_png(tmp_path / "a.png", np.dstack([np.full((100, 90, 3), 50, "uint8"), np.full((100, 90, 1), 255, "uint8")]))
    (tmp_path / "m.csv").write_text("path,gender\ng.png,0\na.png,1\n")
    images, labels, _ = next(iter(make_dataset([CsvSource(tmp_path / "m.csv")], TASKS, batch_size=2, training=False)))
    assert images.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(images[0].numpy(), 200 / 255, atol=1e-5)
    np.testing.assert_allclose(images[1].numpy(), 50 / 255, atol=1e-5)
    jpeg = tf.io.encode_jpeg(np.full((48, 48, 1), 128, "uint8")).numpy()
    assert decode_image(jpeg, (32, 32)).shape == (32, 32, 3)
    deep = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 250).astype("uint16")  # a 16-bit PNG: scaled to [0, 1]
    np.testing.assert_allclose(decode_image(tf.io.encode_png(deep).numpy(), (16, 16)).numpy(), deep / 65535,
                               atol=1 / 255)


@pytest.mark.parametrize("size", [(112, 112), (48, 48), (64, 64), (200, 37), (1, 5), (65, 63)])
def test_resize_batch_gives_the_training_resize_of_each_image(size):
    images = tf.constant(np.random.default_rng(sum(size)).integers(0, 256, (3, *size, 3), dtype=np.uint8))
    got = resize_batch(images, (64, 64))
    want = tf.stack([preprocess_image(im, (64, 64)) for im in images])  # one at a time, as training does
    assert got.shape == (3, 64, 64, 3)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def test_augmentation_changes_training_images_only():
    src = [make_source("synthetic:lab?n=16")]
    plain = next(iter(make_dataset(src, TASKS, batch_size=16, training=False)))[0].numpy()
    aug = next(iter(make_dataset(src, TASKS, batch_size=16, training=True)))[0].numpy()
    assert not np.allclose(np.sort(plain.ravel()), np.sort(aug.ravel()))


def test_batched_augmentation_draws_per_image_and_repeats_with_its_seed():
    import tensorflow as tf

    from kfacemtl.data import augment_batch
    ramp = np.tile(np.linspace(0.2, 0.8, 32, dtype="float32")[None, :, None], (32, 1, 3))  # brighter to the right
    images = tf.constant(np.repeat(ramp[None], 400, axis=0))
    out = augment_batch(images, tf.constant([3, 4])).numpy()
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, augment_batch(images, tf.constant([3, 4])).numpy())
    assert not np.array_equal(out, augment_batch(images, tf.constant([3, 5])).numpy())
    flipped = (out[:, 16, 20, 0] - out[:, 16, 11, 0]) < 0  # the ramp falls to the right: flipped
    assert 0.4 < flipped.mean() < 0.6  # each image flips on its own draw
    means = out[:, 8:24, 8:24].mean(axis=(1, 2, 3))
    assert means.std() > 0.03  # brightness drawn per image (± 0.12)
    assert len({tuple(np.round(o[16, :, 0], 4)) for o in out}) > 100  # shifts, contrasts: (almost) all differ


def _augment_reference(images, seed):
    """The augmentation written out step by step: flip, pad with black and crop, brightness, contrast, clip."""
    import tensorflow as tf
    n, h, w = images.shape[:3]
    seeds = tf.random.experimental.stateless_split(seed, 5)
    flip = (tf.random.stateless_uniform([n], seeds[0]) < 0.5).numpy()
    pad = max(2, h // 16)
    dy = tf.random.stateless_uniform([n], seeds[1], 0, 2 * pad + 1, dtype=tf.int32).numpy()
    dx = tf.random.stateless_uniform([n], seeds[2], 0, 2 * pad + 1, dtype=tf.int32).numpy()
    bright = tf.random.stateless_uniform([n], seeds[3], -0.12, 0.12).numpy()
    factor = tf.random.stateless_uniform([n], seeds[4], 0.8, 1.25).numpy()
    out = []
    for i, image in enumerate(images):
        image = image[:, ::-1] if flip[i] else image
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        image = padded[dy[i]:dy[i] + h, dx[i]:dx[i] + w] + bright[i]
        mean = image.mean(axis=(0, 1), keepdims=True)
        out.append(np.clip((image - mean) * factor[i] + mean, 0, 1))
    return np.stack(out)


def test_batched_augmentation_equals_flip_pad_crop_brightness_contrast_done_step_by_step():
    import tensorflow as tf

    from kfacemtl.data import augment_batch
    images = np.random.default_rng(0).random((64, 20, 24, 3), dtype="float32")  # not square: x and y kept apart
    for seed in ([0, 1], [5, 9]):
        np.testing.assert_allclose(augment_batch(tf.constant(images), tf.constant(seed)).numpy(),
                                   _augment_reference(images, tf.constant(seed)), atol=2e-6)


class _SortedSource(Source):
    """In-memory rows sorted by class, like class folders or UTKFace's age-ordered file names."""

    def __init__(self, n):
        super().__init__("sorted", "sorted", ("gender", "age"))
        self.n = n

    def __len__(self):
        return self.n

    def images(self):
        return np.zeros((self.n, 4, 4, 1), "uint8")

    def raw_labels(self, task):
        if task.name == "gender":
            return (np.arange(self.n) >= self.n // 2).astype("float64"), np.ones(self.n, bool)
        return (np.arange(self.n) / self.n * 100)[:, None], np.ones(self.n, bool)


def test_training_order_is_a_full_permutation_of_each_source():
    tasks = resolve_tasks(["gender", "age"])
    src = _SortedSource(10000)  # more rows than a shuffle buffer of a few thousand would mix
    batches = iter(make_dataset([src], tasks, batch_size=5000, image_size=(4, 4), training=True, augment=False))
    first = next(batches)[1]
    assert 2000 < int(first["gender"].numpy().sum()) < 3000  # both halves of the sorted rows from the start
    second = next(batches)[1]
    ages = np.concatenate([first["age"].numpy()[:, 0], second["age"].numpy()[:, 0]])
    # one pass = every row once (in-memory sources: the row ids are batched in order, so exactly)
    assert len(np.unique(np.round(ages, 3))) == 10000


class _NumberedSource(Source):
    """In-memory rows whose image and age both say the row number (first pixel = row, age = row / 2)."""

    def __init__(self, name, n, size, channels):
        super().__init__(name, name, ("age",))
        self.n, self.size, self.channels = n, size, channels

    def __len__(self):
        return self.n

    def images(self):
        rng = np.random.default_rng(len(self.name))
        images = rng.integers(0, 256, (self.n, self.size, self.size, self.channels), dtype=np.uint8)
        images[:, 0, 0, :] = np.arange(self.n)[:, None]
        return images

    def raw_labels(self, task):
        return (np.arange(self.n) / 2.0)[:, None], np.ones(self.n, bool)


def test_batches_gathered_at_once_pair_each_image_with_its_own_labels_and_preprocessing():
    from kfacemtl.data import preprocess_image
    tasks = resolve_tasks(["age", "gender"])
    # gray at the input size, RGB at another size (resized), RGBA (alpha dropped): three tables, one batch
    sources = [_NumberedSource("gray", 90, 8, 1), _NumberedSource("rgb", 70, 12, 3), _NumberedSource("rgba", 50, 8, 4)]
    expected = {s.name: np.stack([preprocess_image(img, (8, 8)).numpy() for img in s.images()]) for s in sources}
    seen = {s.name: set() for s in sources}
    for images, labels, weights in make_dataset(sources, tasks, batch_size=32, image_size=(8, 8), augment=False,
                                                mixing="balanced").take(12):
        assert images.shape == (32, 8, 8, 3) and set(weights["gender"].numpy()) == {0.0}
        for img, age in zip(images.numpy(), labels["age"].numpy()[:, 0]):
            row = int(round(age * 2))
            matches = [n for n, e in expected.items() if row < len(e) and np.array_equal(e[row], img)]
            assert len(matches) == 1, (row, matches)  # exactly its own row's image, preprocessed as one image is
            seen[matches[0]].add(row)
    assert all(len(rows) > 20 for rows in seen.values())  # every source drawn, many rows each


def test_batches_made_at_once_read_each_source_in_a_fresh_permutation_per_pass_and_repeat_with_their_seed():
    tasks = resolve_tasks(["age"])
    sources = [_NumberedSource("gray", 90, 8, 1), _NumberedSource("rgb", 70, 12, 3)]

    def drawn(seed, batches=40):  # (source, row) of every sample, in order
        ds = make_dataset(sources, tasks, batch_size=16, image_size=(8, 8), augment=False, mixing="balanced", seed=seed)
        out = []
        for images, labels, _ in ds.take(batches):
            rows = np.round(labels["age"].numpy()[:, 0] * 2).astype(int)
            out += [("gray" if np.array_equal(img[..., 0], img[..., 1]) else "rgb", r)  # gray: equal channels
                    for img, r in zip(images.numpy(), rows)]
        return out

    first = drawn(3)
    assert first == drawn(3) and first != drawn(4)  # the same batches for the same seed
    for src in sources:
        rows = [r for name, r in first if name == src.name]
        assert 0.4 < len(rows) / len(first) < 0.6  # balanced mixing
        passes = [rows[i:i + src.n] for i in range(0, len(rows) - src.n + 1, src.n)]
        assert len(passes) >= 2 and all(sorted(p) == list(range(src.n)) for p in passes)  # each pass: every row once
        assert passes[0] != passes[1]  # a fresh permutation each pass


def _rows_of(images, direct):
    """The row of ``direct`` (the images as the files give them) that each batch image is."""
    return [int(np.argmin(np.abs(direct - img).reshape(len(direct), -1).max(axis=1))) for img in images]


def test_training_cache_decodes_files_once_into_the_same_images(tmp_path):
    from kfacemtl.data import DecodedImages, cached_sources
    rng = np.random.default_rng(0)
    rows = ["path,gender"]
    for i in range(6):
        write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (40 + 7 * i, 33, 1 + 2 * (i % 2))))
        rows.append(f"{i}.png,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    src = CsvSource(tmp_path / "m.csv")
    cached = DecodedImages(src, (24, 24))
    assert cached.images().shape == (6, 24, 24, 3) and cached.images().dtype == np.uint8 and cached.name == src.name
    direct = np.stack([decode_image((tmp_path / f"{i}.png").read_bytes(), (24, 24)).numpy() for i in range(6)])
    np.testing.assert_allclose(cached.images() / 255, direct, atol=1 / 510 + 1e-6)  # rounded to uint8, nothing else
    assert cached.labels(TASKS)[1]["gender"].tolist() == src.labels(TASKS)[1]["gender"].tolist()
    synthetic = make_source("synthetic:lab?n=4")
    kept = cached_sources([synthetic, src, CsvSource(tmp_path / "m.csv")], (24, 24), limit_mb=6 * 24 * 24 * 3 / 2 ** 20,
                          mode="memory")
    assert [type(s).__name__ for s in kept] == ["SyntheticSource", "DecodedImages", "CsvSource"]  # the limit holds
    for cache in ("auto", "none"):  # each image keeps its own label and weight either way (the cache: training only)
        x, y, w = next(iter(make_dataset([src], TASKS, batch_size=6, image_size=(24, 24), augment=False, cache=cache)))
        # a training batch may mix rows of two shuffled passes: find each row's file by its image
        rows = _rows_of(x.numpy(), direct)
        assert all(np.abs(direct[i] - img).max() <= 1 / 510 + 1e-6 for i, img in zip(rows, x.numpy()))
        assert y["gender"].numpy().tolist() == [i % 2 for i in rows] and np.all(w["gender"].numpy() == 1)
    with pytest.raises(ValueError, match=r"^cache: expected one of \('auto'"):
        make_dataset([src], TASKS, cache="ram")


def test_cache_at_another_size_reads_the_files_again(tmp_path):
    from kfacemtl.data import DecodedImages, cached_sources
    rng = np.random.default_rng(1)
    for i in range(4):
        write_png(tmp_path / "faces" / ("happy", "sad")[i % 2] / f"{i}.png", rng.integers(0, 256, (40, 40, 3)))
    files = make_source(f"folder:{tmp_path / 'faces'}")
    [cached] = cached_sources([files], (48, 48))
    direct = np.stack([decode_image(p.read_bytes(), (24, 24)).numpy() for p in map(Path, files.paths())])
    resized = tf.image.resize(cached.images() / 255, (24, 24), antialias=True).numpy()  # 40 -> 48 -> 24
    assert np.abs(resized - direct).max() > 0.01  # resizing the cached faces again would not be the same image
    for mode in ("none", "memory", "disk"):
        [again] = cached_sources([cached], (24, 24), mode=mode, cache_dir=tmp_path / "cache")
        assert again is files if mode == "none" else (isinstance(again, DecodedImages) and again.source is files)
    x = next(iter(make_dataset([cached], TASKS, batch_size=4, image_size=(24, 24), training=False)))[0]
    np.testing.assert_allclose(x.numpy(), direct, atol=1e-6)  # from the files, as a source never cached
    assert cached_sources([cached], (48, 48))[0] is cached  # at its own size: as it is


def test_disk_cache_is_written_once_reused_rebuilt_when_broken_and_gives_the_memory_cache_images(tmp_path):
    from kfacemtl.data import DecodedImages, cached_sources
    rng = np.random.default_rng(1)
    rows = ["path,gender"]
    for i in range(5):
        write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (30 + 5 * i, 28, 3)))
        rows.append(f"{i}.png,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    src, cache_dir = CsvSource(tmp_path / "m.csv"), tmp_path / "cache"
    in_memory = DecodedImages(src, (20, 20)).images()
    on_disk = DecodedImages(src, (20, 20), cache_dir=cache_dir)
    assert isinstance(on_disk.images(), np.memmap) and np.array_equal(on_disk.images(), in_memory)
    [file] = cache_dir.glob("*.npy")
    assert file == on_disk.cache_file and not list(cache_dir.glob(".*"))  # no temporary file left
    stamp = file.stat().st_mtime_ns
    assert DecodedImages(src, (20, 20), cache_dir=cache_dir).cache_file == file and file.stat().st_mtime_ns == stamp
    assert DecodedImages(src, (24, 24), cache_dir=cache_dir).cache_file != file  # another size: another file
    file.write_bytes(file.read_bytes()[:100])  # truncated (a crash elsewhere, a full disk): rebuilt, not trusted
    assert np.array_equal(DecodedImages(src, (20, 20), cache_dir=cache_dir).images(), in_memory)
    # auto: what does not fit in memory goes to disk; memory: it stays uncached; training batches read rows
    limit = 5 * 20 * 20 * 3 / 2 ** 20
    kinds = lambda mode: [s.describe().get("cached", "") for s in cached_sources(  # noqa: E731
        [src, CsvSource(tmp_path / "m.csv")], (20, 20), limit, mode, cache_dir)]
    assert [k.split(" ", 2)[-1][:7] for k in kinds("auto")] == ["in memo", "on disk"]
    assert kinds("memory")[1] == "" and all("on disk" in k for k in kinds("disk"))
    x, y, w = next(iter(make_dataset([src], TASKS, batch_size=5, image_size=(20, 20), augment=False, cache="disk",
                                     cache_dir=cache_dir)))
    direct = in_memory / 255
    found = _rows_of(x.numpy(), direct)
    assert all(np.abs(direct[i] - img).max() < 1e-6 for i, img in zip(found, x.numpy()))
    assert y["gender"].numpy().tolist() == [i % 2 for i in found]


def _bad_files_manifest(tmp_path):
    """A manifest of two good images and three that cannot be decoded (rows 3, 4, 5 of the CSV)."""
    rng = np.random.default_rng(2)
    write_png(tmp_path / "ok.png", rng.integers(0, 255, (20, 18, 3)))
    (tmp_path / "empty.png").write_bytes(b"")
    png = tf.io.encode_png(rng.integers(0, 255, (30, 30, 3)).astype("uint8")).numpy()
    (tmp_path / "truncated.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "ok.jpg").write_bytes(tf.io.encode_jpeg(rng.integers(0, 255, (25, 25, 3)).astype("uint8")).numpy())
    names = ["ok.png", "empty.png", "truncated.png", "notes.jpg", "ok.jpg"]
    (tmp_path / "m.csv").write_text("path,gender\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    return tmp_path / "m.csv"


def test_image_files_that_cannot_be_decoded_are_named_with_their_rows_or_left_out_and_counted(tmp_path):
    from kfacemtl.data import BadImageFiles
    manifest = _bad_files_manifest(tmp_path)
    cache_dir = tmp_path / "cache"
    for cache, training in (("auto", True), ("disk", True), ("none", True), ("auto", False)):
        with pytest.raises(BadImageFiles) as e:
            make_dataset([CsvSource(manifest)], TASKS, batch_size=2, image_size=(16, 16), training=training,
                         cache=cache, cache_dir=cache_dir)
        msg = str(e.value)
        assert "source m: 3 image file(s) cannot be used" in msg and "training.bad_images: skip" in msg
        assert "row 3 (empty.png) is an empty file" in msg and "row 4 (truncated.png) is not a readable" in msg
        assert "row 5 (notes.jpg) is not a readable JPEG" in msg and "ok.png" not in msg and "ok.jpg" not in msg
        assert sorted(e.value.bad) == [1, 2, 3]
    assert not cache_dir.exists() or not list(cache_dir.iterdir())  # no half-written disk cache left
    for cache in ("auto", "none"):
        skipped = {}
        ds = make_dataset([CsvSource(manifest)], TASKS, batch_size=8, image_size=(16, 16), training=False,
                          cache=cache, bad_images="skip", skipped=skipped)
        x, y, w = next(iter(ds))
        assert x.shape[0] == 2 and y["gender"].numpy().tolist() == [0, 0]  # rows 0 and 4 (labels 0 and 0)
        assert skipped == {"m": ["3 (empty.png)", "4 (truncated.png)", "5 (notes.jpg)"]}
    with pytest.raises(ValueError, match=r"^bad_images: expected one of \('error', 'skip'\)"):
        make_dataset([CsvSource(manifest)], TASKS, bad_images="ignore")


def test_a_run_leaves_out_undecodable_images_when_asked_and_reports_them(tmp_path):
    from kfacemtl.training import train_run
    manifest = _bad_files_manifest(tmp_path)
    cfg = {"tasks": ["gender"], "sources": [f"csv:{manifest}", "synthetic:portraits?n=16"],
           "model": {"input_shape": [16, 16, 3], "widths": [4], "depths": [1], "embedding_dim": 4, "head_units": 0},
           "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "bad_images": "skip"}}
    report = train_run(cfg, tmp_path / "run", verbose=0)
    assert report["skipped_images"] == {"m": {"count": 3, "rows": ["3 (empty.png)", "4 (truncated.png)",
                                                                   "5 (notes.jpg)"]}}
    assert report["sources"][0]["left_out"] == 3
    cfg["training"]["bad_images"] = "error"
    with pytest.raises(SourceError, match="row 3 \\(empty.png\\) is an empty file"):
        train_run(cfg, tmp_path / "run2", verbose=0)


def test_images_declaring_too_many_pixels_are_refused_before_decoding(tmp_path):
    from kfacemtl.data.cache import find_bad_images
    from kfacemtl.data.images import declared_size
    write_png(tmp_path / "a.png", np.zeros((20, 30, 3), "uint8"))
    (tmp_path / "a.jpg").write_bytes(tf.io.encode_jpeg(np.zeros((20, 30, 3), "uint8")).numpy())
    png = bytearray((tmp_path / "a.png").read_bytes())
    png[16:24] = (20000).to_bytes(4, "big") * 2  # the header of a 20000 x 20000 PNG (a decompression bomb)
    (tmp_path / "bomb.png").write_bytes(bytes(png))
    assert declared_size(bytes(png)).numpy().tolist() == [20000, 20000]
    paths = [str(tmp_path / n) for n in ("a.png", "bomb.png", "a.jpg")]
    assert find_bad_images(paths) == {1: "declares 20000 x 20000 pixels, more than the limit of 40,000,000 "
                                         "(checked before decoding)"}
    small = find_bad_images(paths, max_pixels=100)  # real images over a (tiny) limit: refused the same way
    assert small[0] == small[2] == "declares 30 x 20 pixels, more than the limit of 100 (checked before decoding)"


def test_prefetch_to_gpu_is_a_no_op_without_a_gpu():
    ds = tf.data.Dataset.range(4)
    if tf.config.list_physical_devices("GPU"):
        assert [int(v) for v in prefetch_to_gpu(ds)] == [0, 1, 2, 3]
    else:
        assert prefetch_to_gpu(ds) is ds


def test_augmentation_of_bytes_and_compiled_with_xla_gives_the_same_images():
    from kfacemtl.data import augment_batch
    rng = np.random.default_rng(0)
    u8 = tf.constant(rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    seed = tf.constant([3, 9], tf.int64)
    reference = augment_batch(tf.image.convert_image_dtype(u8, tf.float32), seed).numpy()
    np.testing.assert_array_equal(augment_batch(u8, seed).numpy(), reference)  # bytes moved, then converted
    for images in (u8, tf.image.convert_image_dtype(u8, tf.float32)):  # the same draws, the transforms fused
        np.testing.assert_allclose(augment_batch(images, seed, compiled=True).numpy(), reference, atol=1e-5)
    assert not np.allclose(reference, augment_batch(u8, tf.constant([3, 10], tf.int64)).numpy())
