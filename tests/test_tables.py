"""The course's tables (dtutor.tables): DataFrames with a title and notes, and their text for a terminal."""

import pandas as pd

from dtutor import tables


def _table():
    rows = [{"name": "ddp", "samples/s": 1234, "share": 0.5, "note": "fast"},
            {"name": "horovod", "samples/s": None, "share": None, "note": None}]
    return tables.titled(rows, "Two strategies", ["a note " * 30], integers=["samples/s"])


def test_a_table_keeps_its_values_title_and_notes():
    table = _table()
    assert list(table.columns) == ["name", "samples/s", "share", "note"]
    assert table["samples/s"].dtype == "Int64" and table.loc[0, "samples/s"] == 1234
    assert pd.isna(table.loc[1, "samples/s"]) and pd.isna(table.loc[1, "share"])  # missing, not zero
    assert table.attrs == {"title": "Two strategies", "notes": ["a note " * 30]}


def test_the_text_has_title_table_and_wrapped_notes_with_a_dash_where_a_value_is_missing():
    title, body, notes = tables.text(_table()).split("\n\n")
    assert title == "Two strategies"
    assert body.splitlines() == ["name    samples/s  share note",
                                 "ddp          1234    0.5 fast",
                                 "horovod         -      - -"]  # words from the left, numbers from the right
    assert len(notes.splitlines()) == 2 and max(map(len, notes.splitlines())) <= tables.WIDTH
    assert notes.splitlines()[1].startswith("  note a")  # a continued note is indented


def test_pairs_of_names_make_two_header_rows():
    table = tables.titled([{("configuration", ""): "ZeRO-2", ("total MB", "measured"): "1.0-1.2",
                            ("total MB", "formula"): 1.0}])
    assert table.loc[0, ("total MB", "formula")] == 1.0
    assert [line.split() for line in tables.text(table).splitlines()] == [
        ["configuration", "total", "MB"], ["measured", "formula"], ["ZeRO-2", "1.0-1.2", "1.0"]]


def test_a_table_without_rows_prints_its_title_and_notes():
    assert tables.text(tables.titled([], "GPUs (merged): 0", ["CPU cores: 2"])) == "GPUs (merged): 0\n\nCPU cores: 2"


def test_outside_a_notebook_show_prints_the_text(capsys):
    tables.show(_table(), tables.titled([{"a": 1}]))
    assert capsys.readouterr().out == tables.text(_table()) + "\n\n" + "a\n1\n"


def test_in_a_notebook_show_displays_html_with_the_text_rows_as_plain_text(monkeypatch, capsys):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw: shown.append(bundle))
    tables.show(_table())
    title, body, _ = tables.text(_table()).split("\n\n")
    assert shown[0]["text/plain"] == body and "<td>horovod</td>" in shown[0]["text/html"]
    assert "<NA>" not in shown[0]["text/html"] and "None" not in shown[0]["text/html"]  # missing: "-"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == title and printed[1].startswith("a note")  # the notes, printed below the table


def test_milliseconds_rounds_to_the_digits_asked_and_keeps_none():
    from dtutor.tables import milliseconds

    assert milliseconds(0.0123456, 1) == 12.3 and milliseconds(0.0123456, 3) == 12.346
    assert milliseconds(None, 2) is None
