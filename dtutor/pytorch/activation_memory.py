"""Activation memory: what a training step keeps between forward and backward, measured against its formula, and
what activation checkpointing (``torch.utils.checkpoint``) saves and costs.

Two measurements, both exact counts of bytes (no allocator statistics, which a CPU does not keep):

- ``saved_bytes``: the tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``), summed
  over unique storages, parameters left out. This is what the formulas count.
- ``live_bytes``: the storages created during the forward pass and still alive at its end (a dispatch mode keeps a
  weak reference to every result). It sees what checkpointing keeps, which the hooks cannot see: a non-reentrant
  checkpoint packs its region's saved tensors with hooks of its own, and holds its input in a closure.

The transformer's formula is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", also the Ultra-Scale Playbook's): per layer s·b·h·(34 + 5·a·s/h) bytes in 16-bit, dropout masks 1 byte
per value. With p bytes per value it reads s·b·h·(16p + 2) + a·s²·b·(2p + 1) (``transformer_activation_bytes``).
Full checkpointing keeps only each layer's input: p·s·b·h per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

MASK_BYTES = 1  # a dropout mask is a bool tensor: one byte per value, whatever the precision


def transformer_activation_bytes(seq: int, batch: int, hidden: int, heads: int, layers: int,
                                 bytes_per_value: float = 2, checkpointing: bool = False) -> float:
    """Bytes of activations a stack of ``layers`` transformer layers keeps for backward (Korthikanti et al. 2022).

    Per layer, with s = ``seq``, b = ``batch``, h = ``hidden``, a = ``heads``, p = ``bytes_per_value``:
    s·b·h·(16p + 2) + a·s²·b·(2p + 1), which is s·b·h·(34 + 5·a·s/h) for p = 2. ``checkpointing``: full
    recomputation, each layer keeps only its input, p·s·b·h. The cost model imports this function.
    """
    if checkpointing:
        return layers * bytes_per_value * seq * batch * hidden
    per_layer = seq * batch * hidden * (16 * bytes_per_value + 2 * MASK_BYTES)
    per_layer += heads * seq * seq * batch * (2 * bytes_per_value + MASK_BYTES)
    return layers * per_layer


def transformer_layer_terms(seq: int, batch: int, hidden: int, heads: int, bytes_per_value: float) -> dict[str, float]:
    """The per-layer formula term by term (bytes): which tensor each op saves, as the paper counts them."""
    sbh, p = seq * batch * hidden, bytes_per_value
    scores = heads * seq * seq * batch
    return {
        "LayerNorm 1 input": p * sbh, "QKV input (LayerNorm 1 output)": p * sbh, "Q, K, V": 3 * p * sbh,
        "softmax output": p * scores, "attention dropout mask": MASK_BYTES * scores,
        "attention dropout output": p * scores, "output projection input": p * sbh,
        "dropout mask after attention": MASK_BYTES * sbh, "LayerNorm 2 input": p * sbh,
        "MLP up input (LayerNorm 2 output)": p * sbh, "GELU input (4h)": 4 * p * sbh,
        "MLP down input (4h)": 4 * p * sbh,
        "dropout mask after MLP": MASK_BYTES * sbh,
    }


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout that saves a bool mask (``torch.native_dropout``, what CUDA's dropout runs): 1 byte per value.
    ``F.dropout`` on a CPU multiplies by a mask of the input's dtype, which backward keeps: 4 bytes in fp32."""
    return torch.native_dropout(x, p, training)[0] if training and p > 0 else x


