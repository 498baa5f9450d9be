"""The table, the README section and the plots of ``bench all`` (dtutor.bench.report), from an invented result."""

import json

import pandas as pd
import pytest
from conftest import fake_bench_result

from dtutor import tables
from dtutor.bench import report


def test_the_table_has_one_row_per_strategy_and_its_heading_says_where_and_when():
    table = report.table_all(fake_bench_result())
    head = table.attrs["title"]
    assert head.startswith("quick mode on 2 CPU(s), no GPU, 2026-11-23T23:00:00+00:00, load average 0.5 before")
    assert "Ceiling (2 single runs at once, no communication): 0.85 of 2x one run (rounds: 0.85 to 0.85)." in head
    assert list(table.columns[:2]) == ["strategy", "framework"] and "state kB" in table.columns
    body = table.set_index("strategy")
    assert list(body.index) == ["single", "ddp", "horovod", "deepspeed ZeRO-3", "mirrored"]
    ddp = body.loc["ddp"]
    assert (ddp["1 w /s"], ddp["2 w /s"], ddp["T2/(2T1)"], ddp["/ceiling"]) == (100, 178, 0.89, 1.05)
    assert (ddp["state kB"], ddp["sent kB"], ddp["theory kB"]) == (1463, 488, 488)  # 1,000 bytes each
    assert ddp["sent / theory"] == "x1.00 matches"
    assert ddp["proof (difference, tolerance)"] == "passed 1e-08 vs reference (tol 1e-05)"
    assert body.loc["deepspeed ZeRO-3", "sent / theory"] == "x0.86 differs"
    assert pd.isna(body.loc["deepspeed ZeRO-3", "1 w /s"])  # not run: missing, not zero
    assert body.loc["mirrored", "sent / theory"] == "none: 1 process"
    assert body.loc["mirrored", "proof (difference, tolerance)"].startswith("FAILED")  # shown, not hidden
    notes = " ".join(table.attrs["notes"])
    assert "single at 2 worker(s): skipped, one device by definition" in notes
    assert "deepspeed ZeRO-3: failed, RuntimeError: boom" in notes
    text = tables.text(table)
    assert text.startswith("quick mode on 2 CPU(s)") and max(len(line) for line in text.splitlines()) <= 150


def test_the_readme_table_keeps_the_long_cells():
    text = report.readme_table(fake_bench_result())
    assert "passed (1e-08 vs reference, tol 1e-05)" in text and "none sent: one process" in text


def test_the_ceiling_carries_its_rounds_and_one_above_one_is_called_the_machines_noise():
    result = fake_bench_result()
    assert "(rounds: 0.85 to 0.85). Proofs" in report.heading(result) and "above 1" not in report.heading(result)
    result.update(ceiling=0.98, ceilings=[0.98, 0.91, 1.04])  # the median below 1, a round above it
    heading = report.heading(result)
    assert "0.98 of 2x one run (rounds: 0.91 to 1.04): above 1, so one process alone ran slower" in heading
    assert "read '/ ceiling' with its spread over the rounds" in heading


def test_the_readme_section_is_rewritten_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    begin, end = report.MARKERS
    readme.write_text(f"# title\nbefore\n{begin}\nold table\n{end}\nafter\n")
    report.update_readme(fake_bench_result(), readme)
    text = readme.read_text()
    assert text.startswith("# title\nbefore\n" + begin + "\nquick mode on 2 CPU(s)")
    assert text.endswith(end + "\nafter\n")
    assert "old table" not in text and "| ddp | torch | 100 | 178 | 0.89 | 1.05 |" in text
    assert report.update_readme(fake_bench_result(), readme) == text  # the same result gives the same README


def test_a_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs exactly one"):
        report.update_readme(fake_bench_result(), readme)


def test_the_command_line_rewrites_the_readme_from_json(tmp_path, capsys):
    from dtutor import bench

    source, readme = tmp_path / "all.json", tmp_path / "README.md"
    source.write_text(json.dumps(fake_bench_result()))
    readme.write_text("\n".join(report.MARKERS) + "\n")
    bench.main(["readme", "--json", str(source), "--readme", str(readme)])
    assert "| horovod | torch |" in readme.read_text() and "was rewritten" in capsys.readouterr().out


def test_plots_and_highlights_are_computed_from_the_numbers():
    result = fake_bench_result()
    figure = report.plot_all(result)
    assert [axes.get_ylabel() for axes in figure.axes] == ["samples / s", "model state / worker (kB)",
                                                           "kB sent / worker / step"]
    assert "ceiling: 2 single runs\nat once (0.85 of 2x)" in [t.get_text() for t in figure.axes[0].get_legend().texts]
    lines = report.highlights(result)
    assert lines[0].startswith("Two single runs at once reach 0.85 of twice one run here (rounds: 0.85 to 0.85)")
    assert lines[1] == "Fastest at 2 workers: ddp (178 samples/s, efficiency 0.89)."
    assert lines[2].startswith("Least model state per worker: deepspeed ZeRO-3 (488 kB, 33% of ddp's")


def test_recorded_results_are_listed_with_their_file(tmp_path):
    assert report.recorded_results("gpu", tmp_path / "gpu") == []
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "2026-12-01_h100.json").write_text(json.dumps(fake_bench_result()))
    found = report.recorded_results("gpu", tmp_path / "gpu")
    assert [r["file"] for r in found] == ["gpu/2026-12-01_h100.json"] and found[0]["mode"] == "quick"
    (tmp_path / "gpu" / "allreduce.json").write_text(json.dumps([{"rows": []}]))  # a list: not a result
    assert [r["file"] for r in report.recorded_results("gpu", tmp_path / "gpu")] == ["gpu/2026-12-01_h100.json"]
