import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import marked_processes

from dtutor import launch
from dtutor.config import choose_backend
from dtutor.launch.arguments import encode_argument, parse_value
from dtutor.launch.supervisor import one_prefix
from dtutor.launch.worker import CLEAR_TO_END, _Prefixed, short_repr
from dtutor.progress import RELAY_MARKER

PROBE = """
import os


def environment(names=()):
    return {name: os.environ.get(name) for name in names}


def takes_kwargs(**kwargs):
    return kwargs


def big():
    return {"weights": list(range(100_000)), "note": "x" * 10_000}
"""


@pytest.fixture
def probe(tmp_path, monkeypatch) -> str:
    """The name of a throw-away module of entry points that workers can import (through PYTHONPATH)."""
    name = f"dtutor_probe_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PROBE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return name


def test_results_come_back_from_every_rank_in_rank_order():
    results = launch.run("dtutor.pytorch.ddp_lessons:hello", nprocs=2, timeout=120, quiet=True)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum_of_ranks"] == 1 for r in results)


def test_output_is_streamed_with_rank_prefixes(capsys):
    launch.run("dtutor.pytorch.ddp_lessons:hello", nprocs=2, timeout=120)
    out = capsys.readouterr().out
    command = out.replace(" \\\n    ", " ")  # a long command is shown wrapped, with continuations
    assert command.startswith("$ torchrun --standalone --nproc-per-node=2 -m dtutor.launch "
                              "dtutor.pytorch.ddp_lessons:hello")
    assert "[rank 0] hello from rank 0 of 2" in out and "[rank 1] hello from rank 1 of 2" in out


def test_two_nodes_on_localhost_agree():
    results = launch.run("dtutor.pytorch.ddp_lessons:hello", nprocs=1, nnodes=2, timeout=180, quiet=True)
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["sum_of_ranks"] for r in results} == {1} and {r["world_size"] for r in results} == {2}


def test_a_crashing_rank_is_named_with_its_traceback_and_nothing_survives(process_marker):
    with pytest.raises(launch.LaunchError) as caught:
        launch.run("dtutor.pytorch.ddp_lessons:fail_on_rank", nprocs=2, timeout=120, quiet=True, failing_rank=1)
    assert caught.value.rank == 1
    assert "RuntimeError: rank 1 failed on purpose" in caught.value.remote_traceback
    assert "rank 1 of dtutor.pytorch.ddp_lessons:fail_on_rank failed" in str(caught.value)
    assert marked_processes(process_marker) == []


def test_a_timeout_ends_every_process(process_marker):
    with pytest.raises(launch.LaunchError, match="did not finish within 4 s"):
        launch.run("dtutor.pytorch.ddp_lessons:sleep", nprocs=2, timeout=4, quiet=True, seconds=300)
    assert marked_processes(process_marker) == []


@pytest.mark.parametrize(
    ("entry", "options", "message"),
    [
        ("dtutor.pytorch.ddp_lessons:hello", {"nprocs": 0}, "nprocs must be a whole number >= 1"),
        ("dtutor.pytorch.ddp_lessons:hello", {"nnodes": 0}, "nnodes must be"),
        ("dtutor.pytorch.ddp_lessons:hello", {"backend": "carrier-pigeon"}, "unknown backend 'carrier-pigeon'"),
        ("dtutor.pytorch.ddp_lessons:hello", {"backend": "nccl", "nprocs": 64}, "'nccl' needs one GPU per rank"),
        ("dtutor.nowhere:hello", {}, "cannot import the entry point's module 'dtutor.nowhere'"),
        ("dtutor.pytorch.ddp_lessons:nothing", {}, "has no function 'nothing'"),
        ("dtutor.pytorch.ddp_lessons", {}, "must look like 'package.module:function'"),
        ("dtutor.pytorch.ddp_lessons:sleep", {"seconds": object()}, "cannot be sent to the workers"),
        ("dtutor.pytorch.ddp_lessons:sleep", {"minutes": 3}, "cannot take these arguments"),
        ("dtutor.pytorch.ddp_lessons:sleep", {"timeout": 0}, "timeout must be positive"),
        ("dtutor.pytorch.ddp_lessons:sleep", {"max_restarts": 1.5}, "max_restarts must be a whole number >= 0"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(monkeypatch, entry, options, message):
    def no_processes(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    with pytest.raises(ValueError, match=message):
        launch.run(entry, quiet=True, **options)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"script": "examples/nowhere.py"}, FileNotFoundError, "no script at examples/nowhere.py"),
        ({"launcher": "horovodrun"}, ValueError, "launcher must be 'torchrun' or 'deepspeed', got 'horovodrun'"),
        ({"nprocs": 0}, ValueError, "nprocs must be a whole number >= 1"),
    ],
)
def test_a_bad_script_launch_is_refused_before_any_process_starts(no_process_may_start, options, error, message):
    script = Path(__file__).resolve().parent.parent / "examples" / "ddp_train.py"  # a script that exists
    with pytest.raises(error, match=message):
        launch.run_script(**{"script": script, **options}, quiet=True)


