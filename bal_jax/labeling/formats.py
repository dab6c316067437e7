"""Label files in and out: CSV, Label Studio JSON / JSON_MIN, class-folder trees.

    rows = read_labels("round0_done.csv")      # LabelRows: (where, reference, label) per row
    write_to_label_csv(path, picks)            # id,path,label,suggested_label,confidence
    write_label_studio_tasks(path, picks, project_id=..., round_index=0)

Readers only parse; matching references to images and checking classes is the project's job,
so every row can be checked before anything is written. A reference is ("id", id),
("path", path) or ("file", path of a copy of the image, matched by content).
Label Studio tasks carry `data.bal_id` and `data.bal_project`, which its exports keep, so a
file exported from Label Studio is matched exactly and one from another project is refused.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
from collections.abc import Sequence
from typing import NamedTuple
from xml.sax.saxutils import quoteattr

from bal_jax.atomic import write_text
from bal_jax.labeling.pool import IMAGE_EXTENSIONS

__all__ = [
    "LS_FROM_NAME",
    "LabelFileError",
    "LabelRows",
    "Pick",
    "label_studio_config",
    "parse_label_studio",
    "read_labels",
    "write_label_studio_tasks",
    "write_to_label_csv",
]

# Names of the Label Studio controls the tasks' predictions refer to (label_studio_config).
LS_FROM_NAME, LS_TO_NAME = "choice", "image"
LS_IMAGE_PREFIX = "/data/local-files/?d="
_MIN_LABEL_KEYS = (LS_FROM_NAME, "label", "class")


class LabelFileError(ValueError):
    """A labels file that cannot be read as any supported format."""


class LabelRows(NamedTuple):
    """Parsed labels: `rows` of (where in the file, reference, label); `kind` of file;
    `projects`: project ids found in the file (Label Studio tasks written by a project);
    `unannotated`: Label Studio tasks without a (non-cancelled) annotation."""

    rows: list[tuple[str, tuple[str, str], str]]
    kind: str
    projects: set[str]
    unannotated: int = 0


class Pick(NamedTuple):
    """One image of a round: id, absolute path, suggested label and confidence (or None)."""

    id: str
    path: str
    suggested: str | None
    confidence: float | None


def read_labels(path: str) -> LabelRows:
    """Parses a CSV, a Label Studio JSON or JSON_MIN export, or a DIR/<class>/<image> tree.

    Args:
      path: the file or folder.

    Returns:
      The rows, in file order; labels are stripped strings (possibly empty: the caller
      reports them).
    """
    if os.path.isdir(path):
        return _read_folder(path)
    if not os.path.isfile(path):
        raise LabelFileError(f"labels file {path} does not exist")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:  # an image, a spreadsheet, a UTF-16 export...
        raise LabelFileError(
            f"{path} is not UTF-8 text, so not a labels file (a CSV or a Label Studio JSON "
            "export; save a spreadsheet as CSV UTF-8)"
        ) from None
    except OSError as e:
        raise LabelFileError(f"cannot read labels file {path} ({e.strerror or e})") from None
    if path.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelFileError(f"{path} is not valid JSON ({e})") from None
        return parse_label_studio(path, data)
    return _read_csv(path, text)


def _read_csv(path: str, text: str) -> LabelRows:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    ref = next((h for h in ("id", "path") if h in header), None)
    if "label" not in header or ref is None:
        raise LabelFileError(
            f"{path}: a labels CSV needs a header row naming the columns id,label or "
            f"path,label; its first row is {','.join(header) or '(empty)'}"
        )
    reader.fieldnames = header
    rows = []
    for n, row in enumerate(reader, start=2):
        label = (row["label"] or "").strip()
        rows.append((f"line {n}", (ref, (row.get(ref) or "").strip()), label))
    return LabelRows(rows, "csv", set())


def _read_folder(path: str) -> LabelRows:
    rows = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    file = os.path.join(dirpath, name)
                    rows.append((os.path.relpath(file, path), ("file", file), entry.name))
    if not rows:
        raise LabelFileError(f"labels folder {path} has no <class>/<image> files")
    return LabelRows(rows, "folder", set())


def _choice(result: Sequence[dict]) -> list[str]:
    return [
        c
        for r in result or ()
        if r.get("type") == "choices"
        for c in (r.get("value") or {}).get("choices", [])
    ]


def parse_label_studio(path: str, data) -> LabelRows:
    """Label Studio tasks (a JSON or JSON_MIN export, or tasks read from its API) as rows.

    Args:
      path: where they came from, for messages.
      data: the decoded JSON: a list of task dicts (or one task).

    Returns:
      One row per choice of each non-cancelled annotation, in task order.
    """
    tasks = data if isinstance(data, list) else [data]
    if not all(isinstance(t, dict) for t in tasks):
        raise LabelFileError(f"{path}: expected a Label Studio export (a JSON list of tasks)")
    rows, projects, unannotated = [], set(), 0
    full = any("data" in t or "annotations" in t for t in tasks)
    for n, task in enumerate(tasks):
        where = f"task {task.get('id', n)}"
        fields = task.get("data", {}) if full else task
        if not isinstance(fields, dict):
            raise LabelFileError(f"{path}: {where} has no data fields; not a Label Studio export")
        if fields.get("bal_project"):
            projects.add(str(fields["bal_project"]))
        ref = ("id", str(fields["bal_id"])) if fields.get("bal_id") else None
        if ref is None and fields.get("image"):
            ref = ("path", _strip_ls_prefix(str(fields["image"])))
        if ref is None:
            raise LabelFileError(f"{path}: {where} has neither data.bal_id nor data.image")
        if full:
            done = [a for a in task.get("annotations") or () if not a.get("was_cancelled")]
            choices = [c for a in done for c in _choice(a.get("result"))]
        else:
            key = next((k for k in _MIN_LABEL_KEYS if k in task), None)
            value = task.get(key) if key else None
            choices = [value] if isinstance(value, str) else list(value or [])
            if isinstance(value, dict):  # JSON_MIN writes {"choices": [...]} for multi-choice
                choices = list(value.get("choices", []))
        if not choices:
            unannotated += 1
        for c in choices:
            rows.append((where, ref, str(c).strip()))
    return LabelRows(rows, "label_studio" if full else "label_studio_min", projects, unannotated)


def _strip_ls_prefix(url: str) -> str:
    if url.startswith(LS_IMAGE_PREFIX):
        return "/" + urllib.parse.unquote(url[len(LS_IMAGE_PREFIX) :]).lstrip("/")
    return url


def write_to_label_csv(path: str, picks: Sequence[Pick]) -> None:
    """Writes a round's work list: id,path,label,suggested_label,confidence (label empty).

    The annotator fills the `label` column and imports the file as it is.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "label", "suggested_label", "confidence"])
    for p in picks:
        conf = "" if p.confidence is None else f"{p.confidence:.4f}"
        w.writerow([p.id, p.path, "", p.suggested or "", conf])
    write_text(path, buf.getvalue())


