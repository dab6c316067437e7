"""Label Studio sync: a project's rounds as tasks on a Label Studio server, and the
annotations made there back into the project's journal.

    project = LabelingProject.open("runs/photos")
    result = studio.sync(project, url="http://localhost:8080",
                         api_key=os.environ["LABEL_STUDIO_API_KEY"])

Each run, through the official `label-studio-sdk` (an optional dependency):

1. Finds the project's Label Studio project: the id recorded for this URL in
   label_studio.json, else the one titled "... [bal_jax <project id>]" (a run killed before it
   recorded the id), else a new one with `formats.label_studio_config(classes)`. Its labeling
   config follows classes added by imports.
2. `upload`: every picked image that is neither labeled nor already a task there becomes a
   task with `data.bal_id` and `data.bal_project`, and from round 1 on the round's prediction
   (suggested class, classifier confidence as `score`) from rounds/NN/tasks.json. The server's
   own task list is the record of what was uploaded, so a run killed at any point uploads
   nothing twice when run again (only two syncs running at once could both upload a task).
3. `pull`: every task's finished (not skipped) annotations, parsed as a Label Studio export
   is (`formats.parse_label_studio`) and imported through `ProjectStore.import_parsed`, the
   validation and atomic journal write of the `import` command. A refused pull imports
   nothing and changes nothing on the server: fix the annotation there and sync again.

Images travel inside the tasks as base64 data URIs (`data:image/png;base64,...`): nothing
to serve and no storage to configure; the server's database keeps them. A file over
`MAX_INLINE_BYTES` is re-encoded as JPEG, at most `MAX_SIDE` pixels a side.
"""

from __future__ import annotations

import base64
import contextlib
import io
import mimetypes
import os
from collections.abc import Iterator
from typing import NamedTuple

import PIL.Image

from bal_jax.labeling import formats
from bal_jax.labeling.config import LabelingError
from bal_jax.labeling.project import LabelingProject
from bal_jax.labeling.store import read_json, write_json

__all__ = ["API_KEY_ENV", "SyncResult", "connect", "ls_project", "pull", "sync", "upload"]

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
INSTALL = "pip install -r requirements-labelstudio.txt (the label-studio-sdk package)"
RECORD = "label_studio.json"  # {server URL: {"project": Label Studio project id}}
UPLOAD_BATCH = 50  # tasks per import request
MAX_INLINE_BYTES = 1 << 20
MAX_SIDE = 1024
_TITLE_MAX = 50  # Label Studio's limit on project titles


class SyncResult(NamedTuple):
    """What a sync did: the Label Studio project (id, created now?), tasks uploaded now, the
    project's tasks on the server, labels newly imported, tasks still without annotation."""

    ls_project: int
    created: bool
    uploaded: int
    tasks: int
    imported: int
    pending: int


def connect(url: str, api_key: str | None):
    """A `label_studio_sdk` client for `url`, or one sentence on what is missing."""
    try:
        from label_studio_sdk.client import LabelStudio
    except ImportError:
        raise LabelingError(f"sync needs the Label Studio SDK: {INSTALL}") from None
    if not api_key:
        raise LabelingError(
            f"set {API_KEY_ENV} to your Label Studio access token (Account & Settings in "
            "Label Studio); it is never a flag nor stored in the project"
        )
    return LabelStudio(base_url=url.rstrip("/"), api_key=api_key)


@contextlib.contextmanager
def _server(url: str) -> Iterator[None]:
    """Turns the SDK's errors into one sentence naming the server."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as e:
        if e.status_code in (401, 403):
            raise LabelingError(
                f"Label Studio at {url} refused the access token in {API_KEY_ENV} "
                f"(HTTP {e.status_code})"
            ) from None
        raise LabelingError(
            f"Label Studio at {url} answered HTTP {e.status_code}: {str(e.body)[:300]}"
        ) from None
    except httpx.HTTPError as e:
        raise LabelingError(f"cannot reach Label Studio at {url} ({e})") from None


def _title(project: LabelingProject) -> tuple[str, str]:
    """(title, the marker in it that finds the project again)."""
    marker = f"[bal_jax {project.state['project_id']}]"
    name = os.path.basename(project.workdir.rstrip("/"))[: _TITLE_MAX - len(marker) - 1]
    return f"{name} {marker}".strip(), marker


def ls_project(project: LabelingProject, client, url: str) -> tuple[int, bool]:
    """The Label Studio project of `project` on `url`, created if there is none.

    Returns:
      (its id, whether it was created now). The id is recorded in label_studio.json.
    """
    url = url.rstrip("/")
    path = os.path.join(project.workdir, RECORD)
    record = read_json(path) if os.path.exists(path) else {}
    config = formats.label_studio_config(project.classes)
    title, marker = _title(project)
    found, created = None, False
    if url in record:
        from label_studio_sdk.core.api_error import ApiError

        try:
            found = client.projects.get(record[url]["project"])
        except ApiError as e:
            if e.status_code != 404:
                raise
            raise LabelingError(
                f"Label Studio project {record[url]['project']} recorded in {path} is gone from "
                f"{url}; remove its entry from {path} to start a new one"
            ) from None
    else:  # a project made by a run killed before it wrote the record is found by title
        same = [p.id for p in client.projects.list(title=marker) if marker in (p.title or "")]
        found = client.projects.get(min(same)) if same else None
    if found is None:
        found = client.projects.create(title=title, label_config=config)
        created = True
        project.log(f"created Label Studio project {found.id} ({title!r}) at {url}")
    else:
        _set_config(project, client, found.id, found.label_config)
    if record.get(url, {}).get("project") != found.id:
        write_json(path, {**record, url: {"project": found.id}})
    return found.id, created


def _set_config(project: LabelingProject, client, project_id: int, current: str | None) -> None:
    """Sets the labeling config to the project's classes where it differs."""
    config = formats.label_studio_config(project.classes)
    if (current or "").strip() != config.strip():
        client.projects.update(project_id, label_config=config)
        project.log(f"Label Studio project {project_id}: labeling config set to the classes")