def test_commands_shown_for_one_and_two_nodes():
    text = launch.show_commands("dtutor.pytorch.ddp_lessons:sleep", 4, seconds=2.5)
    quoted = launch.show_commands("dtutor.pytorch.driver:train", 4, checkpoint="two words.pt")
    one_line = text.replace(" \\\n    ", " ")  # long commands are shown wrapped, with continuations
    assert ("torchrun --standalone --nproc-per-node=4 -m dtutor.launch dtutor.pytorch.ddp_lessons:sleep "
            "seconds=2.5") in one_line
    assert "--nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400" in text
    assert "--rdzv-conf=join_timeout=120,read_timeout=30" in text and "HOST = 127.0.0.1" in text
    restarting = [launch.torchrun_command("dtutor.pytorch.driver:train", 2, {}, nnodes=nodes, max_restarts=3)
                  for nodes in (1, 2)]
    assert all("--max-restarts=3" in words for words in restarting) and "--rdzv-backend=c10d" in restarting[1]
    training = launch.show_commands("dtutor.pytorch.driver:train", 2, strategy="ddp")
    assert training.count("backend=gloo") == 2 and training.count("backend=nccl") == 2  # CPU and GPU forms
    assert "seconds=2.5 backend" not in text  # an entry point without a backend gets none
    assert "'checkpoint='\"'\"'two words.pt'\"'\"''" in quoted  # strings that are not bare words keep their quotes


def test_long_commands_wrap_with_continuations_short_ones_stay_whole():
    short = ["torchrun", "--standalone", "-m", "dtutor.launch", "dtutor.pytorch.ddp_lessons:hello"]
    assert launch.shell_command(short) == shlex.join(short)
    words = launch.torchrun_command("dtutor.pytorch.driver:train", 2, {"strategy": "ddp", "checkpoint": "a b.pt"},
                                    nnodes=2)
    text = launch.shell_command(words, width=60)
    lines = text.splitlines()
    assert all(line.endswith(" \\") for line in lines[:-1]) and len(lines) > 2
    assert all(len(line) <= 62 for line in lines) and lines[1].startswith("    ")
    assert any(line.startswith("    -m dtutor.launch") for line in lines)  # the worker's command starts a line
    assert shlex.split(text.replace(" \\\n", " ")) == words  # the same words as typed on one line


def test_arguments_round_trip_through_the_command_line():
    values = {"a": 1, "b": 2.5, "c": "gloo", "d": "10", "e": [1, (2, 3)], "f": {"k": None}, "g": True}
    parsed = {k: parse_value(encode_argument(k, v).partition("=")[2]) for k, v in values.items()}
    assert parsed == values


def test_importing_the_package_imports_no_framework():
    code = "import sys, dtutor.launch; print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_an_entry_with_kwargs_gets_the_chosen_backend(probe):
    (result,) = launch.run(f"{probe}:takes_kwargs", nprocs=1, timeout=120, quiet=True, steps=3)
    assert result == {"steps": 3, "backend": choose_backend("auto", 1)}


def test_workers_get_tqdm_disabled_and_their_threads(probe):
    names = ["TQDM_DISABLE", "OMP_NUM_THREADS", "DTUTOR_RANK", "DTUTOR_NO_TQDM"]
    seen = launch.run_single(f"{probe}:environment", threads=3, names=names)
    assert seen == {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "3", "DTUTOR_RANK": "0", "DTUTOR_NO_TQDM": None}


