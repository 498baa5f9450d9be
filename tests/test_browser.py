"""The course as a learner sees it: the notebooks in JupyterLab, in headless Chromium.

For each notebook in ``BROWSER_NOTEBOOKS`` (the launch notebooks, and the notebooks whose cells show widgets),
JupyterLab (a private server on a free port, with a token, ended at the end) shows:

- The committed notebook as it was executed (nbval re-runs its cells; nothing is re-run here), trusted as after
  a learner's own run, so its saved widget state is drawn. Checked in the rendered page: every code cell shows
  its run (``[n]:``), no error and no stderr box, every stored plot rendered as an image, every stored
  interactive widget rendered as its controls, and no widget left as text.
- With Run All, in a live kernel, only the cells that need one, in a copy of the notebook that holds them and
  the earlier cells defining the names they use, outputs cleared: each cell that shows an interactive widget
  (06's ZeRO memory estimator, 07's strategy guide) and the cell in ``LIVE`` (00: TensorFlow's start-up lines
  stay hidden; 01: a short in-process run; 02: a short launch, its bar relayed from the ranks). Checked: every
  cell run and none left running, no error and no stderr box, every interactive widget rendered as its
  controls, each run's progress bar rendered as a widget, and no widget left as text.

It needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install_browser.sh``; CI installs them) and
the ``selenium`` package; without them it skips and says why, so ``./course test`` does not need a browser.
``DTUTOR_BROWSER_NOTEBOOKS=all`` (or a comma-separated list of names) checks other notebooks.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROWSER_NOTEBOOKS = ["00_gpu_detection.ipynb", "01_data_parallel.ipynb", "02_distributed_data_parallel.ipynb",
                     "06_deepspeed_zero_fsdp.ipynb", "07_choosing_a_strategy.ipynb"]
LIVE = {  # the first cell holding this runs live too (besides every cell that shows an interactive widget)
    "00_gpu_detection.ipynb": 'import_quietly("tensorflow")',  # TensorFlow's start-up lines stay hidden
    "01_data_parallel.ipynb": 'result = launch.train(1, strategy="dataparallel"',  # an in-process run's bar
    "02_distributed_data_parallel.ipynb": "two_ranks = launch.train(2",  # the bar relayed from rank 0
}
LAUNCH = "launch.train("  # a cell that trains shows a progress bar
VIEW = "application/vnd.jupyter.widget-view+json"
NOTEBOOK_TIMEOUT_S, RENDER_TIMEOUT_S = 300, 60
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'  # errors render so too
PLOTS = '.jp-OutputArea-output img[src^="data:image/png"]'
IDLE = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'  # the notebook's kernel is not running anything
BARS = ".jp-OutputArea-output .jupyter-widgets .widget-hprogress"  # a tqdm bar, rendered as a widget
CONTROLS = ".jp-OutputArea-output .widget-vbox"  # an interactive widget's box of controls (interact, a VBox)
WIDGET_AS_TEXT = ("HBox(children=", "VBox(children=", "interactive(children=", "FloatProgress(value=",
                  "Loading widget...", "Error displaying widget")
# Each code cell in the page, in order, read in one call (hidden elements too: textContent, not text)
READ_PAGE = f"""return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell')).map(cell => ({{
  prompt: (cell.querySelector('.jp-InputArea-prompt') || {{}}).textContent || '',
  stderr: Array.from(cell.querySelectorAll('{STDERR}')).map(e => e.textContent),
  plots: cell.querySelectorAll('{PLOTS}').length, bars: cell.querySelectorAll('{BARS}').length,
  controls: cell.querySelectorAll('{CONTROLS}').length,
  text: Array.from(cell.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent).join(' ')}}));"""


def _browser() -> tuple[str, str]:
    """The Chromium and chromedriver executables, or a skip saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless browser here (Chromium and chromedriver): scripts/install_browser.sh installs them")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("the selenium package is not installed (pip install selenium, or ./course setup)")
    return chromium, driver


def _notebooks() -> list[str]:
    chosen = os.environ.get("DTUTOR_BROWSER_NOTEBOOKS", "")
    if chosen == "all":
        return sorted(path.name for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [name.strip() for name in chosen.split(",") if name.strip()] or BROWSER_NOTEBOOKS


def _code_cells(name: str) -> list[dict]:
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    return [cell for cell in cells if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _count(cell: dict, mime: str) -> int:
    return sum(mime in output.get("data", {}) for output in cell.get("outputs", []))


def _names(source: str) -> tuple[set[str], set[str]]:
    """The names a cell's code binds, and the names it uses without binding them."""
    from IPython.core.inputtransformer2 import TransformerManager

    bound, used = set(), set()
    for node in ast.walk(ast.parse(TransformerManager().transform_cell(source))):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler, ast.arg)):
            bound.add(getattr(node, "name", None) or getattr(node, "arg", ""))  # def, class, except ... as, arguments
    return bound, used - bound - set(dir(builtins))


