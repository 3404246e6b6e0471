"""What annotators see, in a real browser: headless Chromium driven by Selenium against a real Label Studio
1.23.2 and the backend's real `serve` and `worker` processes (tiny models built on the fly).

Pairwise: the Data Manager's "Prediction score" column, picked in its column menu and sorted ascending
through "Order by", shows this backend's scores (the current version's, read through the API; another
model's predictions on the same tasks are not counted), before any training (the zero-shot version) and
after a version is trained and refreshed; the most uncertain task's labelling page shows the backend's
pick pre-selected, and submitting it unchanged gives the backend that pick as the chosen answer.
Ranker: the labelling page shows the answers in the predicted order, and submitting it unchanged saves
that order.

PREANNOTATE=always: guesses from the first moment, so the zero-shot state is checked too, and a version
trained on a handful of annotations is shown whatever its held-out accuracy (under `trained`, a tiny random
model on three pairs may or may not reach the bar, which would make the test a coin flip). The answers are
written here rather than generated, so the screenshots are readable; generation has its own e2e tests.

Needs Chromium and chromedriver (Debian: apt-get install -y chromium chromium-driver; the test installs
them itself when it runs as root with apt-get). Screenshots go to a temporary folder the test prints, or to
$RLHF_SCREENSHOTS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.label_interface import LabelInterface
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from backend.predictions import kept_version
from backend.serving import ZERO_SHOT  # the version of the guesses made before any training
from conftest import ROOT
from harness import LS_TOKEN, backend_env, free_port, poll, start_backend, start_redis
from model.pairs import DEFAULT_FIELDS, pairs_from_tasks
from model.rankings import rankings_from_tasks
from tiny_models import tiny_causal_lm, tiny_encoder

pytestmark = pytest.mark.e2e

USER, PASSWORD = "e2e@example.com", "e2e-password-1"  # harness.start_label_studio's user
OTHER = "other-model"  # another model's predictions on the same tasks: Label Studio must not count them

PAIRS = [
    ("What is the capital of France?", "Paris is the capital of France.", "The capital of France is Lyon."),
    ("Write a haiku about the sea.", "Waves fold into foam / the tide keeps its old promise / salt on every stone.",
     "The sea is big and blue and wet."),
    ("How do I reverse a list in Python?", "Use items.reverse() in place, or items[::-1] for a reversed copy.",
     "Python lists cannot be reversed."),
    ("Explain photosynthesis to a child.", "Plants catch sunlight and use it to turn air and water into food.",
     "Photosynthesis is when animals sleep at night."),
    ("Give me three tips for better sleep.", "Keep a regular bedtime, avoid screens late, and keep the room cool.",
     "Drink coffee before bed."),
    ("What is 12 times 7?", "12 times 7 is 84.", "12 times 7 is 72."),
    ("Name a prime number between 10 and 20.", "13 is a prime number between 10 and 20.", "15 is prime."),
    ("Translate 'thank you' into Spanish.", "Gracias.", "Por favor."),
]
RANKED = [
    ("Suggest a name for a black cat.", ["Shadow", "Midnight", "Cat", "Mr. Whiskers the Third"]),
    ("How far is the Moon from the Earth?", ["About 384,000 km on average.", "Very far.",
                                             "Roughly 238,900 miles.", "It is closer than the Sun."]),
    ("What should I pack for a day hike?", ["Water, snacks, a map and a rain jacket.", "Nothing.",
                                            "Sunscreen and a hat.", "A first-aid kit and a charged phone."]),
    ("Why is the sky blue?", ["Air scatters blue light more than red light.", "Because it reflects the sea.",
                              "Rayleigh scattering by the gas molecules of the air.", "It just is."]),
]


# ---------------------------------------------------------------- processes


def _browser_binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """(Chromium, chromedriver), installed with apt-get when missing and this runs as root; else a skip.
    Asked first, so a skip starts nothing."""
    binary, driver = _browser_binaries()
    if not (binary and driver) and shutil.which("apt-get") and os.geteuid() == 0:
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True,
                           capture_output=True, timeout=600, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        except (subprocess.SubprocessError, OSError):
            pass
        binary, driver = _browser_binaries()
    if not (binary and driver):
        pytest.skip("needs Chromium and chromedriver (apt-get install -y chromium chromium-driver), "
                    f"not found{' and not installable here' if os.geteuid() == 0 else ''}: "
                    f"chromium={binary}, chromedriver={driver}")
    return binary, driver


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RLHF_SCREENSHOTS") or tmp_path_factory.mktemp("browser-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser(chromium, label_studio):
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="rlhf-chromium-")
    # Without the background-networking flags Chromium's own connections are refused on a closed network.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{label_studio}/user/login/")  # log in as a person does
        driver.find_element(By.NAME, "email").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        WebDriverWait(driver, 30).until(lambda d: "/user/login" not in d.current_url)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio):
    """One backend (serve + worker) for both projects, on a Redis of its own (nothing else flushes it)."""
    work = tmp_path_factory.mktemp("browser-backend")
    redis_port = free_port()
    redis_server = start_redis(redis_port, work)
    env = backend_env(
        LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=LS_TOKEN, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        QUEUE_PREFIX="rlhf-browser", MODEL_DIR=work / "models", GENERATOR_MODEL=tiny_causal_lm(work / "lm"),
        REWARD_BASE_MODEL=tiny_encoder(work / "rm"), MAX_NEW_TOKENS=12, CANDIDATES=4, PREANNOTATE="always",
        WORKERS=1, THREADS=4, JOB_RETRIES=1)
    server, worker, url = start_backend(env, work)
    yield {"url": url, "models": work / "models", "server": server, "worker": worker}
    worker.stop()
    server.stop()
    redis_server.stop()


def _logs(backend) -> str:
    return (f"---- server log ----\n{backend['server'].output()[-4000:]}\n"
            f"---- worker log ----\n{backend['worker'].output()[-8000:]}")


# ---------------------------------------------------------------- Label Studio through its API


class Api:
    def __init__(self, url: str):
        self.url, self.sdk = url, LabelStudio(base_url=url, api_key=LS_TOKEN)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {LS_TOKEN}"

    def get(self, path: str, **params):
        answer = self.session.get(f"{self.url}/api/{path}", params=params, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def post(self, path: str, body):
        answer = self.session.post(f"{self.url}/api/{path}", json=body, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def delete(self, path: str) -> None:
        self.session.delete(f"{self.url}/api/{path}", timeout=60).raise_for_status()

    def project(self, title: str, config: str, tasks: list[dict], backend_url: str) -> int:
        project = self.sdk.projects.create(title=title, label_config=config)
        self.sdk.ml.create(project=project.id, url=backend_url, title="rlhf-backend")
        self.sdk.projects.import_tasks(id=project.id, request=tasks)
        return project.id

    def tasks(self, project: int) -> list[dict]:
        return self.get("tasks/", project=project, fields="all", page_size=100)["tasks"]

    def predictions(self, project: int) -> list[dict]:
        return self.get("predictions/", project=project)

    def model_version(self, project: int) -> str:
        return self.get(f"projects/{project}")["model_version"]

    def exported(self, project: int, task: int) -> list[dict]:
        """The task as `rlhf-backend export` reads it (Label Studio's JSON export)."""
        return self.get(f"projects/{project}/export", exportType="JSON", **{"ids[]": task})


def wait_idle(backend_url: str, timeout: float = 180) -> None:
    """Until the backend's queues are empty: nothing will write predictions behind the test's back."""
    def idle():
        jobs = requests.get(f"{backend_url}/jobs", timeout=10).json()
        return all(not kind["queued"] and not kind["started"] for kind in jobs.values())
    poll(idle, timeout, interval=1, message="the backend's jobs all done")
    time.sleep(1)
    poll(idle, timeout, interval=1, message="the backend's jobs all done")


def current_version(backend_url: str, project: int) -> str | None:
    """The project's current reward-model version, as the backend serves it (None before any training)."""
    answer = requests.get(f"{backend_url}/versions", params={"project": project}, timeout=10).json()
    return answer["projects"][str(project)]["current"]


def ours(api: Api, project: int, version: str) -> dict[int, dict]:
    """{task id: this backend's prediction of `version`}; fails on a task with two."""
    found: dict[int, dict] = {}
    for p in api.predictions(project):
        if p["model_version"] == version:
            assert p["task"] not in found, f"task {p['task']} has two predictions of {version}"
            found[p["task"]] = p
    return found


def assert_valid_for_label_studio(config: str, predictions) -> None:
    """Each prediction passes the label-studio-sdk's validation against the label config (what Label Studio
    runs on imports when its prediction-validation flag is on)."""
    interface = LabelInterface(config)
    for p in predictions:
        errors = interface.validate_prediction({"result": p["result"], "score": p["score"]}, return_errors=True)
        assert not errors, (p, errors)
        assert 0.5 <= p["score"] <= 1.0, p


# ---------------------------------------------------------------- Label Studio in the browser


def _retry(action, what: str, timeout: float = 20):
    """Label Studio's React UI re-renders under the cursor: retry an action until it goes through."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            result = action()
            if result is not False:
                return result
        except WebDriverException as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"could not {what} in Label Studio's UI: {last!r}")


class DataManager:
    """A project's Data Manager (its task table) and labelling page, driven through the visible UI."""

    SORT = "//button[starts-with(@aria-label, 'Sort ')]"  # Order by's direction button
    ORDER = SORT + "/preceding-sibling::button"           # Order by's field menu
    COLUMNS = "//button[normalize-space()='Columns']"
    READ = """
      const heads = [...document.querySelectorAll('.lsf-table-head .lsf-th')].map(h => h.dataset.id || '');
      return [...document.querySelectorAll('[data-testid=table-row-wrapper]')]
        .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
        .map(row => {
          const cells = [...row.querySelectorAll('[data-testid=table-row] > .lsf-table__cell')];
          return Object.fromEntries(heads.map((h, i) => [h, cells[i] ? cells[i].innerText.trim() : null]));
        });"""

    def __init__(self, driver, ls_url: str, project: int, screenshots: Path):
        self.driver, self.url, self.project, self.screenshots = driver, ls_url, project, screenshots

    def open(self) -> None:
        self.driver.get(f"{self.url}/projects/{self.project}/data")
        WebDriverWait(self.driver, 60).until(lambda d: d.find_elements(By.XPATH, self.SORT))

    def _pick(self, opener: str, item: str, what: str) -> None:
        def pick():
            if not self.driver.find_elements(By.XPATH, item):
                self.driver.find_element(By.XPATH, opener).click()
                WebDriverWait(self.driver, 3).until(lambda d: d.find_elements(By.XPATH, item))
            element = self.driver.find_element(By.XPATH, item)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", element)
            self.driver.find_element(By.XPATH, item).click()
        _retry(pick, what)

    def show_column(self, title: str) -> None:
        """Tick the column in the Columns menu (left ticked if it is already)."""
        item = f"//label[normalize-space()='{title}']"
        box = f"{item}//input[@type='checkbox']"

        def ticked():
            if not self.driver.find_elements(By.XPATH, item):
                self.driver.find_element(By.XPATH, self.COLUMNS).click()
                WebDriverWait(self.driver, 3).until(lambda d: d.find_elements(By.XPATH, item))
            if self.driver.find_element(By.XPATH, box).get_attribute("aria-checked") == "true":
                return True
            element = self.driver.find_element(By.XPATH, item)
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", element)
            self.driver.find_element(By.XPATH, item).click()
            return False
        _retry(ticked, f"show the column {title!r}")
        self.close_menus()
        WebDriverWait(self.driver, 10).until(
            lambda d: d.find_elements(By.XPATH, f"//*[contains(@class, 'lsf-th-content')][normalize-space()='{title}']"))

    def order_ascending(self, title: str) -> None:
        """Order by the column, ascending (the direction button is labelled with what a click would do)."""
        if self.driver.find_element(By.XPATH, self.ORDER).text.strip() != title:
            self._pick(self.ORDER, f"//*[contains(@class, 'lsf-menu-dm__item')][normalize-space()='{title}']",
                       f"order by {title!r}")
        _retry(lambda: self.driver.find_element(By.XPATH, self.ORDER).text.strip() == title, f"order by {title!r}")
        if self.driver.find_element(By.XPATH, self.SORT).get_attribute("aria-label") == "Sort ascending":
            self.driver.find_element(By.XPATH, self.SORT).click()
        _retry(lambda: self.driver.find_element(By.XPATH, self.SORT).get_attribute("aria-label") == "Sort descending",
               "sort ascending")
        self.close_menus()

    VISIBLE = """
      const found = document.evaluate(arguments[0], document, null, XPathResult.ORDERED_NODE_SNAPSHOT_TYPE, null);
      for (let i = 0; i < found.snapshotLength; i++) if (found.snapshotItem(i).offsetParent !== null) return true;
      return false;"""

    def visible(self, xpath: str) -> bool:
        return self.driver.execute_script(self.VISIBLE, xpath)

    def close_menus(self) -> None:
        """Close an open Columns or Order by menu (each button toggles its own)."""
        for button, item in ((self.COLUMNS, "//label[normalize-space()='ID']"),
                             (self.ORDER, "//*[contains(@class, 'lsf-menu-dm__item')]")):
            def closed(button=button, item=item):
                if self.visible(item):
                    self.driver.find_element(By.XPATH, button).click()
                    time.sleep(0.5)
                return not self.visible(item)
            _retry(closed, "close a menu", timeout=10)

    def rows(self) -> list[dict]:
        return self.driver.execute_script(self.READ)

    def shot(self, name: str) -> Path:
        path = self.screenshots / name
        self.driver.save_screenshot(str(path))
        return path

    def open_task(self, task: int, ready_css: str) -> None:
        """Click the task's row, as an annotator opens it from the sorted table."""
        cell = (f"//*[@data-testid='table-row'][./div[contains(@class, 'lsf-table__cell')][1]"
                f"[normalize-space()='{task}']]/div[contains(@class, 'lsf-table__cell')][2]")
        _retry(lambda: self.driver.find_element(By.XPATH, cell).click(), f"open task {task}")
        WebDriverWait(self.driver, 60).until(lambda d: f"task={task}" in d.current_url and
                                             d.find_elements(By.CSS_SELECTOR, ready_css))

    def submit(self) -> None:
        _retry(lambda: self.driver.find_element(By.XPATH, "//button[normalize-space()='Submit']").click(), "submit")


def check_scores_in_table(dm: DataManager, expected: dict[int, float], tasks: set[int], state: str) -> list[dict]:
    """The rendered table, sorted by prediction score ascending: every task's score cell is its prediction's
    score of the project's model version (3 decimals, as Label Studio prints numbers), blank without one,
    and the rows come in ascending order of those scores, the blank ones last. Returns the rows."""
    def shown(rows) -> list[str | None]:
        return [r["tasks:predictions_score"] or None for r in rows]

    def wanted(rows) -> list[str | None]:
        return [f"{expected[int(r['tasks:id'])]:.3f}" if int(r["tasks:id"]) in expected else None for r in rows]

    def ascending(rows) -> bool:
        keys = [(0, expected[int(r["tasks:id"])]) if int(r["tasks:id"]) in expected else (1, 0) for r in rows]
        return keys == sorted(keys)

    def settled():  # the table reloads after each change: wait for the sorted one
        rows = dm.rows()
        ok = {int(r["tasks:id"]) for r in rows} == tasks and shown(rows) == wanted(rows) and ascending(rows)
        return rows if ok else None
    try:
        return poll(settled, 30, interval=1, message=f"{state}: this backend's scores, ascending")
    except TimeoutError:
        rows, path = dm.rows(), dm.shot(f"FAILED-{state}.png")
        raise AssertionError(
            f"{state}: the table shows (task, score) {[(r['tasks:id'], r['tasks:predictions_score']) for r in rows]}; "
            f"this backend's scores are {expected}; see {path}") from None


def zero_shot_on_every_task(api: Api, backend_url: str, project: int, config: str) -> tuple[list[int], dict]:
    """(task ids, {task: its zero-shot prediction}) once the backend wrote a guess on every task before any
    training (PREANNOTATE=always) and is idle; each guess passes the SDK's validation."""
    ids = sorted(t["id"] for t in api.tasks(project))
    poll(lambda: set(ours(api, project, ZERO_SHOT)) == set(ids), 120, interval=1,
         message="a zero-shot prediction on every task")
    wait_idle(backend_url)
    predictions = ours(api, project, ZERO_SHOT)
    assert_valid_for_label_studio(config, predictions.values())
    return ids, predictions


def see_order(dm: DataManager, task: int, order: list[str]) -> None:
    """Open the task's labelling page and see the answers listed in `order` (their ids), top to bottom."""
    dm.open_task(task, ".htx-ranker-item")
    read = "return [...document.querySelectorAll('.htx-ranker-item')].map(e => e.dataset.rankerId)"
    try:
        _retry(lambda: dm.driver.execute_script(read) == order, f"see the order {order}", timeout=15)
    except AssertionError:
        raise AssertionError(f"task {task}: the page lists {dm.driver.execute_script(read)}, the prediction "
                             f"says {order}; see {dm.shot(f'FAILED-ranker-{task}.png')}") from None
    titles = [e.text.split("\n")[0] for e in dm.driver.find_elements(By.CSS_SELECTOR, ".htx-ranker-item")]
    assert titles == [f"Answer {i.removeprefix('answer')}" for i in order]  # what the annotator reads


# ---------------------------------------------------------------- the tests


def test_pairwise_scores_sort_and_preselection_in_the_data_manager(chromium, label_studio, backend, browser,
                                                                    screenshots):
    api = Api(label_studio)
    config = (ROOT / "label_config.xml").read_text()
    project = api.project("browser pairwise", config,
                          [{"prompt": p, "answer1": a, "answer2": b} for p, a, b in PAIRS], backend["url"])
    dm = DataManager(browser, label_studio, project, screenshots)
    try:
        ids, zero_shot = zero_shot_on_every_task(api, backend["url"], project, config)

        # Another model's guesses on the same tasks: far-off scores and the other side.
        flip = {"left": "right", "right": "left"}
        api.post(f"projects/{project}/import/predictions", [
            {"task": task, "model_version": OTHER, "score": 0.01 if n % 2 else 0.99,
             "result": [{**p["result"][0], "value": {"selected": flip[p["result"][0]["value"]["selected"]]}}]}
            for n, (task, p) in enumerate(sorted(zero_shot.items()))])

        dm.open()
        dm.show_column("Prediction score")
        dm.order_ascending("Prediction score")
        check_scores_in_table(dm, {t: p["score"] for t, p in zero_shot.items()}, set(ids), ZERO_SHOT)
        dm.shot("pairwise-data-manager-zero-shot.png")
        assert api.model_version(project) == ZERO_SHOT  # why: Label Studio counts only this version's scores

        # Three annotations, Start Training; the refresh then writes the new version's guesses on every
        # unlabelled task, points the project at it and deletes the zero-shot ones there (not the other
        # model's; the labelled tasks keep theirs, renamed out of the zero-shot version).
        labelled = ids[:3]
        for task in labelled:
            api.sdk.annotations.create(id=task, result=[{"from_name": "comparison", "to_name": "comparison",
                                                         "type": "pairwise", "value": {"selected": "left"}}])
        api.sdk.ml.train(id=api.sdk.ml.list(project=project)[0].id)

        def refreshed():
            version = current_version(backend["url"], project)
            if not version:
                return None
            metrics = json.loads((backend["models"] / str(project) / version / "metrics.json").read_text())
            versions = {p["model_version"] for p in api.predictions(project)}
            return version if metrics["n_pairs"] == len(labelled) and \
                versions == {version, OTHER, kept_version(ZERO_SHOT)} and \
                set(ours(api, project, version)) >= set(ids) - set(labelled) else None
        version = poll(refreshed, 240, interval=1, message="a trained version's guesses on every unlabelled task")
        wait_idle(backend["url"])
        trained = ours(api, project, version)
        assert_valid_for_label_studio(config, trained.values())
        assert sum(p["model_version"] == OTHER for p in api.predictions(project)) == len(ids)

        dm.open()  # the tab keeps its column and order; checked again all the same
        dm.show_column("Prediction score")
        dm.order_ascending("Prediction score")
        rows = check_scores_in_table(dm, {t: p["score"] for t, p in trained.items()}, set(ids), version)
        dm.shot("pairwise-data-manager-sorted.png")
        assert api.model_version(project) == version

        # The most uncertain unlabelled task, the first such row: its labelling page pre-selects the guess.
        task = next(int(r["tasks:id"]) for r in rows if int(r["tasks:id"]) not in labelled)
        guess = trained[task]["result"][0]["value"]["selected"]
        dm.open_task(task, ".answer-box")
        selected = "background-color: rgb(39, 174, 96)"  # label_config.xml's selectionStyle, as the browser has it

        def shown():
            boxes = browser.find_elements(By.CSS_SELECTOR, ".answer-box > div")
            styles = [b.get_attribute("style") or "" for b in boxes]
            return styles if len(boxes) == 2 and any(selected in s for s in styles) else None
        styles = _retry(lambda: shown() or False, "see a pre-selected answer")
        side = ["left", "right"][[selected in s for s in styles].index(True)]
        boxes = browser.find_elements(By.CSS_SELECTOR, ".answer-box")
        assert sum(selected in s for s in styles) == 1 and side == guess, (styles, guess)
        assert boxes[0].text.strip() == PAIRS[ids.index(task)][1] and boxes[1].text.strip() == PAIRS[ids.index(task)][2]
        dm.shot("pairwise-labelling-preselected.png")

        # Accept it as it is.
        dm.submit()
        exported = poll(lambda: [t for t in api.exported(project, task) if t["id"] == task and t["annotations"]],
                        60, interval=1, message="the submitted annotation in Label Studio")
        annotation = exported[0]["annotations"][0]
        assert annotation["parent_prediction"] == trained[task]["id"]  # it started from our guess
        (pair,) = pairs_from_tasks(exported, DEFAULT_FIELDS)
        question, left, right = PAIRS[ids.index(task)]
        assert pair.meta["chosen_side"] == guess and pair.prompt == question
        assert (pair.chosen, pair.rejected) == ((left, right) if guess == "left" else (right, left))

        # The backend's own reading: the annotation event retrains on one more pair.
        def retrained():
            current = requests.get(f"{backend['url']}/versions", params={"project": project}).json()
            current = current["projects"][str(project)]["current"]
            metrics = json.loads((backend["models"] / str(project) / current / "metrics.json").read_text())
            return metrics["n_pairs"] == len(labelled) + 1
        poll(retrained, 120, interval=1, message="a version trained on the submitted annotation too")

        # Its refresh deleted the older version's guesses, but not the one this annotation started from: that
        # is renamed out of the version, and the annotation still links to it.
        wait_idle(backend["url"])
        (after,) = [t for t in api.exported(project, task) if t["id"] == task]
        assert after["annotations"][0]["parent_prediction"] == trained[task]["id"]
        kept = [p["model_version"] for p in api.predictions(project) if p["id"] == trained[task]["id"]]
        assert kept == [kept_version(version)]
        assert version not in {p["model_version"] for p in api.predictions(project)}
    except BaseException:
        print(_logs(backend))
        raise


def test_ranker_order_prefilled_on_the_labelling_page(chromium, label_studio, backend, browser, screenshots):
    api = Api(label_studio)
    config = (ROOT / "label_config_ranker.xml").read_text()
    tasks = [{"prompt": prompt, "answers": [{"id": f"answer{n}", "title": f"Answer {n}", "body": body}
                                             for n, body in enumerate(bodies, 1)]} for prompt, bodies in RANKED]
    project = api.project("browser ranker", config, tasks, backend["url"])
    dm = DataManager(browser, label_studio, project, screenshots)
    try:
        ids, predicted = zero_shot_on_every_task(api, backend["url"], project, config)
        orders = {t: p["result"][0]["value"]["ranker"]["rank"] for t, p in predicted.items()}
        data_order = [f"answer{n}" for n in range(1, 5)]
        # Tasks whose predicted order is not the data's, so a page can only show it by pre-filling it (the
        # tiny model is seeded: the same orders every run, all four unlike the data's).
        task, other = [t for t in ids if orders[t] != data_order][:2]

        # A task without any prediction yet (its own deleted before anything opened it): opening it makes
        # Label Studio ask /predict; the answer, stored by Label Studio, is what the page shows.
        api.delete(f"predictions/{predicted[other]['id']}")
        dm.open()
        dm.open_task(other, ".htx-ranker-item")

        def asked():
            stored = api.get("predictions/", task=other)
            if not stored:  # Label Studio skips /predict when the backend's /health misses its 1 s: ask again
                browser.refresh()
            return stored
        (stored,) = poll(asked, 60, interval=5, message=f"Label Studio's /predict answer stored for task {other}")
        assert stored["model_version"] == ZERO_SHOT and stored["id"] != predicted[other]["id"], stored
        assert stored["result"][0]["value"]["ranker"]["rank"] == orders[other]
        assert_valid_for_label_studio(config, [stored])
        dm.open()
        see_order(dm, other, orders[other])
        dm.shot("ranker-labelling-from-predict.png")

        # The bulk-written prediction of another task, pre-filled; submitted unchanged.
        dm.open()
        see_order(dm, task, orders[task])
        dm.shot("ranker-labelling-prefilled.png")
        dm.submit()
        exported = poll(lambda: [t for t in api.exported(project, task) if t["id"] == task and t["annotations"]],
                        60, interval=1, message="the submitted ranking in Label Studio")
        annotation = exported[0]["annotations"][0]
        assert annotation["result"][0]["value"]["ranker"]["rank"] == orders[task]
        assert annotation["parent_prediction"] == predicted[task]["id"]
        (ranking,) = rankings_from_tasks(exported)  # what training reads: the order, started from our guess
        assert list(ranking.order) == orders[task]
        assert ranking.meta["displayed_from"] == "prediction" and ranking.meta["unchanged_order"] is True
    except BaseException:
        print(_logs(backend))
        raise
