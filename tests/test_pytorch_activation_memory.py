"""Activation memory: the formulas against what autograd really saves, and checkpointing's saving and extra FLOPs."""

import pytest
import torch

from dtutor.models import mnist_cnn, seeded, wide_mlp
from dtutor.pytorch import activation_memory as am

SHAPE = dict(seq=32, batch=4, hidden=64, heads=4, layers=2)


@pytest.fixture(scope="module")
def recomputation() -> dict:
    torch.manual_seed(0)
    return am.recomputation(batch=4, seq=32, hidden=64, heads=4, layers=2, vocab=64)


def test_the_16_bit_formula_is_the_papers_34_plus_5as_over_h():
    s, b, h, a = 2048, 1, 4096, 32
    assert am.transformer_activation_bytes(s, b, h, a, 1, 2) == s * b * h * (34 + 5 * a * s / h)
    assert am.transformer_activation_bytes(s, b, h, a, 3, 2, checkpointing=True) == 3 * 2 * s * b * h
    terms = am.transformer_layer_terms(s, b, h, a, 2)
    assert sum(terms.values()) == am.transformer_activation_bytes(s, b, h, a, 1, 2)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_transformer_layers_save_what_the_formula_counts(checkpointing):
    torch.manual_seed(0)
    layers = {key: value for key, value in SHAPE.items() if key != "batch"}
    model = am.TinyTransformer(vocab=64, **layers, checkpointing=checkpointing)
    x = torch.randn(SHAPE["batch"], SHAPE["seq"], SHAPE["hidden"], requires_grad=True)
    saved = am.saved_bytes(lambda: model.hidden_states(x), model)
    formula = am.transformer_activation_bytes(**SHAPE, bytes_per_value=4, checkpointing=checkpointing)
    assert saved == am.transformer_exact_bytes(**SHAPE, bytes_per_value=4, checkpointing=checkpointing)
    assert abs(saved / formula - 1) <= 0.15
    assert saved != am.transformer_activation_bytes(**SHAPE, bytes_per_value=2, checkpointing=checkpointing)


def test_the_cnn_and_the_mlp_save_exactly_the_tensors_counted_by_hand():
    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    for model, terms in [(seeded(mnist_cnn), am.cnn_terms(6)),
                         (seeded(wide_mlp, width=32, depth=3), am.mlp_terms(6, 32, 3))]:
        forward = am.training_forward(model, images, labels)
        assert am.saved_bytes(forward, model) == sum(terms.values())


def test_parameters_are_not_counted_as_activations():
    model = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)  # no activation needs saving beyond the input; the weight is saved too, and left out
    assert am.saved_bytes(lambda: model(x), model) == x.numel() * 4


def test_checkpointing_saves_memory_both_ways_it_is_measured(recomputation):
    plain, checkpointed = recomputation["plain"], recomputation["checkpointed"]
    assert checkpointed["saved"] < plain["saved"]
    assert checkpointed["alive"] < plain["alive"]


def test_checkpointing_adds_exactly_one_more_forward_of_the_layers(recomputation):
    plain, checkpointed = recomputation["plain"], recomputation["checkpointed"]
    assert checkpointed["forward_flops"] == plain["forward_flops"]
    assert recomputation["layers_forward_flops"] > 0
    assert checkpointed["step_flops"] - plain["step_flops"] == recomputation["layers_forward_flops"]