class TransformerLayer(nn.Module):
    """A pre-LayerNorm GPT layer written out in ``torch.nn``: causal attention with its s x s scores, a 4h MLP.

    Dropout (on the attention probabilities and after each residual branch) keeps the masks the formula counts;
    the causal mask is a buffer added to the scores, so no op saves it.
    """

    def __init__(self, hidden: int, heads: int, seq: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.out = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.up, self.down = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.register_buffer("causal", torch.full((seq, seq), float("-inf")).triu(1), persistent=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention; Q, K and V are views of one contiguous (3, b, a, s, d) tensor."""
        b, s, h = x.shape
        qkv = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4).contiguous()
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(h // self.heads)) + self.causal[:s, :s]
        probabilities = _dropout(scores.softmax(-1), self.dropout, self.training)
        merged = (probabilities @ v).transpose(1, 2).reshape(b, s, h)
        return _dropout(self.out(merged), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attention(LN(x)), then + MLP(LN(.))."""
        x = x + self.attention(self.norm1(x))
        return x + _dropout(self.down(F.gelu(self.up(self.norm2(x)))), self.dropout, self.training)


class TinyTransformer(nn.Module):
    """Token and position embeddings, ``layers`` ``TransformerLayer``s, a final LayerNorm and the vocabulary head.

    ``checkpointing``: each layer runs under ``torch.utils.checkpoint`` (non-reentrant), so backward recomputes it.
    """

    def __init__(self, vocab: int = 256, seq: int = 64, hidden: int = 128, heads: int = 4, layers: int = 2,
                 dropout: float = 0.1, checkpointing: bool = False) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(seq, hidden)
        self.layers = nn.ModuleList(TransformerLayer(hidden, heads, seq, dropout) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, vocab)
        self.checkpointing = checkpointing

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (b, s, vocab) for ``tokens`` (b, s)."""
        places = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.hidden_states(self.tokens(tokens) + self.positions(places))
        return self.head(self.norm(x))

    def hidden_states(self, x: torch.Tensor) -> torch.Tensor:
        """The layers alone, each checkpointed when ``checkpointing`` is set."""
        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=False) if self.checkpointing else layer(x)
        return x


def _parameter_storages(model: nn.Module) -> set[int]:
    """The storages (C++ pointers, as ``StorageWeakRef.cdata``) of ``model``'s parameters and buffers."""
    return {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}


def saved_bytes(forward: Callable[[], Any], model: nn.Module) -> int:
    """Bytes of the unique storages autograd saves for backward while ``forward()`` runs, ``model``'s parameters
    left out (a linear layer saves its weight, which is model state, not activation)."""
    parameters, seen = _parameter_storages(model), {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            seen[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(seen.values())


class _Allocations(TorchDispatchMode):
    """Keeps a weak reference to the storage of every tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: list[tuple[StorageWeakRef, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                self.storages.append((StorageWeakRef(storage), storage.nbytes()))
        return result


def live_bytes(forward: Callable[[], Any], model: nn.Module) -> int:
    """Bytes of the storages created while ``forward()`` runs and still alive when it returns (its result kept),
    ``model``'s parameters left out: what the step holds until backward, whoever holds it."""
    parameters = _parameter_storages(model)
    with _Allocations() as allocations:
        result = forward()
    alive = {reference.cdata: size for reference, size in allocations.storages
             if not reference.expired() and reference.cdata not in parameters}
    del result
    return sum(alive.values())


def transformer_exact_bytes(seq: int, batch: int, hidden: int, heads: int, layers: int, bytes_per_value: float,
                            checkpointing: bool = False) -> float:
    """The formula plus what the paper leaves out and torch saves: each LayerNorm's mean and 1/std, 4 bytes per
    token each, two LayerNorms per layer (none kept when the layer is checkpointed)."""
    statistics = 0 if checkpointing else layers * 2 * 2 * seq * batch * 4
    return transformer_activation_bytes(seq, batch, hidden, heads, layers, bytes_per_value, checkpointing) + statistics


def cnn_terms(batch: int) -> dict[str, int]:
    """What the course's MNIST CNN (``models.mnist_cnn``) saves for backward, by hand, in bytes (fp32, int64
    max-pool indices), its loss included: each op's saved input or output, a tensor two ops share counted once."""
    f, i = 4 * batch, 8 * batch
    return {
        "conv 1 input (the images)": f * 1 * 28 * 28, "ReLU 1 output = pool 1 input": f * 32 * 26 * 26,
        "pool 1 indices (int64)": i * 32 * 13 * 13, "conv 2 input (pool 1 output)": f * 32 * 13 * 13,
        "ReLU 2 output = pool 2 input": f * 64 * 11 * 11, "pool 2 indices (int64)": i * 64 * 5 * 5,
        "dense 1 input (pool 2 output)": f * 64 * 5 * 5, "ReLU 3 output = dense 2 input": f * 64,
        "log-softmax output": f * 10, "targets (int64)": i, "loss weight total (scalar)": 4,
    }


def mlp_terms(batch: int, width: int, depth: int, in_features: int = 28 * 28, classes: int = 10) -> dict[str, int]:
    """What ``models.wide_mlp`` saves for backward, by hand, in bytes (fp32), its loss included: the first layer's
    input, and each hidden ReLU's output (which the next linear layer saves as its input: one tensor)."""
    f = 4 * batch
    return {"first layer input (the images)": f * in_features, f"{depth} ReLU outputs": f * width * depth,
            "log-softmax output": f * classes, "targets (int64)": 8 * batch, "loss weight total (scalar)": 4}


def training_forward(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The forward pass of one training step, to the loss (logits over the last dimension)."""
    return lambda: F.cross_entropy(model(inputs).flatten(0, -2), targets.flatten())


def measure_models(batch: int = 32, mlp_width: int = 256, mlp_depth: int = 4, seq: int = 64, hidden: int = 128,
                   heads: int = 4, layers: int = 2, vocab: int = 256) -> list[dict[str, Any]]:
    """Measured saved bytes (hooks) and bytes alive after forward, beside the formula, for one micro-batch of
    ``batch`` samples: the CNN and the MLP (whole step's forward) and the transformer's layers (formula per layer
    x ``layers``; its input a leaf, as a layer's input is another layer's output)."""
    from dtutor.models import mnist_cnn, seeded, wide_mlp

    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    rows = []
    for name, model, terms in [("MNIST CNN", seeded(mnist_cnn), cnn_terms(batch)),
                               (f"MLP {mlp_depth} x {mlp_width}", seeded(wide_mlp, width=mlp_width, depth=mlp_depth),
                                mlp_terms(batch, mlp_width, mlp_depth))]:
        forward = training_forward(model, images, labels)
        rows.append(_row(name, model, forward, sum(terms.values()), sum(terms.values())))
    transformer = seeded(TinyTransformer, vocab=vocab, seq=seq, hidden=hidden, heads=heads, layers=layers)
    x = torch.randn(batch, seq, hidden, requires_grad=True)
    shape = dict(seq=seq, batch=batch, hidden=hidden, heads=heads, layers=layers, bytes_per_value=4)
    for checkpointing in (False, True):
        transformer.checkpointing = checkpointing
        name = f"transformer, {layers} layers" + (", checkpointed" if checkpointing else "")
        rows.append(_row(name, transformer, lambda: transformer.hidden_states(x),
                         transformer_activation_bytes(**shape, checkpointing=checkpointing),
                         transformer_exact_bytes(**shape, checkpointing=checkpointing)))
    return rows


def _row(name: str, model: nn.Module, forward: Callable[[], Any], formula: float, exact: float) -> dict[str, Any]:
    model.train()
    saved = saved_bytes(forward, model)
    return {"model": name, "saved": saved, "alive": live_bytes(forward, model), "formula": formula, "exact": exact,
            "ratio": saved / formula}


def forward_flops(forward: Callable[[], Any]) -> int:
    """FLOPs ``forward()`` runs, as ``FlopCounterMode`` counts them (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops()


def step_flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """FLOPs of one forward and backward of ``model`` on ``inputs`` (backward's recomputation included)."""
    def step() -> None:
        training_forward(model, inputs, targets)().backward()
    return forward_flops(step)


def recomputation(batch: int = 8, seq: int = 64, hidden: int = 128, heads: int = 4, layers: int = 2,
                  vocab: int = 256) -> dict[str, Any]:
    """What checkpointing every layer of ``TinyTransformer`` changes in one training step: saved bytes (hooks),
    the step's FLOPs with and without, and the FLOPs of one forward of the layers (the recomputation)."""
    model = TinyTransformer(vocab, seq, hidden, heads, layers)
    tokens, targets = torch.randint(0, vocab, (batch, seq)), torch.randint(0, vocab, (batch, seq))
    x = torch.randn(batch, seq, hidden, requires_grad=True)
    result: dict[str, Any] = {"layers_forward_flops": forward_flops(lambda: model.hidden_states(x)),
                              "shape": dict(batch=batch, seq=seq, hidden=hidden, heads=heads, layers=layers)}
    for checkpointing in (False, True):
        model.checkpointing = checkpointing
        key = "checkpointed" if checkpointing else "plain"
        result[key] = {"saved": saved_bytes(training_forward(model, tokens, targets), model),
                       "alive": live_bytes(training_forward(model, tokens, targets), model),
                       "step_flops": step_flops(model, tokens, targets),
                       "forward_flops": forward_flops(training_forward(model, tokens, targets))}
    return result
