"""The MLflow UI in a real browser: the study's trials on the experiment page and side by side on
the run-comparison page, and the report plots in the artifact viewer.

Starts ``mlflow ui`` on 127.0.0.1 against a store a small study wrote and drives Debian's
headless ``chromium`` through its ``chromedriver`` (selenium; nothing is downloaded at run
time). Screenshots land in this test's output folder (``HPO_SCREENSHOTS=DIR`` copies them
there too). Skipped when chromium, chromedriver or selenium is not installed.
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
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.data import load_dataset
from hpo.report import write_report
from hpo.tracking import optuna_storage_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

SPEC = """
name: ui-iris
data: {dataset: iris}
model: mlp
search: {sampler: random, n_trials: 4, seed: 1}
cv: {folds: 2}
params:
  lr: {low: 1.0e-3, high: 1.0e-1, log: true}
  width: [8, 16]
  optimizer: [adam, sgd]
  epochs: 2
"""

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """TERM the server's process group, KILL it after a few seconds (uvicorn workers outlive a TERM to the parent)."""
    if proc.poll() is not None:
        return
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=4)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go (printed at the end of the module)."""
    folder = tmp_path_factory.mktemp("ui_screenshots")
    yield folder
    extra = os.environ.get("HPO_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        for f in folder.glob("*.png"):
            shutil.copy2(f, Path(extra) / f.name)
    print(f"\nMLflow UI screenshots: {folder}" + (f" (copied to {extra})" if extra else ""))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow ui`` on 127.0.0.1 and a free port, started on an empty store so that it boots
    while the study runs; stopped (its whole process group) at the end of the module."""
    tmp = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    (tmp / "mlruns").mkdir()
    MlflowClient(store).search_experiments()  # create the schema here, not in two processes at once
    port = _free_port()
    log = open(tmp / "mlflow-ui.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"tmp": tmp, "store": store, "base": f"http://127.0.0.1:{port}", "proc": proc}
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def study(server):
    """A 4-trial iris study (with its report) in the server's store."""
    tmp, store = server["tmp"], server["store"]
    (tmp / "spec.yaml").write_text(SPEC)
    result = hpo.run(tmp / "spec.yaml", tracking_uri=store)
    client = MlflowClient(store)
    write_report(optuna.load_study(study_name="ui-iris", storage=optuna_storage_for(store)), client,
                 result.parent_run_id, model=hpo.load_model(result.parent_run_id, tracking_uri=store),
                 dataset=load_dataset("iris", seed=1), metric="accuracy", task="classification")
    children = [r for r in client.search_runs([result.experiment_id]) if r.data.tags.get("hpo.role") == "trial"]
    assert len(children) == 4
    return {"store": store, "result": result, "children": children}


@pytest.fixture(scope="module")
def ui(server, study):
    """The base URL once the server answers /health."""
    base, proc = server["base"], server["proc"]
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return base
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mlflow ui did not answer on {base}: {(server['tmp'] / 'mlflow-ui.log').read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium through its chromedriver."""
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, xpath: str, timeout: float = 60, clickable: bool = False):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    cond = ec.element_to_be_clickable if clickable else ec.presence_of_element_located
    return WebDriverWait(driver, timeout).until(cond((By.XPATH, xpath)))


def _close_assistant(driver) -> None:
    """Close MLflow's assistant side panel if it is open (only so the screenshots show more of the page)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        try:
            button.click()
        except Exception:
            pass


def test_experiment_page_lists_the_trials(ui, study, browser, shots):
    from selenium.webdriver.common.by import By

    result, children = study["result"], study["children"]
    browser.get(f"{ui}/#/experiments/{result.experiment_id}/runs")
    parent = f"//a[contains(@href, '/runs/{result.parent_run_id}')]"
    toggle = f"{parent}/ancestor::span[contains(@class, 'ag-cell-value')]//button"
    first_child = f"//a[contains(@href, '/runs/{children[0].info.run_id}')]"
    _wait(browser, toggle, clickable=True)
    for _ in range(4):  # the trials are nested under the study's parent run: expand it
        if browser.find_elements(By.XPATH, first_child):
            break
        try:  # the grid may re-render under the click while its data arrives; look again and retry
            browser.find_element(By.XPATH, toggle).click()
            _wait(browser, first_child, timeout=10)
        except Exception:
            pass
    for child in children:
        link = _wait(browser, f"//a[contains(@href, '/runs/{child.info.run_id}')]")
        assert link.text == child.info.run_name  # e.g. "trial-002 lr=0.0031 width=16 optimizer=adam"
        for name in ("lr", "width", "optimizer"):
            assert f"{name}=" in link.text
    _close_assistant(browser)
    try:  # widen the Run Name column so the screenshot shows the parameters in the names
        from selenium.webdriver.common.action_chains import ActionChains

        handle = browser.find_element(By.CSS_SELECTOR, ".ag-header-cell[col-id*='Run Name'] .ag-header-cell-resize")
        ActionChains(browser).click_and_hold(handle).move_by_offset(120, 0).move_by_offset(120, 0).release().perform()
    except Exception:
        pass
    time.sleep(1)
    browser.save_screenshot(str(shots / "1_experiment_runs.png"))
    assert "ui-iris" in browser.page_source


def test_compare_page_shows_the_trials_and_their_parameters(ui, study, browser, shots):
    result, children = study["result"], study["children"]
    ids = [c.info.run_id for c in children]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([result.experiment_id])})
    browser.get(f"{ui}/#/compare-runs?{query}")
    _wait(browser, f"//*[contains(text(), 'Comparing {len(ids)} Runs')]")
    for child in children:
        _wait(browser, f"//*[contains(text(), '{child.info.run_name}')]")
    page = browser.page_source
    for child in children:
        for key in ("lr", "width", "optimizer", "batch_size"):
            assert f">{key}<" in page, key
            assert child.data.params[key] in page, (key, child.data.params[key])
        assert f"{child.data.metrics['cv_accuracy_mean']:.3f}".rstrip("0") in page
    _close_assistant(browser)
    _wait(browser, "//*[contains(@class, 'parcoords')]", timeout=30)  # MLflow's own parallel coordinates
    time.sleep(1)
    browser.save_screenshot(str(shots / "2_compare_runs.png"))
    params = _wait(browser, "//*[normalize-space(text())='Parameters']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", params)
    time.sleep(1)
    browser.save_screenshot(str(shots / "3_compare_runs_parameters.png"))


def test_report_plots_open_in_the_artifact_viewer(ui, study, browser, shots):
    from selenium.webdriver.common.by import By

    result = study["result"]
    browser.get("about:blank")
    browser.get(f"{ui}/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
                "/artifacts/report/intermediate_values.html")
    frame = _wait(browser, "//iframe[contains(@class, 'mlflow-html-iframe')]")
    browser.switch_to.frame(frame)
    try:  # plotly.js is embedded in the file, so the plot renders with no network at all
        _wait(browser, "//*[contains(@class, 'main-svg')]", timeout=30)
        assert browser.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")
    finally:
        browser.switch_to.default_content()
    _close_assistant(browser)
    time.sleep(1)
    browser.save_screenshot(str(shots / "4_report_learning_curves.png"))
    for name in ("confusion_matrix.png", "param_importances.png", "parallel_coordinate.html"):
        _wait(browser, f"//*[normalize-space(text())='{name}']")
