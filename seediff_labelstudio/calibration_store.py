"""Durable per-project calibration state: SQLite in ``SEEDIFF_DATA_DIR`` (``calibration.sqlite``).

Two tables: ``observations`` (per project and task: what the backend proposed vs what the task's annotation
kept, from the annotation the backend last read back from Label Studio) and ``calibrations`` (per project: the
fitted :class:`seediff.calibrate.Calibration`, its digest and a revision that grows whenever the fit changes).
Every update is one ``BEGIN IMMEDIATE`` transaction (store the task's observations, refit from all of the
project's, store the result), so concurrent webhooks serialise and a crash leaves the previous state whole.
WAL journal: readers (``/predict``) never wait for a writer. Deleting the file resets every project;
:meth:`CalibrationStore.reset` resets one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from seediff.calibrate import Calibration, Observation

__all__ = ["CalibrationStore", "TaskEvidence", "Fitter", "STORE_NAME"]

STORE_NAME = "calibration.sqlite"
Fitter = Callable[[list[Observation], float | None, int], Calibration]  # (observations, default value, images)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    project INTEGER NOT NULL, task INTEGER NOT NULL, annotation INTEGER NOT NULL, stamp TEXT NOT NULL,
    basis TEXT NOT NULL, default_value REAL, body TEXT NOT NULL, PRIMARY KEY (project, task));
CREATE TABLE IF NOT EXISTS calibrations (
    project INTEGER PRIMARY KEY, revision INTEGER NOT NULL, digest TEXT NOT NULL, body TEXT NOT NULL,
    updated REAL NOT NULL, basis TEXT NOT NULL);
"""


@dataclass(frozen=True)
class TaskEvidence:
    """One task's observations, from one annotation (``stamp``: its updated_at, to skip unchanged re-reads);
    ``basis``: the model_version they were made under (observations of another model are not fitted on)."""

    task: int
    annotation: int
    stamp: str
    basis: str
    default_value: float | None
    observations: tuple[Observation, ...]


class CalibrationStore:
    """Per-project observations and calibrations in one SQLite file (thread-safe: a connection per call)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._tx() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; transactions are explicit)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue up front, never deadlock on upgrade)."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ---- reads --------------------------------------------------------------------------------------
    def get(self, project: int, basis: str | None = None) -> tuple[Calibration | None, int]:
        """The project's calibration and revision ((None, 0) if it has none, or none fitted under ``basis``: a
        calibration of another model or method never applies)."""
        row = self._connect().execute("SELECT body, revision, basis FROM calibrations WHERE project = ?",
                                      (int(project),)).fetchone()
        if row is None or (basis is not None and row[2] != basis):
            return None, 0
        return Calibration.from_dict(json.loads(row[0])), int(row[1])

    def stamp(self, project: int, task: int) -> tuple[int, str, str] | None:
        """(annotation, stamp, basis) of the evidence stored for a task, or None."""
        row = self._connect().execute("SELECT annotation, stamp, basis FROM observations WHERE project = ? AND task = ?",
                                      (int(project), int(task))).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def evidence(self, project: int) -> list[TaskEvidence]:
        """Every task's evidence stored for a project, by task id."""
        rows = self._connect().execute(
            "SELECT task, annotation, stamp, basis, default_value, body FROM observations WHERE project = ? "
            "ORDER BY task", (int(project),)).fetchall()
        return [TaskEvidence(int(t), int(a), s, b, d, tuple(Observation.from_dict(o) for o in json.loads(body)))
                for t, a, s, b, d, body in rows]

    def summary(self, project: int) -> dict:
        """What /calibration shows: revision, digest, tasks learned from, the fitted settings."""
        calibration, revision = self.get(project)
        tasks = self._connect().execute("SELECT COUNT(*) FROM observations WHERE project = ?",
                                        (int(project),)).fetchone()[0]
        return {"project": int(project), "revision": revision, "tasks": int(tasks),
                "digest": calibration.digest if calibration else None,
                "calibration": calibration.to_dict() if calibration else None}

    # ---- writes -------------------------------------------------------------------------------------
    def put(self, project: int, evidence: Sequence[TaskEvidence], fitter: Fitter, basis: str, *,
            replace_all: bool = False, drop_annotations: Sequence[int] = ()) -> tuple[Calibration | None, int]:
        """Store tasks' evidence (replacing what those tasks had; every task of the project with
        ``replace_all``; removing evidence from ``drop_annotations``) and refit from the project's evidence made
        under ``basis``, in one transaction. Returns the calibration and its revision (unchanged fit, same
        revision)."""
        project = int(project)
        with self._tx() as db:
            if replace_all:
                db.execute("DELETE FROM observations WHERE project = ?", (project,))
            for a in drop_annotations:
                db.execute("DELETE FROM observations WHERE project = ? AND annotation = ?", (project, int(a)))
            for e in evidence:
                db.execute("INSERT OR REPLACE INTO observations VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (project, int(e.task), int(e.annotation), e.stamp, e.basis, e.default_value,
                            json.dumps([o.to_dict() for o in e.observations])))
            rows = db.execute("SELECT default_value, body FROM observations WHERE project = ? AND basis = ?",
                              (project, basis)).fetchall()
            old = db.execute("SELECT digest, revision FROM calibrations WHERE project = ?", (project,)).fetchone()
            if not rows:
                db.execute("DELETE FROM calibrations WHERE project = ?", (project,))
                return None, (old[1] if old else 0)
            observations = [Observation.from_dict(o) for _, body in rows for o in json.loads(body)]
            calibration = fitter(observations, rows[0][0], len(rows))
            revision = int(old[1]) if old else 0
            if old is None or old[0] != calibration.digest:
                revision += 1
            db.execute("INSERT OR REPLACE INTO calibrations VALUES (?, ?, ?, ?, ?, ?)",
                       (project, revision, calibration.digest, json.dumps(calibration.to_dict()), time.time(), basis))
            return calibration, revision

    def reset(self, project: int) -> None:
        """Forget a project's evidence and calibration (its predictions go back to the model's defaults)."""
        with self._tx() as db:
            db.execute("DELETE FROM observations WHERE project = ?", (int(project),))
            db.execute("DELETE FROM calibrations WHERE project = ?", (int(project),))
