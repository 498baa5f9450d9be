"""The notebooks' display helpers, outside Jupyter (where they print)."""

from pathlib import Path

from dtutor import notebook

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_show_file_prints_the_file_whole_under_its_folder_and_length(capsys):
    path = EXAMPLES / "deepspeed_config.json"
    notebook.show_file(path)
    header, _, body = capsys.readouterr().out.partition("\n")
    assert header == f"examples/deepspeed_config.json: {len(path.read_text().splitlines())} lines"
    assert body == path.read_text()


def test_show_source_prints_the_real_source(capsys):
    notebook.show_source(notebook.show_file)
    assert capsys.readouterr().out.startswith("def show_file(path: str | Path) -> None:")
