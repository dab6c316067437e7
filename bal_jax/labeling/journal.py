"""The label journal: every label ever imported, append-only, one JSON line per import.

    journal = Journal(path)
    entry = journal.append({"a.jpg": "cat"}, source="round0.csv", hashes={"a.jpg": "9f2..."})
    journal.labels()        # {"a.jpg": "cat", ...}: the latest label of every image

An import is written by copying the journal to a temporary file, adding the new line, syncing
it to disk and renaming it over the journal, so a kill at any point leaves either the old
journal or the new one: an import is all-or-nothing and an earlier label is never lost.
Lines are never edited; a later label for the same image supersedes the earlier one.
"""

from __future__ import annotations

import json
import os
import time

from bal_jax.atomic import atomic_path

__all__ = ["Journal"]


class Journal:
    """Append-only label log of a project (see the module docstring).

    Args:
      path: the journal file (created on the first append).
    """

    def __init__(self, path: str):
        self.path = path

    def entries(self) -> list[dict]:
        """All imports in order: dicts with `seq`, `source`, `time`, `labels` {id: label}."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def labels(self) -> dict[str, str]:
        """The latest label of every image ever labeled (removed images included)."""
        out: dict[str, str] = {}
        for entry in self.entries():
            out.update(entry["labels"])
        return out

    def append(
        self,
        labels: dict[str, str],
        *,
        source: str,
        hashes: dict[str, str] | None = None,
        extra: dict | None = None,
    ) -> dict | None:
        """Adds one import atomically, leaving out labels that are already current.

        Args:
          labels: {image id: class name}, already validated.
          source: where they came from (file name), for the record.
          hashes: content hash of each labeled image, to notice a file replaced later.
          extra: more fields of the entry (e.g. `new_classes`); empty values are left out.

        Returns:
          The entry written, or None when every label was already in the journal (a
          re-import of the same file changes nothing).
        """
        current = self.labels()
        new = {i: c for i, c in sorted(labels.items()) if current.get(i) != c}
        if not new:
            return None
        entries = self.entries()
        entry = {
            "seq": len(entries),
            "source": source,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "labels": new,
            "relabeled": sorted(i for i in new if i in current),
        }
        entry.update({k: v for k, v in (extra or {}).items() if v})
        if hashes:
            entry["hashes"] = {i: hashes[i] for i in new if i in hashes}
        with atomic_path(self.path, sync=True) as tmp, open(tmp, "w") as out:
            if os.path.exists(self.path):
                with open(self.path) as old:
                    out.write(old.read())
            out.write(json.dumps(entry, sort_keys=True) + "\n")
        return entry
