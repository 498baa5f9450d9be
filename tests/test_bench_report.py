"""The table, the README section and the plots of ``bench all`` (dtutor.bench.report), from an invented result."""

import json

import pytest
from test_bench_rows import fake_result

from dtutor.bench import report


def test_the_table_has_one_row_per_strategy_and_its_heading_says_where_and_when():
    text = report.format_all(fake_result())
    head, table, notes = text.split("\n\n")
    assert head.startswith("quick mode on 2 CPU(s), no GPU, 2026-11-23T23:00:00+00:00, load average 0.5 before")
    assert "Ceiling (2 single runs at once, no communication): 0.85 of 2x one run." in " ".join(head.split())
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["strategy", "framework"]
    body = {line.split()[0]: line for line in lines[1:]}
    assert set(body) == {"single", "ddp", "horovod", "deepspeed", "mirrored"}
    assert "x1.00 matches" in body["ddp"] and "passed 1e-08 vs reference (tol 1e-05)" in body["ddp"]
    assert "x0.86 differs" in body["deepspeed"] and "none: 1 process" in body["mirrored"]
    assert "FAILED" in body["mirrored"]  # a failed proof is shown, not hidden
    notes = " ".join(notes.split())
    assert "single at 2 worker(s): skipped, one device by definition" in notes
    assert "deepspeed ZeRO-3: failed, RuntimeError: boom" in notes
    assert max(len(line) for line in text.splitlines()) <= 150


def test_the_readme_table_keeps_the_long_cells():
    text = report.readme_table(fake_result())
    assert "passed (1e-08 vs reference, tol 1e-05)" in text and "none sent: one process" in text


def test_a_ceiling_above_one_is_called_noise_and_only_then():
    result = fake_result()
    assert "lower bound" not in report.heading(result)
    result.update(ceiling=1.27, ceilings=[1.28, 1.11, 1.27])
    heading = report.heading(result)
    assert "1.27 of 2x one run (rounds: 1.28, 1.11, 1.27): above 1, so one process alone ran slower" in heading
    assert "read that column as a lower bound" in heading


def test_the_readme_section_is_rewritten_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    begin, end = report.MARKERS
    readme.write_text(f"# title\nbefore\n{begin}\nold table\n{end}\nafter\n")
    report.update_readme(fake_result(), readme)
    text = readme.read_text()
    assert text.startswith("# title\nbefore\n" + begin + "\nquick mode on 2 CPU(s)")
    assert text.endswith(end + "\nafter\n")
    assert "old table" not in text and "| ddp | torch | 100 | 178 | 0.89 | 1.05 |" in text
    assert report.update_readme(fake_result(), readme) == text  # the same result gives the same README


def test_a_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs exactly one"):
        report.update_readme(fake_result(), readme)


def test_the_command_line_rewrites_the_readme_from_json(tmp_path, capsys):
    from dtutor import bench

    source, readme = tmp_path / "all.json", tmp_path / "README.md"
    source.write_text(json.dumps(fake_result()))
    readme.write_text("\n".join(report.MARKERS) + "\n")
    bench.main(["readme", "--json", str(source), "--readme", str(readme)])
    assert "| horovod | torch |" in readme.read_text() and "was rewritten" in capsys.readouterr().out


def test_plots_and_highlights_are_computed_from_the_numbers():
    result = fake_result()
    figure = report.plot_all(result)
    assert [axes.get_ylabel() for axes in figure.axes] == ["samples / s", "model state / worker (kB)",
                                                           "kB sent / worker / step"]
    assert "ceiling: 2 single runs\nat once (0.85 of 2x)" in [t.get_text() for t in figure.axes[0].get_legend().texts]
    lines = report.highlights(result)
    assert lines[0].startswith("Two single runs at once reach 0.85 of twice one run")
    assert lines[1] == "Fastest at 2 workers: ddp (178 samples/s, efficiency 0.89)."
    assert lines[2].startswith("Least model state per worker: deepspeed ZeRO-3 (488 kB, 33% of ddp's")


def test_recorded_results_are_listed_with_their_file(tmp_path):
    assert report.recorded_results("gpu", tmp_path / "gpu") == []
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "2026-12-01_h100.json").write_text(json.dumps(fake_result()))
    found = report.recorded_results("gpu", tmp_path / "gpu")
    assert [r["file"] for r in found] == ["gpu/2026-12-01_h100.json"] and found[0]["mode"] == "quick"