def live_cells(name: str, cells: list[dict]) -> list[int]:
    """Which of ``cells`` (a notebook's code cells) run live: each that shows an interactive widget, the first
    that holds ``LIVE[name]``, and, for every name one of them uses, the last earlier cell that binds it."""
    names = [_names(_source(cell)) for cell in cells]
    wanted = [i for i, cell in enumerate(cells) if _count(cell, VIEW)]
    if name in LIVE:
        holding = [i for i, cell in enumerate(cells) if LIVE[name] in _source(cell)]
        assert holding, f"{name} has no cell with {LIVE[name]!r} any more: update LIVE"
        wanted.append(holding[0])
    chosen: set[int] = set()
    while wanted:
        index = wanted.pop()
        chosen.add(index)
        binders = ([j for j in range(index) if used in names[j][0]] for used in names[index][1])
        wanted += [found[-1] for found in binders if found and found[-1] not in chosen]
    return sorted(chosen)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on trusted copies of the notebooks; yields (base url, token, folder); ended afterwards."""
    _browser()
    import nbformat
    from nbformat.sign import NotebookNotary

    folder = tmp_path_factory.mktemp("lab")
    signatures = folder / ".signatures"  # this server's own trust database: a learner's is untouched
    signatures.mkdir()
    for name in _notebooks():
        shutil.copy(ROOT / "notebooks" / name, folder / name)
        NotebookNotary(data_dir=str(signatures)).sign(nbformat.read(folder / name, as_version=4))
    # every cell attached to the page (JupyterLab's default attaches cells as they scroll into view)
    settings = folder / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), "dtutor-browser-test"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the learner's bars: widgets
    env.update({"DTUTOR_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(folder / ".runtime"),
                "JUPYTERLAB_SETTINGS_DIR": str(folder / ".settings"),
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])})
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
               f"--NotebookNotary.data_dir={signatures}",
               f"--LabApp.workspaces_dir={folder / '.workspaces'}", "--LabApp.news_url=None"]
    if os.getuid() == 0:
        command.append("--allow-root")
    log = open(folder / "jupyter.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(base, token, server)
        yield base, token, folder
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_for_server(base: str, token: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "JupyterLab exited early"
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                json.load(response)
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"JupyterLab did not answer within {timeout:.0f} s")


def _end_sessions(base: str, token: str) -> None:
    """Shut down every session on the server, with its kernel (the next notebook starts its own)."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/sessions", headers=headers), timeout=10) as got:
        sessions = json.load(got)
    for session in sessions:
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}", method="DELETE", headers=headers)
        urllib.request.urlopen(request, timeout=60).close()


