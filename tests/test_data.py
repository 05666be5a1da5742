import gzip
import os
import stat

import numpy as np
import pytest
import torch
import torchvision.datasets

from lenet_core.data import (
    augment_batch,
    bootstrap_indices,
    load_dataset,
    read_idx,
    stratified_split,
    stratified_subset,
)
from lenet_core.errors import DataError

from .conftest import SHARED_MNIST, idx_bytes, write_idx_set


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
    assert "--data-dir" in message and "--dataset digits" in message and str(tmp_path) in message


def test_failed_download_through_torchvision_is_one_line(tmp_path, monkeypatch):
    # Point torchvision at a closed local port: the real download code runs and fails at once.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="download failed") as info:
        load_dataset("mnist", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value) and "--dataset digits" in str(info.value)


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


@pytest.mark.parametrize("kind", ["none", "blur", "rotate", "both"])
def test_augmentations_are_batched_seeded_and_shape_preserving(digits, kind):
    x = torch.from_numpy(digits.train_images[:16].copy()).unsqueeze(1).float() / 255
    a = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
    b = augment_batch(x, kind=kind, generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(a, x) == (kind == "none")
