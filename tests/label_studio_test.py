"""`sync` against a real Label Studio server that the test starts on 127.0.0.1.

Two rounds annotated through Label Studio's API as an annotator would, with bal_jax's
predictions on the round-1 tasks; a bad annotation (unknown class) refused in one sentence
and imported once fixed; a process killed between upload and pull, an upload cut short and a
lost project record: no task is uploaded twice and every annotation arrives.
"""

import base64
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import PIL.Image
import pytest
from labeling_test import ROOT, quiet, write_digits

pytest.importorskip("label_studio")  # the server (requirements-dev.txt)
from label_studio_sdk.client import LabelStudio

from bal_jax.labeling import LabelingError, LabelingProject, ProjectConfig, formats, studio

TOKEN = "bal-jax-test-token-0123456789"
CONFIG = ProjectConfig(classes=tuple("0123456789"), per_round=10, rounds=2, cv_folds=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fresh Label Studio (own data folder, SQLite) on a free port. Yields a function that
    waits until it answers and returns its URL: its start (about 35 s, mostly database
    migrations) overlaps the test's own work."""
    data = tmp_path_factory.mktemp("label_studio")
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        # Nothing leaves the machine: no version check, error reports or analytics.
        "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
    }
    log = open(data / "server.log", "w")
    main = "import sys; from label_studio.server import main; sys.exit(main())"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", main, "start", "--no-browser"),
            *("--internal-host", "127.0.0.1", "--port", str(port)),
            *("--username", "annotator@example.com", "--password", "bal-jax-test"),
            *("--user-token", TOKEN, "--enable-legacy-api-token"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(data),
    )
    url = f"http://127.0.0.1:{port}"
    up = []

    def wait() -> str:
        deadline = time.monotonic() + 180
        while not up:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    up.append(r.status == 200)
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (data / "server.log").read_text()[-3000:]
                pytest.fail(f"Label Studio did not start:\n{text}")
            time.sleep(0.5)
        return url

    yield wait
    # Its data dir is thrown away: no clean shutdown needed (SIGINT took 15 s, then a kill).
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """60 digit PNGs and a file of their embeddings (8x8 pixels: `init --features=FILE`
    skips the patch features' k-means, which sync does not need)."""
    root = tmp_path_factory.mktemp("digits")
    truth = write_digits(str(root / "images"), 0, 60)
    ids = sorted(truth)
    emb = [np.asarray(PIL.Image.open(root / "images" / i).resize((8, 8))).ravel() for i in ids]
    np.savez(root / "emb.npz", ids=np.asarray(ids), embeddings=np.float32(emb) / 255)
    config = dataclasses.replace(CONFIG, features=str(root / "emb.npz"))
    return str(root / "images"), truth, config


def _tasks(client, ls_id):
    return list(client.tasks.list(project=ls_id, fields="all"))


