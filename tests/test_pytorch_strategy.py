"""The strategy interface: a strategy whose step is not ``backward`` + ``optimizer.step`` fits the driver."""

import pytest
import torch

from dtutor import TrainConfig, launch, max_difference, strategies
from dtutor.layout import PIPELINE, Layout
from dtutor.pytorch import StepTotals, Strategy, fit
from dtutor.pytorch.strategy import totals_of

SETUP = {"strategy": "single", "global_batch": 32, "samples": 96, "epochs": 1, "momentum": 0.0, "lr": 0.1,
         "test_samples": 0}


class FunctionalEngine(Strategy):
    """Stands in for an engine (DeepSpeed) or a schedule (a pipeline): it owns the whole step.

    It never calls ``loss.backward()`` or ``optimizer.step()``: gradients come from ``torch.autograd.grad``
    and the update is applied by hand, on a doubled batch whose second half is reported as a second rank's
    (to show the metrics can come from anywhere the strategy says).
    """

    steps_taken = 0

    def wrap(self, model, optimizer):
        return model, None  # an engine keeps its own optimizer

    def train_step(self, model, optimizer, micro_batches, loss_fn) -> StepTotals:
        inputs = torch.cat([x for x, _ in micro_batches])
        targets = torch.cat([y for _, y in micro_batches])
        outputs = model(inputs)
        loss = loss_fn(outputs, targets)
        gradients = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for parameter, gradient in zip(model.parameters(), gradients, strict=True):
                parameter -= self.config.lr * gradient
        self.steps_taken += 1
        return totals_of(outputs, targets, loss)

    def reduce(self, tensor, op="sum"):
        return tensor * 2 if op == "sum" else tensor  # as if a second rank had the same numbers

    def save_checkpoint(self, *args):
        raise AssertionError("no checkpoint was asked for")


def test_a_strategy_that_owns_its_step_fits_without_changing_the_driver():
    config = TrainConfig(**SETUP)
    engine = FunctionalEngine(config)
    by_engine = fit(config, strategy=engine)
    plain = fit(config)
    assert engine.steps_taken == 3
    assert max_difference(by_engine, plain) < 1e-6
    assert by_engine.epochs[0].samples == 2 * plain.epochs[0].samples  # its reduce decided the totals
    assert by_engine.epochs[0].loss == pytest.approx(plain.epochs[0].loss, rel=1e-5)


def test_the_default_step_uses_no_sync_for_all_but_the_last_micro_batch():
    entered = []

    class Recording(Strategy):
        def no_sync(self, model):
            entered.append(True)
            return super().no_sync(model)

    fit(TrainConfig(**SETUP, accumulation=4), strategy=Recording(TrainConfig(**SETUP, accumulation=4)))
    assert len(entered) == 3 * 3  # three steps, three of four micro-batches each


def test_step_totals_stack_as_float64():
    totals = StepTotals(torch.tensor(2.5), torch.tensor(3), torch.tensor(4), torch.tensor(4))
    assert totals.stacked().dtype == torch.float64 and totals.stacked().tolist() == [2.5, 3.0, 4.0, 4.0]


def test_a_strategy_takes_its_layout_from_its_class_not_its_name():
    class Mine(Strategy):
        name = "a_name_no_registry_knows"
        layout = PIPELINE

    mine = Mine(TrainConfig(**SETUP))
    mine.rank, mine.world_size = 1, 4
    assert (mine.data_ranks, mine.data_rank) == (1, 0)  # every stage reads the whole batch
    grid = type("Grid", (Strategy,), {"layout": Layout(tensor=2)})(TrainConfig(**SETUP))
    grid.rank, grid.world_size = 3, 4
    assert (grid.data_ranks, grid.data_rank, grid.coordinates.tensor) == (2, 1, 1)


def test_every_registered_class_declares_the_layout_its_registry_entry_states():
    for name in strategies.names("torch"):
        assert strategies.load(name).layout == strategies.STRATEGIES[name].layout, name


def test_a_learners_strategy_with_a_new_name_shards_its_data_as_its_layout_says(own_code_importable):
    results = launch.run("own_code:own_strategy", 2, timeout=240, quiet=True, backend="gloo")
    alone = launch.train(1, strategy="single", global_batch=32, samples=128, test_samples=64, quiet=True)[0]
    assert results[0].epochs[0].samples == alone.epochs[0].samples == 128  # each sample counted once
    assert max_difference(results[0], alone) < strategies.STRATEGIES["pipeline_gpipe"].tolerance
