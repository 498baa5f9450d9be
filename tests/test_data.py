import gzip
import io

import numpy as np
import pytest

from dtutor import data


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_offline_fallback_is_real_digits_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DTUTOR_DATA", str(tmp_path))
    train = data.load_mnist("train")
    test = data.load_mnist("test", verbose=False)
    assert train.images.shape == (1500, 28, 28) and test.images.shape == (data.FALLBACK_TEST_SIZE, 28, 28)
    assert train.images.dtype == np.float32 and 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.images[:, :4].max() == 0.0 and train.images[:, 24:].max() == 0.0  # 20x20 digit, 4-pixel frame
    assert "offline fallback" in train.source and "DTUTOR_OFFLINE=1" in train.source
    assert "[data] 1500 images: offline fallback" in capsys.readouterr().out


def test_original_files_in_the_cache_are_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DTUTOR_DATA", str(tmp_path))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    loaded = data.load_mnist("train", verbose=False)
    assert loaded.source.startswith("MNIST (train)")
    np.testing.assert_allclose(loaded.images, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(loaded.labels, labels)


def test_offline_never_touches_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("DTUTOR_DATA", str(tmp_path))
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert "offline fallback" in data.load_mnist(limit=10, verbose=False).source


def test_a_download_with_a_bad_checksum_is_refused_and_the_fallback_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("DTUTOR_DATA", str(tmp_path))
    monkeypatch.setenv("DTUTOR_OFFLINE", "0")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not mnist"))
    loaded = data.load_mnist(limit=8, verbose=False)
    assert "download failed" in loaded.source and "checksum mismatch" in loaded.source
    assert not any(tmp_path.iterdir())


def test_limit_and_split_are_checked():
    assert len(data.load_mnist(limit=64, verbose=False)) == 64
    with pytest.raises(ValueError, match="has only 1500 samples"):
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
