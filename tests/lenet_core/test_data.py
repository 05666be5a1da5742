import gzip
import hashlib
import json
import os
import pickle
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.datasets

import lenet_core.data.idx
from lenet_core.config import TrialConfig
from lenet_core.data import (
    AUGMENTATION_STEPS,
    ImageData,
    augment_batch,
    bootstrap_indices,
    default_cache_dir,
    load_dataset,
    read_idx,
    stratified_split,
    stratified_subset,
)
from lenet_core.errors import DataError
from lenet_core.names import AUGMENTATIONS
from lenet_core.train import trial_split
from tests.conftest import SHARED_MNIST, idx_bytes, write_idx_set

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


@pytest.fixture(autouse=True)
def default_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Loads without cache_dir fill $LENET_STUDY_DATA: keep that out of ~/.cache and out of tmp_path."""
    monkeypatch.setenv("LENET_STUDY_DATA", str(tmp_path_factory.mktemp("default-cache")))


def test_digits_are_28x28_uint8_with_a_fixed_split(digits):
    assert digits.train_images.shape[1:] == (28, 28)
    assert digits.train_images.dtype == np.uint8
    assert len(digits.train_images) + len(digits.test_images) == 1797
    again = load_dataset("digits")
    assert again.checksum == digits.checksum
    assert np.array_equal(again.test_labels, digits.test_labels)
    assert set(np.unique(digits.train_labels)) == set(range(10))


def test_arrays_are_read_only_so_trials_cannot_corrupt_shared_data(digits):
    with pytest.raises(ValueError):
        digits.train_images[0, 0, 0] = 1


@pytest.mark.parametrize("gz", [False, True])
def test_flat_folder_of_idx_files_loads(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert np.array_equal(data.train_images, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert len(data.checksum) == 64


def test_torchvision_root_layout_loads(tmp_path):
    write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_images.shape == (40, 28, 28)
    assert data.source.endswith("MNIST/raw")


def test_checksum_changes_with_content(tmp_path):
    write_idx_set(tmp_path / "a", seed=1)
    write_idx_set(tmp_path / "b", seed=2)
    a = load_dataset("mnist", data_dir=tmp_path / "a")
    b = load_dataset("mnist", data_dir=tmp_path / "b")
    assert a.checksum != b.checksum


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST subset not present")
def test_shared_mnist_subset_loads_without_writing(tmp_path):
    before = sorted(p.name for p in (SHARED_MNIST / "MNIST" / "raw").iterdir())
    data = load_dataset("mnist", data_dir=SHARED_MNIST)
    assert data.train_images.shape == (5000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert sorted(p.name for p in (SHARED_MNIST / "MNIST" / "raw").iterdir()) == before


def test_read_only_data_folder_is_never_written(tmp_path):
    folder = tmp_path / "ro"
    write_idx_set(folder, gz=True)
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        load_dataset("mnist", data_dir=folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{s}.gz"
            for s in (
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            )
        )
    finally:
        os.chmod(folder, stat.S_IRWXU)


def _corrupt(folder, stem, data: bytes):
    (folder / stem).write_bytes(data)


@pytest.mark.parametrize(
    ("stem", "make", "message"),
    [
        ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated or corrupt"),
        ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad magic"),
        ("train-images-idx3-ubyte", lambda b: b[:2], "bad magic"),
        ("t10k-labels-idx1-ubyte", lambda b: b + b"\x01", "truncated or corrupt"),
    ],
)
def test_corrupt_idx_names_the_file(tmp_path, stem, make, message):
    write_idx_set(tmp_path)
    path = tmp_path / stem
    path.write_bytes(make(path.read_bytes()))
    with pytest.raises(DataError, match=message) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert stem in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_dataset("mnist", data_dir=tmp_path)


def test_wrong_image_size_count_mismatch_and_bad_label(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((40, 20, 20), np.uint8)))
    with pytest.raises(DataError, match="expected 28x28"):
        load_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((39, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="39 images but .* 40 labels"):
        load_dataset("mnist", data_dir=tmp_path)
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(20, 12, np.uint8)))
    with pytest.raises(DataError, match="label 12 outside 0-9"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="no mnist IDX files in .*train-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_offline_without_local_copy_names_data_dir_and_digits(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", cache_dir=tmp_path, download=False)
    message = str(info.value)
    assert "data_dir=" in message and "'digits'" in message and str(tmp_path) in message
    # A library error: it names what a caller can pass, no CLI flag and no developer's folder.
    assert "--" not in message and "shared/data" not in message


def test_failed_download_through_torchvision_is_one_line(tmp_path, monkeypatch):
    # Point torchvision at a closed local port: the real download code runs and fails at once.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="download failed") as info:
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value) and "'digits'" in str(info.value) and "--" not in str(info.value)


def test_downloaded_copy_in_cache_is_found(tmp_path):
    write_idx_set(tmp_path / "MNIST" / "raw")
    data = load_dataset("mnist", cache_dir=tmp_path, download=False)
    assert len(data.train_images) == 40


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="mnist, fashion-mnist, digits"):
        load_dataset("cifar10")


def test_read_idx_reads_gzip_and_plain_alike(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(tmp_path / "a"), array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


# ----------------------------------------------------------------- seeded index helpers


def test_stratified_split_is_seeded_disjoint_and_balanced(digits):
    labels = digits.train_labels
    kept, held = stratified_split(labels, held_out_fraction=0.1, seed=3)
    kept2, held2 = stratified_split(labels, held_out_fraction=0.1, seed=3)
    _, held3 = stratified_split(labels, held_out_fraction=0.1, seed=4)
    assert np.array_equal(held, held2) and np.array_equal(kept, kept2)
    assert not np.array_equal(held, held3)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    per_class = np.bincount(labels[held], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(per_class, 0.1, atol=0.02)


def test_cached_split_equals_scikit_learns_and_survives_damage(digits, tmp_path):
    labels = digits.train_labels
    fresh = stratified_split(labels, held_out_fraction=0.1, seed=3)
    first = stratified_split(labels, held_out_fraction=0.1, seed=3, cache_dir=tmp_path)
    entries = list((tmp_path / "splits").glob("*.npz"))
    assert len(entries) == 1
    cached = stratified_split(labels, held_out_fraction=0.1, seed=3, cache_dir=tmp_path)
    for split in (first, cached):
        assert all(np.array_equal(a, b) for a, b in zip(split, fresh, strict=True))
    other_seed = stratified_split(labels, held_out_fraction=0.1, seed=4, cache_dir=tmp_path)
    assert len(list((tmp_path / "splits").glob("*.npz"))) == 2  # keyed by seed
    assert not np.array_equal(other_seed[1], fresh[1])
    entries[0].write_bytes(b"not an npz")  # damaged: recomputed, and written again
    again = stratified_split(labels, held_out_fraction=0.1, seed=3, cache_dir=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(again, fresh, strict=True))
    assert (
        stratified_split(labels, held_out_fraction=0.1, seed=3, cache_dir=tmp_path)[1].tolist()
        == fresh[1].tolist()
    )
    assert np.load(entries[0])["held"].tolist() == fresh[1].tolist()


def test_a_warm_split_cache_spares_importing_scikit_learn(tmp_path):
    """A trial's split is drawn by scikit-learn once; later trials read it (no second of import).
    The cache is the folder the ImageData carries, whatever $LENET_STUDY_DATA says."""
    cache, decoy = tmp_path / "cache", tmp_path / "env"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from lenet_core.config import TrialConfig\n"
        "from lenet_core.train import trial_split\n"
        "from lenet_core.data import ImageData\n"
        "import numpy as np\n"
        "labels = np.repeat(np.arange(10, dtype=np.int64), 50)\n"
        "images = np.zeros((500, 28, 28), np.uint8)\n"
        "data = ImageData(name='mnist', train_images=images, train_labels=labels, test_images=images[:10],\n"
        "    test_labels=labels[:10], source='t', checksum='c', mean=0.1, std=0.3,\n"
        "    cache_dir=Path(sys.argv[1]))\n"
        "train, val = trial_split(data, TrialConfig(dataset='mnist', train_fraction=0.5))\n"
        "print(len(train), len(val), 'sklearn' in sys.modules)\n"
    )
    env = {**os.environ, "LENET_STUDY_DATA": str(decoy)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, str(cache)], capture_output=True, text=True, env=env, timeout=120
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr + runs[1].stderr
    cold, warm = (r.stdout.split() for r in runs)
    assert cold == ["225", "50", "True"]  # 450 kept, half of them trained on; 50 validation
    assert warm == ["225", "50", "False"]
    assert len(list((cache / "splits").glob("*.npz"))) == 2  # the validation split and the subset
    assert not decoy.exists()


def test_bootstrap_returns_in_bag_with_replacement_and_out_of_bag():
    in_bag, oob = bootstrap_indices(1000, seed=7)
    assert len(in_bag) == 1000
    assert len(np.unique(in_bag)) < 1000  # with replacement
    assert len(np.intersect1d(in_bag, oob)) == 0
    assert len(np.union1d(in_bag, oob)) == 1000
    assert 0.3 < len(oob) / 1000 < 0.44  # about 1/e of the items are out of bag
    again, _ = bootstrap_indices(1000, seed=7)
    other, _ = bootstrap_indices(1000, seed=8)
    assert np.array_equal(in_bag, again) and not np.array_equal(in_bag, other)


@pytest.mark.parametrize("denominator", [1, 2, 4, 8, 16])
def test_fractional_subsets_are_seeded_and_nested_in_size(digits, denominator):
    subset = stratified_subset(digits.train_labels, fraction=1 / denominator, seed=0)
    assert abs(len(subset) - len(digits.train_labels) / denominator) <= 10
    assert np.array_equal(subset, stratified_subset(digits.train_labels, fraction=1 / denominator, seed=0))
    assert len(np.unique(subset)) == len(subset)


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_augmentations_are_batched_seeded_and_shape_preserving(digits, kind):
    x = torch.from_numpy(digits.train_images[:16].copy()).unsqueeze(1).float() / 255
    a = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
    b = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(a, x) == (kind == "none")


def test_augmentation_table_matches_the_names_users_type():
    assert tuple(AUGMENTATION_STEPS) == AUGMENTATIONS
    with pytest.raises(ValueError, match="unknown augmentation 'mirror'"):
        augment_batch(torch.zeros(2, 1, 28, 28), kind="mirror", generator=torch.Generator())


def _flipped_rows(x: torch.Tensor, out: torch.Tensor) -> list[int]:
    """Indices of images mirrored left-right; fails if any image is neither itself nor mirrored."""
    flipped = []
    for i in range(len(x)):
        if torch.equal(out[i], x[i].flip(-1)):
            flipped.append(i)
        else:
            assert torch.equal(out[i], x[i]), f"image {i} is neither unchanged nor mirrored left-right"
    return flipped


def test_flip_mirrors_a_seeded_random_half_left_right_and_nothing_else():
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(9))  # no image is symmetric
    out = augment_batch(x, kind="flip", generator=torch.Generator().manual_seed(0))
    chosen = _flipped_rows(x, out)
    assert 16 <= len(chosen) <= 48  # a fair coin per image: about half
    assert all(not torch.equal(out[i], x[i].flip(-2)) for i in chosen)  # horizontal, not vertical
    again = augment_batch(x, kind="flip", generator=torch.Generator().manual_seed(0))
    other = augment_batch(x, kind="flip", generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert _flipped_rows(x, other) != chosen


def test_both_is_rotation_then_blur_from_one_generator(digits):
    x = torch.from_numpy(digits.train_images[:8].copy()).unsqueeze(1).float() / 255
    both = augment_batch(x, kind="both", generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    rotated = augment_batch(x, kind="rotate", generator=generator)
    assert torch.equal(both, augment_batch(rotated, kind="blur", generator=generator))


def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(C, H, W) moved dy pixels down and dx right, zeros filling what moves in (slicing, the
    plainest way to write it: an independent reference for the batched gather)."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _offsets(x: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int]]:
    """The translation of each image; fails unless every output image is its input, translated by
    at most 2 pixels on each axis with zero fill (no pixel value made, mixed or scaled)."""
    offsets = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[i], _shifted(x[i], dy, dx))
        ]
        assert len(found) == 1, f"image {i} is not a translation by at most 2 pixels"
        offsets.append(found[0])
    return offsets


def _framed_batch(n: int, seed: int) -> torch.Tensor:
    """Random images in [0, 1] whose content sits inside a 2-pixel zero frame, like a centred digit:
    no translation of up to 2 pixels loses any of it."""
    x = torch.zeros(n, 1, 28, 28)
    content = torch.rand(n, 1, 24, 24, generator=torch.Generator().manual_seed(seed))
    x[:, :, 2:-2, 2:-2] = content * 0.99 + 0.01  # in (0, 1]: no content pixel is background
    return x


@pytest.mark.parametrize("kind", ["shift", "crop"])
def test_shift_and_crop_translate_each_image_by_up_to_2_pixels_with_zero_fill(kind):
    x = _framed_batch(200, seed=4)
    before = x.clone()
    out = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before)  # the input batch is not written
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    offsets = _offsets(x, out)
    # the content moved whole: each image keeps every pixel value (so its sum, and its class)
    assert torch.equal(out.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    torch.testing.assert_close(out.double().sum(dim=(1, 2, 3)), x.double().sum(dim=(1, 2, 3)))
    # one translation per image, over all 25 offsets, each axis uniform in [-2, 2]
    assert len(set(offsets)) == 25
    for axis in range(2):
        counts = np.bincount([o[axis] + 2 for o in offsets], minlength=5)
        assert counts.min() >= 20, counts  # 40 expected per value
    # seeded by the run's generator alone: the same seed, the same translations
    again = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
    other = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


@pytest.mark.parametrize("kind", ["shift", "crop"])
def test_shift_and_crop_lose_only_what_leaves_the_frame(kind, digits):
    # Real upscaled digits touch the border: a translation drops the rows and columns that leave
    # the 28 x 28 frame and nothing else. An image of one value everywhere shows what is zero-filled.
    x = torch.from_numpy(digits.train_images[:32].copy()).unsqueeze(1).float() / 255
    out = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(5))
    for (dy, dx), image, moved in zip(_offsets(x, out), x, out, strict=True):
        kept = _shifted(torch.ones_like(image), dy, dx)  # 1 where content landed, 0 where zeros came in
        assert torch.equal(moved * (1 - kept), torch.zeros_like(moved))
        assert moved.sum() <= image.sum() + 1e-4
    ones = torch.ones(8, 1, 28, 28)
    filled = augment_batch(ones, kind=kind, generator=torch.Generator().manual_seed(2))
    for (dy, dx), moved in zip(_offsets(ones, filled), filled, strict=True):
        assert moved.sum() == (28 - abs(dy)) * (28 - abs(dx))


def test_flip_shift_mirrors_then_translates_from_one_generator():
    x = _framed_batch(64, seed=3)
    out = augment_batch(x, kind="flip_shift", generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    flipped = augment_batch(x, kind="flip", generator=generator)
    assert torch.equal(out, augment_batch(flipped, kind="shift", generator=generator))
    assert not torch.equal(out, flipped)  # translated too
    # pixels are only moved: each image keeps every value, so its class
    assert torch.equal(out.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)


def test_shift_and_crop_keep_the_batch_on_its_device_and_format():
    x = _framed_batch(4, seed=1).contiguous(memory_format=torch.channels_last)
    for kind in ("shift", "crop"):
        out = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
        assert out.shape == (4, 1, 28, 28) and out.dtype == torch.float32 and out.device == x.device


# ----------------------------------------------------------------- decoded-array cache


def _entries(cache):
    folder = cache / "decoded"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _assert_same_data(a, b):
    for array in ARRAYS:
        assert np.array_equal(getattr(a, array), getattr(b, array))
        assert getattr(a, array).dtype == getattr(b, array).dtype
    assert (a.checksum, a.mean, a.std, a.source, a.name) == (b.checksum, b.mean, b.std, b.source, b.name)


def test_warm_load_is_memory_mapped_and_equals_the_cold_and_uncached_loads(tmp_path):
    write_idx_set(tmp_path / "data", gz=True)
    cache = tmp_path / "cache"
    cold = load_dataset("fashion-mnist", data_dir=tmp_path / "data", cache_dir=cache)
    assert len(_entries(cache)) == 1
    warm = load_dataset("fashion-mnist", data_dir=tmp_path / "data", cache_dir=cache)
    uncached = load_dataset("fashion-mnist", data_dir=tmp_path / "data", decoded_cache=False)
    _assert_same_data(warm, cold)
    _assert_same_data(warm, uncached)
    expected = hashlib.sha256(b"".join(getattr(warm, a).tobytes() for a in ARRAYS)).hexdigest()
    assert warm.checksum == expected
    for array in ARRAYS:
        view = getattr(warm, array)
        assert isinstance(view.base, np.memmap)  # backed by the .npy file, not a private copy
        assert not view.flags.writeable
        # A plain ndarray, so protocol-5 pickling (Ray's) passes its buffer out of band, zero-copy.
        buffers = []
        pickle.dumps(view, protocol=5, buffer_callback=buffers.append)
        assert type(view) is np.ndarray and len(buffers) == 1


def test_warm_load_neither_decompresses_nor_hashes_nor_recomputes(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "data", gz=True)
    cache = tmp_path / "cache"
    cold = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache)

    def forbidden(*args, **kwargs):
        raise AssertionError("a warm load must not decode or hash the sources")

    monkeypatch.setattr(lenet_core.data.idx, "read_idx", forbidden)
    monkeypatch.setattr(gzip, "decompress", forbidden)
    monkeypatch.setattr(hashlib, "sha256", forbidden)
    _assert_same_data(load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache), cold)

    # Checksum and statistics come from the JSON beside the arrays, not from the pixels.
    (entry,) = _entries(cache)
    meta_path = cache / "decoded" / entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(checksum="f" * 64, mean=0.125, std=0.5)
    meta_path.write_text(json.dumps(meta))
    warm = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache)
    assert (warm.checksum, warm.mean, warm.std) == ("f" * 64, 0.125, 0.5)


@pytest.mark.parametrize("n_train", [40, 30], ids=["same size, new mtime", "new size"])
def test_changed_source_file_invalidates_the_cache(tmp_path, n_train):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_idx_set(data, seed=1)
    first = load_dataset("mnist", data_dir=data, cache_dir=cache)
    old_entries = _entries(cache)
    source = data / "train-images-idx3-ubyte"
    mtime = source.stat().st_mtime_ns
    arrays = write_idx_set(data, seed=2, n_train=n_train)
    os.utime(source, ns=(mtime + 10**9, mtime + 10**9))  # coarse file-system clocks: force a change
    second = load_dataset("mnist", data_dir=data, cache_dir=cache)
    assert np.array_equal(second.train_images, arrays["train-images-idx3-ubyte"])
    assert second.checksum != first.checksum
    _assert_same_data(second, load_dataset("mnist", data_dir=data, decoded_cache=False))
    assert len(_entries(cache)) == 1 and _entries(cache) != old_entries  # the stale entry is gone
    _assert_same_data(load_dataset("mnist", data_dir=data, cache_dir=cache), second)


def test_cache_is_never_written_into_the_data_folder(tmp_path):
    data = tmp_path / "data"
    write_idx_set(data / "MNIST" / "raw", gz=True)
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    os.chmod(data / "MNIST" / "raw", stat.S_IRUSR | stat.S_IXUSR)
    try:
        load_dataset("mnist", data_dir=data, cache_dir=tmp_path / "cache")
        # A cache dir holding the IDX files flat (copied straight into it) is a data folder too.
        load_dataset("mnist", cache_dir=data / "MNIST" / "raw", download=False)
    finally:
        os.chmod(data / "MNIST" / "raw", stat.S_IRWXU)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    assert len(_entries(tmp_path / "cache")) == 1


def test_unusable_cache_dir_still_loads(tmp_path):
    write_idx_set(tmp_path / "data")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache dir should be")  # unwritable even for root
    data = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=blocker)
    _assert_same_data(data, load_dataset("mnist", data_dir=tmp_path / "data", decoded_cache=False))
    assert blocker.read_text() == "a file where the cache dir should be"


def test_failed_cache_write_leaves_no_half_entry(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "data")
    cache = tmp_path / "cache"
    real_save = np.save
    calls = []

    def disk_full_on_second_array(file, array, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_save(file, array, **kwargs)

    monkeypatch.setattr(np, "save", disk_full_on_second_array)
    data = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache)
    assert len(calls) == 2 and list((cache / "decoded").iterdir()) == []  # no entry, no temp folder
    monkeypatch.setattr(np, "save", real_save)
    _assert_same_data(load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache), data)
    assert len(_entries(cache)) == 1


def test_damaged_entry_is_rebuilt_from_the_sources(tmp_path):
    write_idx_set(tmp_path / "data")
    cache = tmp_path / "cache"
    cold = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache)
    (entry,) = _entries(cache)
    images = cache / "decoded" / entry / "train_images.npy"
    images.write_bytes(images.read_bytes()[:-500])
    _assert_same_data(load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache), cold)
    assert _entries(cache) == [entry] and images.stat().st_size > 40 * 28 * 28  # repaired


def test_fashion_class_names_are_torchvisions_in_label_order():
    from torchvision.datasets import FashionMNIST

    from lenet_core.names import CLASS_NAMES

    assert list(CLASS_NAMES["fashion-mnist"]) == FashionMNIST.classes


# ----------------------------------------------------------------- caches are explicit

SPLIT_CONFIG = {"val_fraction": 0.5, "train_fraction": 0.5}  # two split-cache entries per trial


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_cache_dir_none_writes_nothing_anywhere(tmp_path, monkeypatch):
    """No decoded arrays, no split, no download: not in the env var's folder, not under HOME, and
    no cache write (they all publish through a temp file or folder) happens at all."""
    write_idx_set(tmp_path / "data", gz=True)
    env, home = tmp_path / "env", tmp_path / "home"
    monkeypatch.setenv("LENET_STUDY_DATA", str(env))
    monkeypatch.setenv("HOME", str(home))
    before = _tree(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("cache_dir=None must write no cache entry")

    monkeypatch.setattr("tempfile.mkdtemp", forbidden)
    monkeypatch.setattr("tempfile.mkstemp", forbidden)
    mnist = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=None)
    digits = load_dataset("digits", cache_dir=None)
    assert mnist.cache_dir is None and digits.cache_dir is None
    train, val = trial_split(mnist, TrialConfig(dataset="mnist", **SPLIT_CONFIG))
    assert len(train) == 10 and len(val) == 20  # the split itself is drawn all the same
    trial_split(digits, TrialConfig(dataset="digits", **SPLIT_CONFIG))
    with pytest.raises(DataError, match="cache_dir=None leaves no folder to download into") as info:
        load_dataset("mnist", cache_dir=None)  # refused before any download is tried
    assert "data_dir=" in str(info.value)
    assert _tree(tmp_path) == before


def test_an_explicit_cache_dir_receives_every_entry(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "data")
    cache, env = tmp_path / "cache", tmp_path / "env"
    monkeypatch.setenv("LENET_STUDY_DATA", str(env))
    data = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=cache)
    assert data.cache_dir == cache
    assert len(_entries(cache)) == 1  # the decoded arrays
    trial_split(data, TrialConfig(dataset="mnist", **SPLIT_CONFIG))
    assert len(list((cache / "splits").glob("*.npz"))) == 2  # the validation split and the subset
    digits = load_dataset("digits", cache_dir=str(cache))  # a str is a folder too
    assert digits.cache_dir == cache
    trial_split(digits, TrialConfig(dataset="digits", **SPLIT_CONFIG))
    assert len(list((cache / "splits").glob("*.npz"))) == 4
    assert not env.exists()
    # Without the decoded cache the splits still go to cache_dir: only the arrays are not kept.
    other = tmp_path / "other"
    uncached = load_dataset("mnist", data_dir=tmp_path / "data", cache_dir=other, decoded_cache=False)
    assert uncached.cache_dir == other and _entries(other) == []


def test_only_the_default_resolution_reads_the_environment(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("LENET_STUDY_DATA", str(first))
    assert default_cache_dir() == first
    data = load_dataset("digits")  # cache_dir left out: the default, resolved here and only here
    assert data.cache_dir == first
    # The folder travels with the data (through pickling, as Ray's object store does); trials read
    # it there, so a later change of the environment, or a worker's own, does not move the cache.
    data = pickle.loads(pickle.dumps(data, protocol=5))
    assert data.cache_dir == first
    monkeypatch.setenv("LENET_STUDY_DATA", str(second))
    trial_split(data, TrialConfig(dataset="digits", **SPLIT_CONFIG))
    assert len(list((first / "splits").glob("*.npz"))) == 2 and not second.exists()
    monkeypatch.delenv("LENET_STUDY_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lenet-study" / "data"


def test_image_data_built_by_hand_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LENET_STUDY_DATA", str(tmp_path / "env"))
    labels = np.repeat(np.arange(10, dtype=np.int64), 4)
    images = np.zeros((40, 28, 28), np.uint8)
    data = ImageData(
        name="mnist",
        train_images=images,
        train_labels=labels,
        test_images=images[:10],
        test_labels=labels[:10],
        source="by hand",
        checksum="c",
        mean=0.1,
        std=0.3,
    )
    assert data.cache_dir is None
    trial_split(data, TrialConfig(dataset="mnist", **SPLIT_CONFIG))
    assert not (tmp_path / "env").exists()
