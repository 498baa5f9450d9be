"""What a learner reads: the stored notebooks, the package's docstrings and the README.

- Measured figures appear only in outputs: markdown states theory, mechanisms and what to look for, so a
  number with a unit of time, size, rate or share, or a tiny float like 1.5e-8, may stand in markdown only
  inside a formula (``$...$``), a code span, or as one of the stated (not measured) values listed below.
- The source articles are called "the source articles" or by their short titles, never "the seed".
- Stored output lines fit in 150 characters, and no output carries an acceptance verdict ("target",
  "met"): pass/fail belongs in tests and benchmarks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WIDTH = 150

UNIT = r"(?:ms|s|µs|us|min|samples/s|[KMGT]i?B/s|[KMGT]i?B|kB|%|x|×)"
MEASURED_LOOKING = re.compile(
    rf"(?<![\w.^/-])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?\s?{UNIT}(?![\w/])"  # 1.82 ms, 4,239 samples/s, 0.4%
    r"|(?<![\w.])\d(?:\.\d+)?e-\d+\b"  # 1.5e-8
    r"|(?<![\w.])0\.\d+\b"  # 0.762
)
# Values the text states rather than measures: the course's settings, tolerances, the sizes a benchmark
# sweeps, published hardware figures. Listed here so that each one is a decision, not an accident.
STATED = {
    "02": ["25 MiB", "1 MiB"],  # torch DDP's documented bucket sizes
    "04": ["1e-5", "1e-2"],
    "05": ["1 KB", "1e-5", "1e-2", "10 ms", "20 ms", "30 ms", "60 ms"],  # the fixed-time stages' chosen durations
    "06": ["120 GB", "2 GB", "1.6e-3"],
    "07": ["4 KB", "64 MB", "25 MiB", "4 MiB", "70%", "1 GiB", "80 GB/s", "80 GB"],
}
ARTICLES_AS_SEED = re.compile(
    r"\bthe seed\b(?!\s*(?:[=(,+]|\d|value|of\b))|\bseed's\b|\bseed (?:notebook|article|split|code|table|claim)s?\b",
    re.IGNORECASE,
)
VERDICT = re.compile(r"\btarget\b|:\s*(?:not )?met\b|\bmet\)|\bnot met\b", re.IGNORECASE)
ARTICLE_TITLES = ("使用Python实现深度学习模型", "模型并行编程", "深度学习分布式训练方法汇总")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _output_texts(cell: dict) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        text = output.get("text") or output.get("data", {}).get("text/plain") or ""
        texts.append("".join(text) if isinstance(text, list) else text)
    return texts


def _prose(markdown: str) -> str:
    """``markdown`` without formulas, code spans, code blocks and links' targets."""
    markdown = re.sub(r"```.*?```", " ", markdown, flags=re.DOTALL)
    markdown = re.sub(r"\$\$.*?\$\$|\$[^$\n]+\$|`[^`\n]+`", " ", markdown, flags=re.DOTALL)
    return re.sub(r"\]\([^)]*\)", "]", markdown)


def measured_looking(markdown: str, stated: list[str]) -> list[str]:
    """The figures in ``markdown``'s prose that look measured and are not among ``stated``."""
    return [hit.group(0) for hit in MEASURED_LOOKING.finditer(_prose(markdown)) if hit.group(0) not in stated]


def test_the_scan_finds_measured_figures_and_passes_formulas_and_code():
    assert measured_looking("DDP reached about 0.9 of 2 T1, 4,239 samples/s in 1.82 ms; error 1.5e-8", []) == [
        "0.9", "4,239 samples/s", "1.82 ms", "1.5e-8"]
    assert measured_looking("the bubble is $\\frac{p-1}{m+p-1} = 20\\%$; see `bench(1e-8)`", []) == []
    assert measured_looking("tolerance 1e-5, 4 ranks, step 3", ["1e-5"]) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_markdown_states_no_measured_figure(path):
    stated = STATED.get(path.name[:2], [])
    found = {index: hits for index, cell in enumerate(_cells(path)) if cell["cell_type"] == "markdown"
             if (hits := measured_looking(_source(cell), stated))}
    assert not found, f"{path.name}: measured-looking figures in markdown (cell: figures): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_stored_outputs_fit_the_width_and_carry_no_acceptance_verdict(path):
    wide, verdicts = [], []
    for index, cell in enumerate(_cells(path)):
        for text in _output_texts(cell):
            wide += [(index, len(line)) for line in text.splitlines() if len(line) > WIDTH]
            verdicts += [(index, line.strip()[:80]) for line in text.splitlines() if VERDICT.search(line)]
    assert not wide, f"{path.name}: output lines over {WIDTH} characters (cell, length): {wide}"
    assert not verdicts, f"{path.name}: acceptance verdicts in outputs (cell, line): {verdicts}"


def _learner_texts() -> list[tuple[str, str]]:
    texts = [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted((ROOT / "dtutor").rglob("*.py"))]
    texts.append(("README.md", (ROOT / "README.md").read_text()))
    for path in NOTEBOOKS + sorted((ROOT / "notebooks" / "solutions").glob("*.py")):
        cells = _cells(path) if path.suffix == ".ipynb" else [{"source": path.read_text()}]
        texts.append((path.name, "\n".join(_source(c) + "\n".join(_output_texts(c)) for c in cells)))
    return texts


def test_the_source_articles_are_never_called_the_seed():
    found = [(name, hit.group(0)) for name, text in _learner_texts() for hit in ARTICLES_AS_SEED.finditer(text)]
    assert not found, f"'seed' used for the source articles: {found}"


@pytest.mark.parametrize("where", ["README.md", "notebooks/00_gpu_detection.ipynb"])
def test_the_readme_and_notebook_00_name_the_three_articles(where):
    text = (ROOT / where).read_text()
    text = "".join(_source(c) for c in json.loads(text)["cells"]) if where.endswith(".ipynb") else text
    assert [title for title in ARTICLE_TITLES if title not in text] == []
