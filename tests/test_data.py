import gzip
import io

import numpy as np
import pytest

from dtutor import data


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty data folder and a process that has named no data source yet."""
    monkeypatch.setenv("DTUTOR_DATA", str(tmp_path))
    monkeypatch.setattr(data, "_said", set())
    return tmp_path


def test_offline_fallback_is_real_digits_and_says_so_once(fresh, capsys):
    train = data.load_mnist("train")
    test = data.load_mnist("test")
    data.load_mnist("train", limit=64)
    assert train.images.shape == (1500, 28, 28) and test.images.shape == (data.FALLBACK_TEST_SIZE, 28, 28)
    assert train.images.dtype == np.float32 and 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert train.images[:, :4].max() == 0.0 and train.images[:, 24:].max() == 0.0  # 20x20 digit, 4-pixel frame
    assert train.source == "offline digits (no network)" and "DTUTOR_OFFLINE=1" in train.detail
    assert capsys.readouterr().out == "[data] offline digits (no network)\n"  # once per process, one short line


def test_the_offline_digits_are_shuffled_once_the_same_way():
    from sklearn.datasets import load_digits

    train, test = data.load_mnist(verbose=False), data.load_mnist("test", verbose=False)
    original = load_digits().target
    assert not np.array_equal(train.labels[:100], original[:100])  # not scikit-learn's writer-by-writer order
    assert np.array_equal(np.sort(np.concatenate([train.labels, test.labels])), np.sort(original))
    assert np.array_equal(data.load_mnist(verbose=False).labels, train.labels)


def test_the_offline_digits_are_made_once_and_read_back_the_same(fresh, monkeypatch):
    made = data.offline_digits()  # an empty folder: made, then saved
    assert (fresh / data.FALLBACK_CACHE).exists() and list(fresh.glob("*.partial")) == []

    def refuse():
        raise AssertionError("made again although saved")

    monkeypatch.setattr(data, "_make_offline_digits", refuse)
    read = data.offline_digits()
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(made, read, strict=True))
    (fresh / data.FALLBACK_CACHE).write_bytes(b"half a file")  # a damaged file is made again, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("DTUTOR_DATA", str(fresh))
    assert np.array_equal(data.offline_digits()[0], made[0])


def test_original_files_in_the_cache_are_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DTUTOR_DATA", str(tmp_path))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    loaded = data.load_mnist("train", verbose=False)
    assert loaded.source == f"MNIST from {tmp_path.name}/" and data.split_size("train") == 6
    np.testing.assert_allclose(loaded.images, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(loaded.labels, labels)


def test_offline_never_touches_the_network(fresh, monkeypatch):
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert data.load_mnist(limit=10, verbose=False).source.startswith("offline digits")


def test_a_download_with_a_bad_checksum_is_refused_and_the_fallback_says_why(fresh, monkeypatch):
    monkeypatch.setenv("DTUTOR_OFFLINE", "0")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not mnist"))
    loaded = data.load_mnist(limit=8, verbose=False)
    assert loaded.source == "offline digits (download failed)" and "checksum mismatch" in loaded.detail
    kept = sorted(path.name for path in fresh.iterdir())
    assert kept == sorted([data.FAILURE_MARKER, data.FALLBACK_CACHE])  # no MNIST file kept


def test_a_failed_download_is_said_in_one_line_and_not_tried_again_soon(fresh, monkeypatch, capsys):
    def no_network(url, timeout):
        calls.append(url)
        raise data.urllib.error.URLError("[Errno -2] Name or service not known")

    calls: list[str] = []
    monkeypatch.setenv("DTUTOR_OFFLINE", "0")
    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    first = data.load_mnist()
    tried = len(calls)
    again = data.load_mnist("test")
    monkeypatch.setattr(data, "_said", set())  # as a new worker process would
    data.load_mnist(verbose=True)
    assert tried == len(data.MNIST_MIRRORS) and len(calls) == tried  # the later loads did not try again
    assert first.source == again.source == "offline digits (no network)" and "Name or service" in again.detail
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[data] downloading MNIST") and lines[1:] == ["[data] offline digits (no network)"] * 2


def test_a_download_failure_is_tried_again_after_a_while(fresh, monkeypatch):
    (fresh / data.FAILURE_MARKER).write_text(f"{data.time.time() - data.RETRY_DOWNLOAD_AFTER_S - 1}\nno network\nx")
    assert data.recent_download_failure() is None
    (fresh / data.FAILURE_MARKER).write_text(f"{data.time.time() - 5}\nno network\nx")
    assert data.recent_download_failure()[0] == "no network"


def test_the_size_of_a_split_is_known_without_loading_it(fresh, monkeypatch):
    assert [data.split_size(s) for s in ("train", "test")] == [len(data.load_mnist(s, verbose=False))
                                                               for s in ("train", "test")]
    monkeypatch.setenv("DTUTOR_OFFLINE", "0")  # the loader would try a download first: its source is not known
    assert data.split_size("train") is None


def test_limit_and_split_are_checked():
    assert len(data.load_mnist(limit=64, verbose=False)) == 64
    with pytest.raises(ValueError, match="has only 1500 train samples"):
        data.load_mnist(limit=10**6, verbose=False)
    with pytest.raises(ValueError, match="split must be"):
        data.load_mnist("validation")


def test_torch_dataset_shapes():
    dataset = data.torch_dataset(data.load_mnist(limit=5, verbose=False))
    images, label = dataset[0]
    assert tuple(images.shape) == (1, 28, 28) and label.dtype.is_floating_point is False


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_are_disjoint_and_cover_everything(world_size):
    n = 103
    shards = [data.shard_indices(n, world_size, r) for r in range(world_size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_matches_distributed_sampler_without_shuffle():
    import torch.utils.data as tud

    sampler = tud.DistributedSampler(range(12), num_replicas=3, rank=1, shuffle=False)
    assert list(sampler) == data.shard_indices(12, 3, 1).tolist()
    with pytest.raises(ValueError):
        data.shard_indices(12, 2, 2)


def test_global_batches_in_order_and_each_ranks_share_of_them():
    import torch

    images, labels = data.torch_dataset(data.load_mnist(limit=24, verbose=False)).tensors
    batches = data.global_batches(3, 8)
    assert len(batches) == 3 and all(torch.equal(b[0], images[8 * k:8 * k + 8]) for k, b in enumerate(batches))
    shares = [data.rank_share(batches, 2, rank) for rank in range(2)]
    assert torch.equal(shares[1][2][1], labels[[17, 19, 21, 23]])  # rank 1: the odd samples of the third batch
    assert all(len(share[k][0]) == 4 for share in shares for k in range(3))
