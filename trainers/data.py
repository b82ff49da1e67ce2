"""Data sets for the trainers: readers for the standard on-disk layouts, and augmentation.

Nothing is downloaded. Real data sets come from the ``data_dir`` the user gives:

* MNIST in its IDX layout: ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``
  (optionally ``.gz``) in ``data_dir``, ``data_dir/mnist``, ``data_dir/MNIST`` or
  ``data_dir/MNIST/raw`` (torchvision's layout);
* CIFAR-10 in its python pickle layout: ``cifar-10-batches-py/data_batch_1`` ... ``_5``;
* CIFAR-100 in its python pickle layout: ``cifar-100-python/train``.

Missing or malformed files raise :class:`DataError` naming the path and the expected layout.
Validation data is held out of the *training* files (the test split is never used for tuning)
and the split is fixed, not seeded per trial, so all trials of a study are compared on the same
examples. Images stay uint8 (a quarter of the memory, so CIFAR fits on any GPU) and are
converted per batch on the device.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DataError


@dataclass(frozen=True)
class Dataset:
    """Train and validation split as CPU tensors. ``x`` is uint8 (N, C, H, W) for images or
    float32 (N, D) for feature vectors; ``y`` is int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int


# ---------------------------------------------------------------- digits (bundled, offline)


@functools.cache
def load_digits(val_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, ships with the package: offline).
    Fixed stratified split (random_state 0), features scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, test_size=val_fraction, random_state=0, stratify=y
    )

    def feats(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a / 16.0).astype(np.float32))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset("digits", feats(x_tr), labels(y_tr), feats(x_va), labels(y_va), 10)


# ---------------------------------------------------------------- MNIST (IDX)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
MNIST_LAYOUT = (
    "MNIST in IDX layout: train-images-idx3-ubyte and train-labels-idx1-ubyte (optionally .gz) "
    "in the data directory or in its mnist/, MNIST/ or MNIST/raw/ subdirectory"
)


def _mnist_candidates(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "mnist", data_dir / "MNIST", data_dir / "MNIST" / "raw"]


def _find_idx(directory: Path, stem: str) -> Path | None:
    # Both spellings occur in the wild: "train-images-idx3-ubyte" and "train-images.idx3-ubyte".
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_mnist(data_dir: str | os.PathLike[str]) -> Path | None:
    """The directory holding MNIST's training files, or None when there is no trace of MNIST.
    A directory holding one file of the pair but not the other is malformed: DataError."""
    for d in _mnist_candidates(Path(data_dir)):
        found = [_find_idx(d, stem) for stem in MNIST_FILES]
        if all(found):
            return d
        if any(found):
            missing = [s for s, f in zip(MNIST_FILES, found, strict=True) if f is None]
            raise DataError(f"{d}: has part of MNIST but not {missing}; expected {MNIST_LAYOUT}")
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the format of LeCun's MNIST distribution): a magic number with the
    element type and the number of dimensions, the dimensions as big-endian int32, the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e}); expected {MNIST_LAYOUT}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file (bad magic number {raw[:4].hex() or 'empty'},"
            f" expected 0000080N); expected {MNIST_LAYOUT}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header; expected {MNIST_LAYOUT}")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    size = int(np.prod(dims)) if dims else 0
    if len(raw) - header != size:
        raise DataError(
            f"{path}: IDX header says {dims} ({size} bytes of data) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def load_mnist(directory: str) -> Dataset:
    """MNIST's 60 000 training images; the last sixth (10 000, the usual split) is validation."""
    d = Path(directory)
    img_path, lbl_path = (_find_idx(d, s) for s in MNIST_FILES)
    if img_path is None or lbl_path is None:
        raise DataError(f"{d}: MNIST files not found; expected {MNIST_LAYOUT}")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"{img_path}: expected images of shape (N, 28, 28) and labels of shape (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(f"{d}: {len(images)} images but {len(labels)} labels")
    if len(images) < 6:
        raise DataError(f"{img_path}: only {len(images)} images; need at least 6")
    if labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    n_val = len(x) // 6
    return Dataset("mnist", x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], 10)


