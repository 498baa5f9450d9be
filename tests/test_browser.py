"""The course as a learner sees it: JupyterLab in headless Chromium, notebooks run with Run All.

For each notebook in ``BROWSER_NOTEBOOKS`` (a launch notebook, and the notebooks whose cells show widgets), a
copy is opened in JupyterLab (a private server on a free port, with a token, ended at the end), run with the
Run menu's "Run All Cells", and checked in the rendered page: no error and no stderr box, every plot rendered
as an image (at least as many as the committed notebook holds), every progress bar rendered as a widget (not
as text; a notebook that launches training must show one), every interactive widget rendered as its
controls, and every cell run, none left running.

It needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install_browser.sh``; CI installs them) and
the ``selenium`` package; without them it skips and says why, so ``./course test`` does not need a browser.
``DTUTOR_BROWSER_NOTEBOOKS=all`` (or a comma-separated list of names) runs other notebooks.
"""

from __future__ import annotations

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
# 00: TensorFlow's start-up lines stay hidden; 01: an in-process bar; 02: a launch with its relayed bar and plots
# 06, 07: interactive widgets (the ZeRO memory estimator, the strategy guide)
BROWSER_NOTEBOOKS = ["00_gpu_detection.ipynb", "01_data_parallel.ipynb", "02_distributed_data_parallel.ipynb",
                     "06_deepspeed_zero_fsdp.ipynb", "07_choosing_a_strategy.ipynb"]
NOTEBOOK_TIMEOUT_S = 600
CELL_PROMPT = ".jp-CodeCell .jp-InputArea-prompt"
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
PLOTS = '.jp-OutputArea-output img[src^="data:image/png"]'
IDLE = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'  # the notebook's kernel is not running anything
WIDGETS = ".jp-OutputArea-output .jupyter-widgets .widget-hprogress"  # a tqdm bar, rendered as a widget
CONTROLS = ".jp-OutputArea-output .widget-vbox"  # an interactive widget's box of controls (interact, a VBox)
WIDGET_AS_TEXT = ("HBox(children=", "FloatProgress(value=", "Loading widget...", "Error displaying widget")


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on copies of the notebooks; yields (base url, token, folder); ended afterwards."""
    _browser()
    folder = tmp_path_factory.mktemp("lab")
    for name in _notebooks():
        shutil.copy(ROOT / "notebooks" / name, folder / name)
    # every cell attached to the page (JupyterLab's default attaches cells as they scroll into view, and a cell
    # never shown keeps its "[ ]:" prompt, whatever its kernel ran)
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


def _prompts(browser) -> list[str]:
    """Every code cell's prompt (``[3]:``, ``[*]:``, ``[ ]:``), shown or not: JupyterLab keeps the cells scrolled
    out of view hidden, and a hidden element's ``text`` is empty, so read ``textContent``."""
    from selenium.webdriver.common.by import By

    elements = browser.find_elements(By.CSS_SELECTOR, CELL_PROMPT)
    return [element.get_attribute("textContent") or "" for element in elements]


class _Finished:
    """Run All has ended: the kernel is idle and no cell is running or queued (``[*]``), on ``polls`` polls in a
    row (the kernel is idle for an instant between two queued cells).

    An error ends it too: the cells after it are unqueued, and the test then reports the error.
    """

    def __init__(self, polls: int = 3):
        self.polls, self.seen = polls, 0

    def __call__(self, browser) -> bool:
        from selenium.webdriver.common.by import By

        prompts = _prompts(browser)
        idle = bool(browser.find_elements(By.CSS_SELECTOR, IDLE))
        self.seen = self.seen + 1 if prompts and idle and not any("*" in p for p in prompts) else 0
        return self.seen >= self.polls


def _accept_dialogs(browser) -> None:
    """Accept a dialog JupyterLab may show (the kernel selection: "Select"), as a learner would."""
    from selenium.webdriver.common.by import By

    for button in browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-Dialog-button.jp-mod-accept"):
        button.click()


def _run_all(browser, base: str, token: str, name: str) -> None:
    """Open ``name``, wait for its kernel, choose Run > Run All Cells, wait until no cell is queued or running."""
    from selenium.webdriver.common.by import By

    # ?reset: a fresh workspace, so only this notebook is open (the page holds no other notebook's cells)
    browser.get(f"{base}/lab/tree/{name}?reset&token={token}")
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120, f"{name} opening")
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, IDLE), 120, f"{name}'s kernel starting")
    time.sleep(2)
    _accept_dialogs(browser)
    menu = [item for item in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if item.text == "Run"]
    menu[0].click()
    _wait(browser, lambda b: [item for item in b.find_elements(By.CSS_SELECTOR, ".lm-Menu-item")
                              if item.text.startswith("Run All Cells")], 30, "the Run menu opening")[0].click()
    time.sleep(2)
    _accept_dialogs(browser)
    _wait(browser, lambda b: any("*" in prompt for prompt in _prompts(b)), 60, f"{name} starting to run")
    time.sleep(3)  # the kernel's busy/idle status catches up with the queue
    _wait(browser, _Finished(), NOTEBOOK_TIMEOUT_S, f"{name} running to its end")


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S + 240)  # opening, the kernel, then the run's own limit
@pytest.mark.parametrize("name", _notebooks())
def test_a_learner_runs_the_notebook_in_jupyterlab(lab, browser, name):
    from selenium.webdriver.common.by import By

    base, token, folder = lab
    started = time.monotonic()
    try:
        _run_all(browser, base, token, name)
    finally:
        browser.save_screenshot(str(folder / f"{Path(name).stem}.png"))
    texts = [element.get_attribute("textContent") for element in browser.find_elements(By.CSS_SELECTOR, STDERR)]
    assert not texts, f"{name}: error or stderr output: {texts[:3]} (screenshot in {folder})"
    unrun = [prompt for prompt in _prompts(browser) if not prompt.strip("[]: ")]
    assert not unrun, f"{name}: {len(unrun)} code cell(s) never ran (screenshot in {folder})"
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    stored = sum("image/png" in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))
    rendered = browser.find_elements(By.CSS_SELECTOR, PLOTS)
    assert len(rendered) >= stored, f"{name}: {len(rendered)} plot(s) rendered, {stored} in the committed notebook"
    outputs = " ".join(element.text for element in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea"))
    assert not [text for text in WIDGET_AS_TEXT if text in outputs], f"{name}: a widget shown as text"
    views = sum("application/vnd.jupyter.widget-view+json" in output.get("data", {})
                for cell in cells for output in cell.get("outputs", []))
    boxes = browser.find_elements(By.CSS_SELECTOR, CONTROLS)
    assert len(boxes) >= views, f"{name}: {len(boxes)} interactive widget(s) rendered, {views} in the notebook"
    if "launch.train(" in json.dumps(cells):
        assert browser.find_elements(By.CSS_SELECTOR, WIDGETS), f"{name}: no progress bar rendered as a widget"
    print(f"{name}: {time.monotonic() - started:.0f} s in the browser, {len(rendered)} plot(s)")
