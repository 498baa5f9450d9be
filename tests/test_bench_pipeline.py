"""The pipeline benchmark (dtutor.bench.pipeline): its verdict and tables from a made-up result, no launch."""

import json

from dtutor import bench


def _fixed_row(p, m, measured, replayed):
    from dtutor.pytorch.model_parallel.timeline import theory_bubble

    return {"strategy": "pipeline_1f1b", "stages": p, "micro_batches": m, "theory": theory_bubble(p, m),
            "measured": measured, "replayed": replayed, "communication": measured - replayed, "span_ms": 700.0,
            "forward_ms": 40.0, "backward_ms": 80.0, "communication_ms": 8.0, "compute_cv": 0.003}


def test_bench_pipeline_judges_the_fixed_time_schedules_and_prints_every_table(monkeypatch, tmp_path, capsys):
    from dtutor.pytorch.model_parallel import bubble

    library = {"strategy": "pipeline_gpipe", "schedule": "gpipe", "sends": "library", "stages": 2, "micro_batches": 4,
               "theory": 0.2, "samples_per_s": 987.6} | dict.fromkeys(bubble.TIMELINE_KEYS)
    memory = [{"layout": "unsplit", "strategy": "single", "bytes_per_rank": [8, 8], "largest_share": 1.0,
               "samples_per_s": 10.0}]
    result = {"fixed_time": [_fixed_row(4, 4, 0.45, 0.4286), _fixed_row(2, 8, 0.13, 0.1150)], "bubble": [library],
              "memory": memory}
    monkeypatch.setattr(bench, "bench_pipeline", lambda repeats: result)
    bench.main(["pipeline", "--json", str(tmp_path / "out.json")])
    printed = capsys.readouterr().out
    assert "schedule vs theory %" in printed and "samples/s" in printed and "layout" in printed
    assert "within 3%: met" in printed and "within 3%: missed" in printed  # 0.0% and +3.5% from the theory
    fixed, real, _ = bench.table_pipeline(result)  # a learner's tables: no verdict
    assert "target" not in fixed.columns and "target" not in real.columns and len(fixed) == 2
    assert json.loads((tmp_path / "out.json").read_text())["fixed_time"][1]["micro_batches"] == 8