def load_mnist_or_digits(data_dir: str | None, dataset: str = "auto") -> Dataset:
    """``dataset``: ``mnist`` (must be in ``data_dir``), ``digits``, or ``auto``: MNIST when
    ``data_dir`` holds it, the bundled digits otherwise. A ``data_dir`` that does not exist is an
    error even under ``auto`` (a mistyped path must not silently train on other data)."""
    if dataset == "digits":
        return load_digits()
    if dataset not in ("auto", "mnist"):
        raise ValueError(f"unknown dataset {dataset!r}; use auto, mnist or digits")
    if data_dir is None:
        if dataset == "mnist":
            raise DataError(f"dataset 'mnist' needs a data directory holding {MNIST_LAYOUT}")
        return load_digits()
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: data directory does not exist; expected {MNIST_LAYOUT}")
    found = find_mnist(data_dir)
    if found is None:
        if dataset == "mnist":
            raise DataError(f"{data_dir}: no MNIST files; expected {MNIST_LAYOUT}")
        return load_digits()
    return load_mnist(str(found))


# ---------------------------------------------------------------- CIFAR-10/100 (python pickle)

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR_LAYOUT = {
    "cifar10": f"CIFAR-10 python layout: {CIFAR10_DIR}/data_batch_1 ... data_batch_5, each a "
               "pickled dict with b'data' (N x 3072 uint8) and b'labels'",
    "cifar100": f"CIFAR-100 python layout: {CIFAR100_DIR}/train, a pickled dict with b'data' "
                "(N x 3072 uint8) and b'fine_labels'",
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _read_cifar_pickle(path: Path, label_key: bytes, layout: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {layout}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # pickle raises many types on garbage input
        raise DataError(f"{path}: not a readable pickle ({e!r}); expected {layout}") from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"{path}: expected a dict with b'data' and {label_key!r}, found {keys}; "
            f"expected {layout}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: b'data' is {data.dtype} of shape {data.shape}, expected uint8 (N, 3072) "
            f"(32x32 RGB, channel-major); expected {layout}"
        )
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


@functools.lru_cache(maxsize=4)
def load_cifar(data_dir: str, which: str = "cifar10", val_fraction: float = 0.1) -> Dataset:
    """CIFAR-10 or CIFAR-100 training set; the last ``val_fraction`` (5 000 of 50 000) is the
    validation split. Images as uint8 (N, 3, 32, 32)."""
    if which not in CIFAR_LAYOUT:
        raise ValueError(f"unknown CIFAR variant {which!r}; use cifar10 or cifar100")
    root = Path(data_dir)
    layout = CIFAR_LAYOUT[which]
    if not root.is_dir():
        raise DataError(f"{root}: data directory does not exist; expected {layout}")
    sub = CIFAR10_DIR if which == "cifar10" else CIFAR100_DIR
    d = root if root.name == sub else root / sub
    if not d.is_dir():
        raise DataError(f"{root}: no {sub}/ directory; expected {layout}")
    if which == "cifar10":
        parts = [_read_cifar_pickle(d / f"data_batch_{i}", b"labels", layout) for i in range(1, 6)]
        num_classes = 10
    else:
        parts = [_read_cifar_pickle(d / "train", b"fine_labels", layout)]
        num_classes = 100
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{d}: labels outside 0..{num_classes - 1}; expected {layout}")
    n_val = max(1, int(round(len(data) * val_fraction)))
    if n_val >= len(data):
        raise DataError(f"{d}: only {len(data)} training images, too few to hold out validation")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    y = torch.from_numpy(labels)
    return Dataset(which, x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], num_classes)


# ---------------------------------------------------------------- augmentation, on the device


def normalize_images(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (N, C, H, W) to normalised float, on whatever device ``x`` is on."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


def draw_crop_flip(n: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, ...]:
    """Random crop offsets (n, 2) in [0, 2*pad] and flip flags (n,), drawn once per epoch on the
    CPU generator: the same numbers on any device, and one host-to-device copy per epoch."""
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def crop_flip(
    x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """The standard CIFAR augmentation (zero-pad by ``pad``, random crop back, random horizontal
    flip), vectorised over the batch with gathers: no per-sample Python work."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # flipping = reading columns backwards
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2)