def write_label_studio_tasks(
    path: str, picks: Sequence[Pick], *, project_id: str, round_index: int
) -> None:
    """Writes a round as a Label Studio import file (JSON list of tasks).

    Each task's `data.image` points at the file through Label Studio's local-files route
    (start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/); from round 1 on a `choices` prediction carries
    the model's suggestion and its confidence as `score`, so annotators can sort by it.
    """
    tasks = []
    for p in picks:
        task = {
            "data": {
                "image": LS_IMAGE_PREFIX + p.path.lstrip("/"),
                "bal_id": p.id,
                "bal_project": project_id,
                "bal_round": round_index,
            }
        }
        if p.suggested is not None:
            task["predictions"] = [
                {
                    "model_version": f"bal_jax round {round_index}",
                    "score": round(float(p.confidence), 6),
                    "result": [
                        {
                            "from_name": LS_FROM_NAME,
                            "to_name": LS_TO_NAME,
                            "type": "choices",
                            "value": {"choices": [p.suggested]},
                        }
                    ],
                }
            ]
        tasks.append(task)
    write_text(path, json.dumps(tasks, indent=1) + "\n")


def label_studio_config(classes: Sequence[str]) -> str:
    """The Label Studio labeling config (XML) matching the tasks this module writes."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View>\n  <Image name="{LS_TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{LS_FROM_NAME}" toName="{LS_TO_NAME}" choice="single">\n'
        f"{choices}\n  </Choices>\n</View>\n"
    )