def _server_tasks(client, project_id: int) -> list[dict]:
    """Every task of the Label Studio project with its data and annotations."""
    keep = ("id", "data", "annotations")
    return [
        {k: v for k, v in t.model_dump(mode="json").items() if k in keep}
        for t in client.tasks.list(project=project_id, fields="all", page_size=100)
    ]


def image_uri(path: str) -> str:
    """The image file as a data URI (re-encoded as JPEG when over `MAX_INLINE_BYTES`)."""
    with open(path, "rb") as f:
        raw = f.read()
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if len(raw) > MAX_INLINE_BYTES:
        with PIL.Image.open(io.BytesIO(raw)) as img:
            img = img.convert("RGB")
            img.thumbnail((MAX_SIDE, MAX_SIDE))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
        raw, mime = buf.getvalue(), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def _round_tasks(project: LabelingProject) -> list[dict]:
    """The tasks of every picked round (rounds/NN/tasks.json, with its predictions)."""
    out = []
    for rnd in project.rounds():
        out += read_json(
            os.path.join(project.workdir, "rounds", f"{rnd['round']:02d}", "tasks.json")
        )
    return out


def upload(project: LabelingProject, client, project_id: int) -> tuple[int, int]:
    """Uploads the picked images that are neither labeled nor tasks on the server yet.

    Returns:
      (tasks uploaded now, tasks of this project on the server).
    """
    pid = project.state["project_id"]
    on_server = {
        str(t["data"].get("bal_id"))
        for t in _server_tasks(client, project_id)
        if str(t["data"].get("bal_project")) == pid
    }
    labels, in_pool = project.labels(), set(project.pool.ids_N.tolist())
    todo, seen = [], set(on_server)
    for task in _round_tasks(project):
        image = task["data"]["bal_id"]
        if image in seen or image in labels or image not in in_pool:
            continue
        seen.add(image)
        path = os.path.join(project.state["images"], image)
        todo.append({**task, "data": {**task["data"], "image": image_uri(path)}})
    for start in range(0, len(todo), UPLOAD_BATCH):
        client.projects.import_tasks(project_id, request=todo[start : start + UPLOAD_BATCH])
    return len(todo), len(on_server) + len(todo)


def pull(
    project: LabelingProject, client, project_id: int, *, url: str, add_classes: bool = False
) -> tuple[int, int]:
    """Imports the finished annotations of the server's tasks (the `import` path).

    Returns:
      (labels newly written to the journal, tasks without a finished annotation).
    """
    name = f"Label Studio project {project_id} at {url.rstrip('/')}"
    try:
        parsed = formats.parse_label_studio(name, _server_tasks(client, project_id))
    except formats.LabelFileError as e:
        raise LabelingError(str(e)) from None
    if not parsed.rows:
        project.log(f"{name}: no finished annotation yet ({parsed.unannotated} task(s) to label)")
        return 0, parsed.unannotated
    entry = project.import_parsed(parsed, name=name, source=name, add_classes=add_classes)
    return (0 if entry is None else len(entry["labels"])), parsed.unannotated


def sync(
    project: LabelingProject,
    *,
    url: str,
    api_key: str | None = None,
    add_classes: bool = False,
    client=None,
) -> SyncResult:
    """The `sync` command: project, upload, pull (see the module docstring).

    Args:
      project: an opened project (`LabelingProject.open`).
      url: the Label Studio server, e.g. http://localhost:8080.
      api_key: its access token (the `sync` command reads it from LABEL_STUDIO_API_KEY).
      add_classes: annotations may name new classes (as `import --add_classes`).
      client: a `label_studio_sdk` client to use instead of connecting.

    Returns:
      What was done.
    """
    url = url.rstrip("/")
    client = client or connect(url, api_key)
    with _server(url):
        project_id, created = ls_project(project, client, url)
        uploaded, tasks = upload(project, client, project_id)
        if uploaded:
            project.log(f"uploaded {uploaded} task(s) to Label Studio project {project_id}")
        imported, pending = pull(project, client, project_id, url=url, add_classes=add_classes)
        if add_classes:  # the pull may have added classes
            _set_config(project, client, project_id, client.projects.get(project_id).label_config)
    return SyncResult(project_id, created, uploaded, tasks, imported, pending)
