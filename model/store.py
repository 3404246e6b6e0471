"""Model versions on disk: complete or absent, with an atomically moved `current` pointer.

Layout: reward models in ``<root>/<project>/<version>/`` (a `save_pretrained` folder plus metrics) with
``<root>/<project>/current`` (a one-line file naming the served version); generator versions beside them in
``<root>/<project>/generator/<version>/`` with their own ``generator/current`` (`VersionStore(root,
GENERATOR)`; no pointer: the configured generator is served). A version is written into a hidden temporary
folder and renamed into place, so a reader never sees a half-written one; the pointer is replaced with
`os.replace`, so a reader sees the old version or the new one, never neither.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

POINTER = "current"
REWARD, GENERATOR = "reward", "generator"  # kinds of versions; a generator's live in <project>/generator/
VERSION_RE = re.compile(r"^v(\d+)$")
STALE_TMP_SECONDS = 3600  # a temp folder this old belongs to a writer that died


@dataclass
class PendingVersion:
    path: Path               # where to write; renamed into place when the `with` block succeeds
    name: str | None = None  # the version's name, once it exists


class VersionStore:
    def __init__(self, root: str | os.PathLike, kind: str = REWARD):
        if kind not in (REWARD, GENERATOR):
            raise ValueError(f"unknown kind of version {kind!r}: use {REWARD!r} or {GENERATOR!r}")
        self.root = Path(root)
        self.kind = kind

    def project_dir(self, project: int | str) -> Path:
        folder = self.root / str(project)
        return folder if self.kind == REWARD else folder / GENERATOR

    def versions(self, project: int | str) -> list[str]:
        """Complete versions, oldest first."""
        folder = self.project_dir(project)
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in folder.iterdir()
                 if p.is_dir() and (m := VERSION_RE.match(p.name))]
        return [name for _, name in sorted(found)]

    def current(self, project: int | str) -> str | None:
        try:
            name = (self.project_dir(project) / POINTER).read_text().strip()
        except FileNotFoundError:
            return None
        return name if (self.project_dir(project) / name).is_dir() else None

    def path(self, project: int | str, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise ValueError(f"not a version name: {version!r} (expected v<number>)")
        return self.project_dir(project) / version

    def metrics(self, project: int | str, version: str, name: str = "metrics.json") -> dict:
        """A JSON record in a version's folder (a generator's: tuning.json, evaluation.json); {} if absent, and
        {} with a warning naming the file if it cannot be read (the version is still served)."""
        path = self.path(project, version) / name
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("cannot read %s (%s); going on without it", path, exc)
            return {}
        if not isinstance(record, dict):
            log.warning("cannot read %s (not a JSON object); going on without it", path)
            return {}
        return record

    @contextmanager
    def new_version(self, project: int | str) -> Iterator[PendingVersion]:
        """Yield an empty folder to write a version into; on success it becomes the next version.

        The caller then decides whether to `activate` it. If the body raises (or the process dies),
        only a hidden ``.tmp-*`` folder is left, which `versions` ignores and `prune` removes.
        """
        folder = self.project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        pending = PendingVersion(tmp)
        try:
            yield pending
            _fsync_tree(tmp)
            while True:  # another writer may take a number first: try the next one
                target = folder / f"v{self._next_number(project)}"
                try:
                    os.rename(tmp, target)  # fails if target exists (non-empty dir)
                    break
                except OSError:
                    if not target.exists():
                        raise
            pending.name = target.name
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def activate(self, project: int | str, version: str) -> None:
        """Point `current` at `version` (atomic rename of a pointer file)."""
        if not self.path(project, version).is_dir():
            raise FileNotFoundError(f"project {project} has no version {version}")
        folder = self.project_dir(project)
        fd, tmp = tempfile.mkstemp(prefix=".pointer-", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / POINTER)

    def deactivate(self, project: int | str) -> None:
        """Remove the pointer (atomically): no version is current, so the configured model is served."""
        try:
            os.unlink(self.project_dir(project) / POINTER)
        except FileNotFoundError:
            pass

    def prune(self, project: int | str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions (never the current one) and stale temp folders."""
        current = self.current(project)
        doomed = [v for v in self.versions(project)[:-keep or None] if v != current] if keep > 0 else []
        folder = self.project_dir(project)
        for v in doomed:
            shutil.rmtree(folder / v, ignore_errors=True)
        for tmp in folder.glob(".tmp-*") if folder.is_dir() else []:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        return doomed

    def _next_number(self, project: int | str) -> int:
        names = self.versions(project)
        return int(VERSION_RE.match(names[-1]).group(1)) + 1 if names else 1


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