def test_tf_workers_each_get_their_own_tf_config(probe):
    names = ["TF_CONFIG", "TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "DTUTOR_RANK", "OMP_NUM_THREADS"]
    seen = launch.run_tf_workers(f"{probe}:environment", 3, timeout=120, quiet=True, threads_per_rank=2,
                                 names=names)
    configs = [json.loads(worker["TF_CONFIG"]) for worker in seen]
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    addresses = configs[0]["cluster"]["worker"]
    assert all(c["cluster"]["worker"] == addresses for c in configs)
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [w["DTUTOR_RANK"] for w in seen] == ["0", "1", "2"]
    assert all(w["TF_USE_LEGACY_KERAS"] == "1" and w["TF_CPP_MIN_LOG_LEVEL"] == "2" for w in seen)
    assert all(w["OMP_NUM_THREADS"] == "2" for w in seen)


def test_tf_workers_print_their_commands(probe, capsys):
    launch.run_tf_workers(f"{probe}:environment", 2, timeout=120, names=["DTUTOR_RANK"])
    out = capsys.readouterr().out
    assert out.count("# worker ") == 2 and "TF_USE_LEGACY_KERAS=1" in out
    assert f"python -m dtutor.launch {probe}:environment" in out


def test_tf_worker_commands_by_hand():
    wrapped = launch.show_tf_worker_commands("dtutor.pytorch.ddp_lessons:sleep", 2, seconds=2.5)
    assert " \\\n    " in wrapped and max(map(len, wrapped.splitlines())) <= 150
    lines = wrapped.replace(" \\\n    ", " ").splitlines()  # each worker's command on one line
    assert lines[0].startswith("# worker 0") and lines[2].startswith("# worker 1")
    for index, line in ((0, lines[1]), (1, lines[3])):
        config = launch.tf_config(["127.0.0.1:12345", "127.0.0.1:12346"], index)
        assert line.startswith(f"TF_CONFIG='{config}' TF_USE_LEGACY_KERAS=1")
        assert line.endswith("python -m dtutor.launch dtutor.pytorch.ddp_lessons:sleep seconds=2.5")


@pytest.mark.parametrize(
    ("options", "message"),
    [({"num_workers": 0}, "num_workers must be"), ({"minutes": 3}, "cannot take these arguments"),
     ({"timeout": 0}, "timeout must be positive")],
)
def test_bad_tf_worker_input_is_refused_before_any_process_starts(monkeypatch, options, message):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(ValueError, match=message):
        launch.run_tf_workers("dtutor.pytorch.ddp_lessons:sleep", **{"num_workers": 2, "quiet": True, **options})


def test_worker_leaves_only_its_result(probe, tmp_path):
    env = {**os.environ, "DTUTOR_RESULT_DIR": str(tmp_path), "DTUTOR_RANK": "0"}
    subprocess.run([sys.executable, "-m", "dtutor.launch", f"{probe}:environment"], env=env, check=True,
                   capture_output=True, timeout=120)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("rank")) == ["rank0.pkl"]


def test_a_worker_restarted_by_torchrun_drops_its_failure_from_the_attempt_before_and_says_so(probe, tmp_path):
    (tmp_path / "rank0.err").write_text("1.0\nRuntimeError: the attempt before failed\n")
    env = {**os.environ, "DTUTOR_RESULT_DIR": str(tmp_path), "DTUTOR_RANK": "0", "TORCHELASTIC_RESTART_COUNT": "1",
           "TORCHELASTIC_MAX_RESTARTS": "3"}
    done = subprocess.run([sys.executable, "-m", "dtutor.launch", f"{probe}:environment"], env=env, check=True,
                          capture_output=True, text=True, timeout=120)
    assert (tmp_path / "rank0.pkl").exists() and not (tmp_path / "rank0.err").exists()
    assert done.stdout == "[rank 0] torchrun restarted every rank: restart 1 of at most 3\n"


