"""The memory estimator as a notebook widget: parameters, ranks, ZeRO stage (or FSDP), precision, offload.

``estimate_text`` is what the widget shows (a test checks it); ``memory_widget`` wires it to ipywidgets.
The numbers are ``formulas.estimate``'s, DeepSpeed's convention, which ``python -m dtutor.bench zero`` measures
(within 10%); the paper's mixed-precision count is bf16 with a master copy (the same bytes at stages
1-3; at stage 0 DeepSpeed keeps no master copy in fp32). Torch is not needed.
"""

from __future__ import annotations

import html

from dtutor.pytorch.sharded import formulas

LAYOUTS = {"ZeRO-0 (DDP)": 0, "ZeRO-1": 1, "ZeRO-2": 2, "ZeRO-3": 3, "FSDP": "fsdp"}


def _size(value: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:,.2f} {unit}"
    return f"{value:,.0f} B"


def estimate_text(parameters: float, ranks: int, stage: int | str, precision: str = "bf16", offload: bool = False,
                  optimizer: str = "adam") -> str:
    """The estimate for one setting as lines of text (``stage`` 0-3 or "fsdp"); a refused setting says why."""
    strategy = "fsdp" if stage == "fsdp" else "deepspeed"
    try:
        state = formulas.estimate(parameters, ranks, 0 if stage == "fsdp" else stage, precision, offload, optimizer,
                              strategy)
    except ValueError as error:
        return f"not possible: {error}"
    name = "FSDP" if stage == "fsdp" else f"ZeRO-{stage}"
    lines = [f"{name}, {precision}, {optimizer}, Ψ = {parameters:,.0f} parameters on N = {ranks} ranks",
             f"per rank: {_size(state.total)}",
             f"  parameters {_size(state.parameters)}",
             f"  gradients  {_size(state.all_gradients)}",
             f"  optimizer  {_size(state.optimizer)} (fp32 master copy {_size(state.master_weights)}, "
             f"state {_size(state.optimizer_state)})"]
    if offload:
        lines.append(f"device {_size(state.device)}, host (CPU) {_size(state.host)}")
    return "\n".join(lines)


def memory_widget(parameters: float = 7.5e9, ranks: int = 64, stage: int | str = 2, precision: str = "bf16",
                  offload: bool = False, optimizer: str = "adam"):
    """An ipywidgets form; every change shows ``estimate_text`` below it (defaults: the ZeRO paper's 7.5 B example)."""
    import ipywidgets as widgets

    controls = {
        "parameters": widgets.FloatLogSlider(value=parameters, base=10, min=6, max=12, step=0.05,
                                             description="parameters", readout_format=".3g"),
        "ranks": widgets.BoundedIntText(value=ranks, min=1, max=100_000, description="ranks"),
        "stage": widgets.Dropdown(options=list(LAYOUTS.items()), value=stage, description="layout"),
        "precision": widgets.ToggleButtons(options=list(formulas.BYTES), value=precision, description="precision"),
        "offload": widgets.Checkbox(value=offload, description="offload optimizer to CPU"),
        "optimizer": widgets.ToggleButtons(options=list(formulas.STATE_BYTES), value=optimizer,
                                           description="optimizer"),
    }
    output = widgets.HTML()

    def show(_change=None) -> None:
        text = estimate_text(**{name: control.value for name, control in controls.items()})
        output.value = f"<pre>{html.escape(text)}</pre>"

    for control in controls.values():
        control.observe(show, names="value")
    show()
    return widgets.VBox([*controls.values(), output])
