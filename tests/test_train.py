import copy

import pytest
import torch

from dtutor import models, train


def batches(count: int, size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator))
            for _ in range(count)]


def test_one_step_matches_a_hand_written_step():
    model = models.seeded(models.mnist_cnn, 0)
    reference = copy.deepcopy(model)
    data = batches(1, 16)
    train.train(model, data, torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(reference(data[0][0]), data[0][1]).backward()
    optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_accumulating_two_half_batches_equals_one_full_batch():
    data = batches(4, 8)
    joined = [(torch.cat([data[i][0], data[i + 1][0]]), torch.cat([data[i][1], data[i + 1][1]])) for i in (0, 2)]
    accumulated, whole = models.seeded(models.mnist_cnn, 1), models.seeded(models.mnist_cnn, 1)
    m1 = train.train(accumulated, data, torch.optim.SGD(accumulated.parameters(), lr=0.1), accumulation=2,
                     progress=False)
    m2 = train.train(whole, joined, torch.optim.SGD(whole.parameters(), lr=0.1), progress=False)
    assert m1.steps == m2.steps == 2 and m1.samples == m2.samples == 32
    for p, q in zip(accumulated.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert m1.history == pytest.approx(m2.history, rel=1e-5)


def test_no_sync_is_used_for_all_but_the_last_micro_batch():
    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    model = models.seeded(models.mnist_cnn, 0)
    train.train(model, batches(6, 4), torch.optim.SGD(model.parameters(), lr=0.1), accumulation=3,
                no_sync=Recorder, progress=False)
    assert len(entered) == 2 * 2  # two steps, two of three micro-batches each


def test_metrics_are_reduced_and_steps_limited():
    model = models.seeded(models.mnist_cnn, 0)
    doubled = []

    def reduce(tensor):
        doubled.append(True)
        return tensor * 2  # stands in for a sum over two identical workers

    metrics = train.train(model, batches(5, 4), torch.optim.SGD(model.parameters(), lr=0.0), max_steps=3,
                          reduce=reduce, progress=False)
    assert doubled == [True] and metrics.steps == 3 and metrics.samples == 2 * 3 * 4
    assert metrics.loss == pytest.approx(sum(metrics.history) / 3, rel=1e-6)
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.samples_per_second > 0


def test_incomplete_accumulation_group_is_an_error():
    model = models.seeded(models.mnist_cnn, 0)
    with pytest.raises(ValueError, match="ran out mid accumulation group"):
        train.train(model, batches(3, 4), torch.optim.SGD(model.parameters(), lr=0.1), accumulation=2,
                    progress=False)
    with pytest.raises(ValueError, match="accumulation must be >= 1"):
        train.train(model, [], torch.optim.SGD(model.parameters(), lr=0.1), accumulation=0)


def test_seed_everything_repeats_random_draws():
    train.seed_everything(5)
    first = torch.rand(3)
    train.seed_everything(5)
    assert torch.equal(first, torch.rand(3))


def test_evaluate():
    model = models.seeded(models.mnist_cnn, 0)
    loss, accuracy = train.evaluate(model, batches(2, 8))
    assert loss > 0 and 0 <= accuracy <= 1 and model.training


def test_record_epoch_appends_and_logs_one_line():
    history, lines = [], []
    metrics = train.Metrics(steps=2, samples=64, loss=1.23456, accuracy=0.5, seconds=0.5)
    train.record_epoch(history, 3, metrics, 2, lines.append)
    assert history == [{"epoch": 3, **metrics.as_dict()}]
    assert lines == ["epoch 3: loss 1.2346, accuracy 0.500, 128 samples/s over 2 rank(s)"]