def test_a_terminal_run_prints_a_short_result_line(probe):
    env = {k: v for k, v in os.environ.items() if k != "DTUTOR_RESULT_DIR"}
    out = subprocess.run([sys.executable, "-m", "dtutor.launch", f"{probe}:big"], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    (line,) = [line for line in out.stdout.splitlines() if "result:" in line]
    assert line.startswith("[rank 0] result: {") and len(line) <= 240


def test_short_repr_keeps_a_one_line_repr_whole():
    class Result:
        def __repr__(self) -> str:
            return "RunResult(rank=0, ddp on 2 rank(s); epoch 1: loss 0.3012, accuracy 0.912, 1,234 samples/s)"

    assert short_repr(Result()) == repr(Result())
    assert "\n" not in short_repr({"a": "x\n" * 1000}) and len(short_repr(list(range(10**5)))) <= 200


def test_horovods_prefix_becomes_the_course_one():
    assert one_prefix("[1]<stdout>:epoch 0: loss 2.3") == "[rank 1] epoch 0: loss 2.3"
    assert one_prefix("[0]<stderr>:Traceback") == "[rank 0] Traceback"
    assert one_prefix("[rank 0] already one prefix") == "[rank 0] already one prefix"
    torchrun = ("E1207 00:40:33.811000 23281 .venv/lib/python3.11/site-packages/torch/distributed/elastic/"
                "multiprocessing/api.py:1002] failed (exitcode: -9) local_rank: 1 (pid: 23286) of binary: "
                + sys.executable)
    short = f"[torchrun] failed (exitcode: -9) local_rank: 1 (pid: 23286) of binary: {Path(sys.executable).name}"
    assert one_prefix(torchrun) == short  # the interpreter by its name: its path is this machine's


def test_a_terminal_bar_redraws_in_place_with_one_prefix():
    out = io.StringIO()
    stream = _Prefixed(out, "[rank 0] ")
    stream.write("\rddp:  50%|#####     | 5/10")
    stream.write("\r" + " " * 30 + "\r")  # tqdm clears its line before a log line
    stream.write("epoch 0: loss 2.3\n")
    stream.write("\rddp: 100%|##########| 10/10")
    stream.write("\n")  # the bar's line ends
    assert out.getvalue() == (f"\r[rank 0] ddp:  50%|#####     | 5/10{CLEAR_TO_END}\r{CLEAR_TO_END}"
                              f"[rank 0] epoch 0: loss 2.3\n\r[rank 0] ddp: 100%|##########| 10/10{CLEAR_TO_END}\n")


def test_a_worker_started_by_hand_with_a_backend_this_machine_lacks_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DTUTOR_RESULT_DIR"}
    env.update({"TORCHELASTIC_ERROR_FILE": str(tmp_path / "error.json"), "DTUTOR_RANK": "0"})
    done = subprocess.run([sys.executable, "-m", "dtutor.launch", "dtutor.pytorch.driver:train", "strategy=ddp",
                           "backend=nccl"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("[rank 0] refused: ") and len(done.stderr.strip().splitlines()) == 1
    message = json.loads((tmp_path / "error.json").read_text())["message"]["message"]
    assert message.startswith("refused: backend: 'nccl' needs one GPU per rank")


def test_a_launch_shows_the_data_source_once_and_relays_progress_without_printing_it(capsys):
    launch.train(2, strategy="ddp", global_batch=32, samples=64, epochs=2, test_samples=0, timeout=240)
    out = capsys.readouterr().out
    assert out.count("[rank 0] [data] offline digits (no network)\n") == 1 and "[rank 1] [data]" not in out
    assert RELAY_MARKER not in out and out.count("[rank 0] epoch ") == 2


def test_every_entry_point_the_package_and_notebooks_name_exists():
    """A launch names its entry as "module:function" text, which no import checks: resolve every one written."""
    import re
    from pathlib import Path

    from dtutor.launch.arguments import resolve_entry

    root = Path(__file__).resolve().parent.parent
    files = [*root.glob("dtutor/**/*.py"), *root.glob("notebooks/*.ipynb"), *root.glob("notebooks/solutions/*.py")]
    entries = {match for path in files
               for match in re.findall(r"""["'](dtutor(?:\.\w+)+:\w+)["']""", path.read_text())}
    assert len(entries) >= 10, sorted(entries)
    missing = []
    for entry in sorted(entries):
        try:
            resolve_entry(entry)
        except ValueError as error:
            missing.append(f"{entry}: {error}")
    assert not missing, missing
