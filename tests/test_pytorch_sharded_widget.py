"""The estimator widget: its text follows the formulas, refused settings say why, every control updates it."""

from dtutor.pytorch.sharded import widget


def test_the_text_states_the_estimate():
    text = widget.estimate_text(7.5e9, 64, 2)
    assert text.splitlines()[:2] == ["ZeRO-2, bf16, adam, Ψ = 7,500,000,000 parameters on N = 64 ranks",
                                     "per rank: 16.64 GB"]
    assert "parameters 15.00 GB" in text and "device" not in text
    assert "host (CPU) 1.88 GB" in widget.estimate_text(7.5e9, 64, 2, offload=True)
    assert "FSDP, fp32" in widget.estimate_text(1e6, 2, "fsdp", "fp32")


def test_a_refused_setting_says_why():
    assert widget.estimate_text(1e6, 2, 0, offload=True).startswith("not possible: offload:")


def test_the_widget_recomputes_on_every_change():
    form = widget.memory_widget()
    *controls, output = form.children
    assert len(controls) == 6
    assert "ZeRO-2" in output.value and "16.64 GB" in output.value
    controls[2].value = 3  # layout: ZeRO-3
    assert "ZeRO-3" in output.value and "1.88 GB" in output.value
    controls[4].value = True  # offload
    assert "host (CPU)" in output.value