def _choice(label):
    return [
        {
            "from_name": "choice",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def _annotate(client, tasks, truth, *, wrong=None):
    """The annotator: submits the true class of each task (`wrong`: {bal_id: label})."""
    out = {}
    for t in tasks:
        image = t.data["bal_id"]
        label = (wrong or {}).get(image, truth[image])
        out[image] = client.annotations.create(t.id, result=_choice(label), was_cancelled=False)
    return out


def test_two_rounds_through_label_studio(server, images, tmp_path):
    folder, truth, config = images
    project = LabelingProject.create(str(tmp_path / "p"), images=folder, config=config, log=quiet)
    project.next_round()
    server = server()
    client = LabelStudio(base_url=server, api_key=TOKEN)

    first = studio.sync(project, url=server, api_key=TOKEN)
    assert (first.created, first.uploaded, first.tasks, first.imported, first.pending) == (
        True,
        10,
        10,
        0,
        10,
    )
    ls_id = first.ls_project
    wanted = formats.label_studio_config(project.classes).strip()
    assert client.projects.get(ls_id).label_config.strip() == wanted
    tasks = _tasks(client, ls_id)
    picked = project.rounds()[0]["ids"]
    assert sorted(t.data["bal_id"] for t in tasks) == sorted(picked)
    for t in tasks:  # the image itself travels in the task: no file serving
        head, payload = t.data["image"].split(",", 1)
        assert head == "data:image/png;base64"
        with open(os.path.join(folder, t.data["bal_id"]), "rb") as f:
            assert base64.b64decode(payload) == f.read()
        assert not t.predictions  # round 0 is picked without a classifier

    # The annotator labels 9 images and skips one.
    skipped = tasks[0]
    _annotate(client, tasks[1:], truth)
    client.annotations.create(skipped.id, result=[], was_cancelled=True)
    second = studio.sync(project, url=server, api_key=TOKEN)
    assert (second.ls_project, second.uploaded, second.tasks) == (ls_id, 0, 10)
    assert (second.imported, second.pending) == (9, 1)
    labels = project.labels()
    assert labels == {t.data["bal_id"]: truth[t.data["bal_id"]] for t in tasks[1:]}
    entries = len(project.journal.entries())

    # Idempotent: a rerun uploads and imports nothing.
    again = LabelingProject.open(str(tmp_path / "p"), log=quiet)
    third = studio.sync(again, url=server, api_key=TOKEN)
    assert (third.ls_project, third.uploaded, third.tasks, third.imported) == (ls_id, 0, 10, 0)
    assert len(again.journal.entries()) == entries and len(_tasks(client, ls_id)) == 10

    _annotate(client, [skipped], truth)
    assert studio.sync(again, url=server, api_key=TOKEN).imported == 1

    # Round 1 carries the classifier's suggestion and confidence as the task's prediction.
    rnd = again.next_round()
    assert all(p.suggested is not None for p in rnd.picks)
    fourth = studio.sync(again, url=server, api_key=TOKEN)
    assert (fourth.uploaded, fourth.tasks, fourth.imported, fourth.pending) == (10, 20, 0, 10)
    new = [t for t in _tasks(client, ls_id) if t.data["bal_id"] in {p.id for p in rnd.picks}]
    by_id = {p.id: p for p in rnd.picks}
    assert len(new) == 10
    for t in new:
        (pred,) = t.predictions
        pick = by_id[t.data["bal_id"]]
        assert pred.result[0]["value"]["choices"] == [pick.suggested]
        assert pred.score == pytest.approx(pick.confidence, abs=1e-5)

    # A bad annotation (a class the project does not have) is refused; nothing is lost.
    bad = new[0].data["bal_id"]
    made = _annotate(client, new, truth, wrong={bad: "cat"})
    with pytest.raises(
        LabelingError, match=rf"unknown class\(es\) cat \(task {new[0].id}\).*nothing imported"
    ):
        studio.sync(again, url=server, api_key=TOKEN)
    assert len(again.journal.entries()) == entries + 1  # only the earlier imports
    assert len(_tasks(client, ls_id)) == 20
    client.annotations.update(made[bad].id, result=_choice(truth[bad]))
    fifth = studio.sync(again, url=server, api_key=TOKEN)
    assert (fifth.uploaded, fifth.imported, fifth.pending) == (0, 10, 0)
    assert again.labels() == {i: truth[i] for i in picked + [p.id for p in rnd.picks]}
    assert [r["pending"] for r in again.status(cv=False)["rounds"]] == [0, 0]


def test_kill_between_upload_and_pull_loses_and_duplicates_nothing(server, images, tmp_path):
    folder, truth, config = images
    workdir = str(tmp_path / "p")
    project = LabelingProject.create(workdir, images=folder, config=config, log=quiet)
    project.next_round()
    server = server()
    client = LabelStudio(base_url=server, api_key=TOKEN)
    with pytest.raises(LabelingError, match=r"cannot reach Label Studio at http://127.0.0.1:1 "):
        studio.sync(project, url="http://127.0.0.1:1/", api_key=TOKEN)
    with pytest.raises(LabelingError, match=rf"Label Studio at {server} refused the access token"):
        studio.sync(project, url=server, api_key="not-the-token")
    assert not os.path.exists(os.path.join(workdir, studio.RECORD))

    # The CLI, killed (SIGKILL) after its upload, before its pull.
    kill = (
        "import os, runpy, signal, sys\n"
        "from bal_jax.labeling import studio\n"
        "studio.pull = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"sys.argv = ['label', 'sync', '--workdir={workdir}', '--label_studio_url={server}']\n"
        "runpy.run_module('experiments.label', run_name='__main__')\n"
    )
    env = {**os.environ, studio.API_KEY_ENV: TOKEN}
    out = subprocess.run([sys.executable, "-c", kill], cwd=ROOT, env=env, capture_output=True)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-2000:]
    with open(os.path.join(workdir, studio.RECORD)) as f:
        ls_id = json.load(f)[server]["project"]
    tasks = _tasks(client, ls_id)
    assert len(tasks) == 10 and project.labels() == {}

    # Annotated meanwhile; the record of the project id is lost too (as if killed before
    # writing it): the rerun finds the project by its title, uploads nothing, pulls all.
    _annotate(client, tasks, truth)
    os.remove(os.path.join(workdir, studio.RECORD))
    rerun = studio.sync(LabelingProject.open(workdir, log=quiet), url=server, api_key=TOKEN)
    assert (rerun.ls_project, rerun.created, rerun.uploaded, rerun.tasks) == (ls_id, False, 0, 10)
    assert rerun.imported == 10 and len(_tasks(client, ls_id)) == 10
    marker = f"[bal_jax {project.state['project_id']}]"
    assert [p.id for p in client.projects.list(title=marker)] == [ls_id]

    # Round 1's upload cut short after its first batch: the rerun uploads only the rest.
    project = LabelingProject.open(workdir, log=quiet)
    project.next_round()
    real = client.projects.import_tasks
    calls = []

    def first_batch_only(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the kill
        calls.append(real(*args, **kwargs))

    client.projects.import_tasks = first_batch_only
    batch, studio.UPLOAD_BATCH = studio.UPLOAD_BATCH, 4
    try:
        with pytest.raises(KeyboardInterrupt):
            studio.sync(project, url=server, client=client)
    finally:
        studio.UPLOAD_BATCH = batch
        client.projects.import_tasks = real
    assert len(_tasks(client, ls_id)) == 14
    done = studio.sync(LabelingProject.open(workdir, log=quiet), url=server, api_key=TOKEN)
    assert (done.uploaded, done.tasks, done.pending) == (6, 20, 10)
    ids = [t.data["bal_id"] for t in _tasks(client, ls_id)]
    assert len(ids) == len(set(ids)) == 20


def test_missing_sdk_or_token_is_one_sentence(monkeypatch):
    with pytest.raises(LabelingError, match=f"set {studio.API_KEY_ENV} to your Label Studio"):
        studio.connect("http://127.0.0.1:1", None)
    monkeypatch.setitem(sys.modules, "label_studio_sdk.client", None)  # as if not installed
    with pytest.raises(LabelingError, match=r"sync needs the Label Studio SDK: pip install"):
        studio.connect("http://127.0.0.1:1", TOKEN)
