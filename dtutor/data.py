"""MNIST for the course, and sharding helpers for N workers.

Where the images come from, in order:
1. ``data/mnist/`` in the repo (or ``$DTUTOR_DATA``): the four original ``*-ubyte.gz`` files;
2. a checksummed download into that folder, unless ``DTUTOR_OFFLINE=1`` (tests and CI set it) or a download
   failed less than ``RETRY_DOWNLOAD_AFTER_S`` ago (a marker file in that folder remembers the failure, so the
   workers of every later launch do not try again);
3. "offline digits": real handwritten digits that ship inside scikit-learn (its 8x8 ``digits``, 1,797
   images, scaled up to 28x28 the way MNIST centres a 20x20 digit in a 28x28 frame), shuffled once with a
   fixed seed, then cut into 1,500 training and 297 test images. (scikit-learn stores them writer by writer,
   and its last writers' digits are unusually hard: an SVM scores 0.93 on the last 297 and 0.96 to 0.99 on
   every other block of 297; the shuffle gives the test set the same writers as the training set.) They are
   made once and kept in that folder (``FALLBACK_CACHE``), since every worker of every launch loads them.

The loader says once per process, in one short line, which one it used (``MnistData.source``); the long
reason is in ``MnistData.detail``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FALLBACK_SIZE = 1797  # scikit-learn's handwritten digits
FALLBACK_TEST_SIZE = 297  # of scikit-learn's 1,797 digits (after the shuffle); the other 1,500 are for training
FALLBACK_SEED = 0  # the one shuffle of the offline digits, the same in every process
FALLBACK_CACHE = f"offline-digits-seed{FALLBACK_SEED}.npz"  # made once: scikit-learn and SciPy cost ~1 s a process
RETRY_DOWNLOAD_AFTER_S = 600.0  # a failed download is not tried again within this time (any process)
FAILURE_MARKER = ".download-failed"  # in the data folder: the time and the error of the last failed download
_said: set[str] = set()  # the data sources this process has already named


@dataclass
class MnistData:
    """Images as float32 in [0, 1], shape (N, 28, 28); labels as int64, shape (N,).

    ``source`` is one short line ("offline digits (no network)"); ``detail`` says why, at length.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    detail: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def data_dir() -> Path:
    """The MNIST cache folder: ``$DTUTOR_DATA`` or ``<repo>/data/mnist``."""
    env = os.environ.get("DTUTOR_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data" / "mnist"


def offline() -> bool:
    """True when ``DTUTOR_OFFLINE=1``: the loader never touches the network."""
    return os.environ.get("DTUTOR_OFFLINE", "0") not in ("", "0", "false", "False")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _download(folder: Path, timeout: float = 10.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        target = folder / name
        if target.exists() and _md5(target) == md5:
            continue
        last_error: Exception | None = None
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name, timeout=timeout) as response:
                    payload = response.read()
                if hashlib.md5(payload).hexdigest() != md5:
                    raise ValueError(f"checksum mismatch for {mirror + name}")
                target.write_bytes(payload)
                break
            except Exception as error:  # noqa: BLE001 - try the next mirror, report the last failure
                last_error = error
        else:
            raise OSError(f"could not download {name}: {last_error}") from last_error


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _cached(folder: Path) -> bool:
    return all((folder / name).exists() for name in MNIST_FILES)


def _load_original(folder: Path, split: str) -> MnistData:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return MnistData(images, labels, f"MNIST from {folder.name}/", f"the original MNIST files in {folder}")


def _make_offline_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits in one fixed shuffle, each 8x8 image scaled to 20x20 inside a 28x28 frame."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(FALLBACK_SEED).permutation(len(digits.target))
    small = digits.images[order].astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    big = np.zeros((len(small), 28, 28), dtype=np.float32)
    big[:, 4:24, 4:24] = np.clip(zoom(small, (1, 2.5, 2.5), order=1), 0.0, 1.0)
    return big, digits.target[order].astype(np.int64)


def offline_digits() -> tuple[np.ndarray, np.ndarray]:
    """The offline digits (images, labels): from ``FALLBACK_CACHE`` in the data folder when it is there, else made
    and saved there (written to a temporary name, then renamed, so a process never reads a half-written file)."""
    cache = data_dir() / FALLBACK_CACHE
    try:
        with np.load(cache) as saved:
            return saved["images"], saved["labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    images, labels = _make_offline_digits()
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(partial, cache)
    except OSError:
        partial.unlink(missing_ok=True)  # a read-only folder: every process makes them again
    return images, labels


def _load_fallback(split: str, why: str, detail: str) -> MnistData:
    images, labels = offline_digits()
    cut = len(labels) - FALLBACK_TEST_SIZE
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return MnistData(images[part], labels[part], f"offline digits ({why})",
                     f"scikit-learn's handwritten digits, 8x8 scaled to 28x28: {detail}")


def _why(error: Exception) -> str:
    """A short reason for a failed download: "no network" when the network could not be reached."""
    cause = error.__cause__ or error
    return "no network" if isinstance(cause, (urllib.error.URLError, TimeoutError, ConnectionError)) \
        else "download failed"


def recent_download_failure(folder: Path | None = None) -> tuple[str, str] | None:
    """A download that failed less than ``RETRY_DOWNLOAD_AFTER_S`` ago: (short reason, detail); None: try again."""
    marker = (folder or data_dir()) / FAILURE_MARKER
    try:
        when, why, error = marker.read_text().split("\n", 2)
        age = time.time() - float(when)
    except (OSError, ValueError):
        return None
    if not 0 <= age < RETRY_DOWNLOAD_AFTER_S:
        return None
    return why, f"{error} ({age:.0f} s ago; the next try is {RETRY_DOWNLOAD_AFTER_S:.0f} s after it)"


def _remember_failure(folder: Path, error: Exception) -> None:
    """Leave the time and the reason of a failed download for every later load (any process)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FAILURE_MARKER).write_text(f"{time.time()}\n{_why(error)}\n{error}")
    except OSError:
        pass  # a read-only folder: every process tries again


def _say(text: str, verbose: bool) -> None:
    """Print ``[data] text`` once per process."""
    if verbose and text not in _said:
        _said.add(text)
        print(f"[data] {text}")


def _load(split: str, verbose: bool) -> MnistData:
    folder = data_dir()
    if _cached(folder):
        return _load_original(folder, split)
    if offline():
        return _load_fallback(split, "no network", "DTUTOR_OFFLINE=1 and no MNIST files in data/mnist/")
    failure = recent_download_failure(folder)
    if failure is not None:
        return _load_fallback(split, failure[0], f"the download failed: {failure[1]}")
    _say(f"downloading MNIST into {folder} (about 11 MB)", verbose)
    try:
        _download(folder)
    except OSError as error:
        _remember_failure(folder, error)
        return _load_fallback(split, _why(error), f"the download failed: {error}")
    return _load_original(folder, split)


def split_size(split: str = "train") -> int | None:
    """How many samples ``load_mnist(split)`` gives, known without loading them (the caller checks ``samples``
    with it): MNIST's count from its labels file's header, the fixed cut of the offline digits; None when the
    loader would first try a download (its source is not known yet)."""
    folder = data_dir()
    if _cached(folder):
        with gzip.open(folder / f"{'train' if split == 'train' else 't10k'}-labels-idx1-ubyte.gz", "rb") as f:
            return int.from_bytes(f.read(8)[4:8], "big")
    if offline() or recent_download_failure(folder) is not None:
        return FALLBACK_SIZE - FALLBACK_TEST_SIZE if split == "train" else FALLBACK_TEST_SIZE
    return None


def load_mnist(split: str = "train", limit: int | None = None, verbose: bool = True) -> MnistData:
    """Load MNIST ``split`` ("train" or "test"), the first ``limit`` samples if given.

    Uses ``data/mnist/`` if the files are there, downloads them (checksummed) when online, and otherwise
    falls back to scikit-learn's digits (1,500 training and 297 test images). ``verbose``: say the source
    in one line, once per process.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    data = _load(split, verbose)
    if limit is not None:
        if limit > len(data):
            raise ValueError(f"limit={limit} but {data.source} has only {len(data)} {split} samples")
        data = MnistData(data.images[:limit], data.labels[:limit], data.source, data.detail)
    _say(data.source, verbose)
    return data


def torch_dataset(data: MnistData):
    """A ``TensorDataset`` of images (N, 1, 28, 28) float32 and labels (N,) int64."""
    import torch

    images = torch.from_numpy(np.ascontiguousarray(data.images)).unsqueeze(1)
    return torch.utils.data.TensorDataset(images, torch.from_numpy(data.labels))


def shard_indices(num_samples: int, world_size: int, rank: int) -> np.ndarray:
    """Indices of worker ``rank`` of ``world_size``: every ``world_size``-th sample starting at ``rank``.

    The same interleaving as ``torch.utils.data.DistributedSampler`` (without shuffling): the shards are
    disjoint and, for ``num_samples`` divisible by ``world_size``, equal in size.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return np.arange(rank, num_samples, world_size)


def shard(data: MnistData, world_size: int, rank: int) -> MnistData:
    """The part of ``data`` that worker ``rank`` of ``world_size`` trains on (see ``shard_indices``)."""
    index = shard_indices(len(data), world_size, rank)
    return MnistData(data.images[index], data.labels[index], f"{data.source}, shard {rank}/{world_size}",
                     data.detail)


def global_batches(steps: int, global_batch: int) -> list:
    """The first ``steps x global_batch`` training images as ``steps`` global batches of (images, labels) tensors,
    in order (the from-scratch lessons of notebook 02 train on them without a sampler)."""
    images, labels = torch_dataset(load_mnist("train", limit=steps * global_batch, verbose=False)).tensors
    starts = range(0, steps * global_batch, global_batch)
    return [(images[k:k + global_batch], labels[k:k + global_batch]) for k in starts]


def rank_share(batches: list, world_size: int, rank: int) -> list:
    """Rank ``rank``'s micro-batch of each global batch of ``batches``: every ``world_size``-th sample
    (``shard_indices``, as ``DistributedSampler`` splits a batch)."""
    import torch

    index = torch.from_numpy(shard_indices(len(batches[0][1]), world_size, rank))
    return [(inputs[index], targets[index]) for inputs, targets in batches]