@pytest.fixture(scope="module")
def browser(lab):
    """Headless Chromium driven by chromedriver; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(browser, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=1).until(condition)
    except Exception as error:  # noqa: BLE001 - say what did not happen
        raise AssertionError(f"{what} did not happen within {timeout:.0f} s") from error


def _page(browser) -> list[dict]:
    """Each code cell in the page: prompt (``[3]:``, ``[*]:``, ``[ ]:``), stderr boxes, plots, bars, controls, text."""
    return browser.execute_script(READ_PAGE)


def _click(browser, selector: str, text: str, what: str) -> None:
    """Click the first element matching ``selector`` whose text starts with ``text``, once there is one."""
    from selenium.webdriver.common.by import By

    _wait(browser, lambda b: [item for item in b.find_elements(By.CSS_SELECTOR, selector)
                              if item.text.startswith(text)], 30, what)[0].click()


def _accept_dialogs(browser) -> None:
    """Accept a dialog JupyterLab may show (the kernel selection: "Select"), as a learner would."""
    from selenium.webdriver.common.by import By

    for button in browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept"):
        button.click()


def _open(browser, base: str, token: str, name: str) -> None:
    """Open ``name`` alone (``?reset``: a fresh workspace) and wait for its kernel."""
    from selenium.webdriver.common.by import By

    browser.get(f"{base}/lab/tree/{name}?reset&token={token}")
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120, f"{name} opening")
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, IDLE), 120, f"{name}'s kernel starting")
    time.sleep(2)
    _accept_dialogs(browser)


def _run_all(browser, name: str) -> None:
    """Choose Run > Run All Cells in the open notebook; wait until no cell is queued or running (``[*]``) and the
    kernel is idle, on 3 polls in a row (it is idle for an instant between two queued cells; an error unqueues
    the cells after it)."""
    from selenium.webdriver.common.by import By

    _click(browser, ".lm-MenuBar-item", "Run", "the menu bar showing")
    _click(browser, ".lm-Menu-item", "Run All Cells", "the Run menu opening")
    time.sleep(2)
    _accept_dialogs(browser)
    _wait(browser, lambda b: any(c["prompt"].strip("[]: ") for c in _page(b)), 60, f"{name} starting to run")
    time.sleep(3)  # the kernel's busy/idle status catches up with the queue
    polls = []

    def finished(browser) -> bool:
        prompts = [cell["prompt"] for cell in _page(browser)]
        idle = bool(browser.find_elements(By.CSS_SELECTOR, IDLE))
        polls.append(bool(prompts) and idle and not any("*" in prompt for prompt in prompts))
        return polls[-3:] == [True] * 3

    _wait(browser, finished, NOTEBOOK_TIMEOUT_S, f"{name} running to its end")


def _problems(page: list[dict], cells: list[dict], live: bool) -> list[str]:
    """What the rendered ``page`` shows wrong for ``cells`` (the notebook's code cells as committed; ``live``:
    the outputs are this run's, and each cell that trains shows a bar)."""
    if len(page) != len(cells):
        return [f"{len(page)} code cells in the page, {len(cells)} in the notebook"]
    found = []
    for i, (shown, cell) in enumerate(zip(page, cells, strict=True)):
        prompt, plots, views = shown["prompt"], _count(cell, "image/png"), _count(cell, VIEW)
        found += [f"code cell {i}: {problem}" for problem, wrong in [
            (f"not run, or still running ({prompt})", not prompt.strip("[]: *") or "*" in prompt),
            (f"error or stderr output: {shown['stderr'][:2]}", shown["stderr"]),
            (f"{shown['plots']} plot(s) drawn as images, {plots} stored", shown["plots"] < plots),
            (f"{shown['controls']} interactive widget(s) drawn as controls, {views} stored", shown["controls"] < views),
            ("a widget shown as text", any(text in shown["text"] for text in WIDGET_AS_TEXT)),
            ("trained, no progress bar drawn as a widget", live and LAUNCH in _source(cell) and not shown["bars"]),
        ] if wrong]
    return found


def _check(browser, name: str, cells: list[dict], live: bool, folder: Path) -> list[dict]:
    """Wait until the page shows ``cells`` as it should (outputs and widgets are drawn after the kernel is idle),
    then assert it, with a screenshot in ``folder``; return the page."""
    try:
        _wait(browser, lambda b: not _problems(_page(b), cells, live), RENDER_TIMEOUT_S, f"{name} drawn")
    except AssertionError:
        pass  # said below
    page = _page(browser)
    browser.save_screenshot(str(folder / f"{Path(name).stem}.png"))
    problems = _problems(page, cells, live)
    assert not problems, f"{name}: {problems[:4]} (screenshot in {folder})"
    return page


@pytest.mark.timeout(RENDER_TIMEOUT_S + 240)  # opening, the kernel, then the drawing
@pytest.mark.parametrize("name", _notebooks())
def test_the_committed_notebook_renders_as_executed(lab, browser, name):
    base, token, folder = lab
    started = time.monotonic()
    try:
        _open(browser, base, token, name)
        page = _check(browser, name, _code_cells(name), False, folder)
    finally:
        browser.get("about:blank")
        _end_sessions(base, token)
    print(f"{name}: {time.monotonic() - started:.0f} s, {sum(cell['plots'] for cell in page)} plot(s) drawn")


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S + RENDER_TIMEOUT_S + 240)  # opening, the kernel, the run, the drawing
@pytest.mark.parametrize("name", [name for name in _notebooks()
                                  if name in LIVE or any(_count(cell, VIEW) for cell in _code_cells(name))])
def test_the_cells_that_need_a_kernel_run_live(lab, browser, name):
    base, token, folder = lab
    started, code = time.monotonic(), _code_cells(name)
    cells = [code[i] for i in live_cells(name, code)]
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    notebook["metadata"].pop("widgets", None)  # only what this run draws
    notebook["cells"] = [{**cell, "outputs": [], "execution_count": None} for cell in cells]
    live = f"live-{name}"
    (folder / live).write_text(json.dumps(notebook, indent=1))
    try:
        _open(browser, base, token, live)
        _run_all(browser, live)
        _check(browser, live, cells, True, folder)
    finally:
        browser.get("about:blank")
        _end_sessions(base, token)
    print(f"{live}: {time.monotonic() - started:.0f} s for {len(cells)} cell(s)")
