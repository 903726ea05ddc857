"""``seediff convert ls2coco`` / ``seediff convert coco2ls``: Label Studio exports ↔ COCO files.

Registered on the CLI by :mod:`seediff.cli` (which turns ValueError into one ``error: …`` line and exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["ls2coco", "coco2ls", "LS2COCO_EPILOG", "COCO2LS_EPILOG"]

LS2COCO_EPILOG = "Example:  seediff convert ls2coco export.json --config config.xml --out coco.json"
COCO2LS_EPILOG = "Example:  seediff convert coco2ls coco.json --config config.xml --out tasks.json"


def _read_text(path: Path | None) -> str | None:
    """A file's text, or None without a path."""
    return None if path is None else Path(path).read_text(encoding="utf-8")


def _warn_issues(issues) -> None:
    """One warning line on stderr per conversion issue."""
    for issue in issues:
        typer.echo(f"warning: {issue}", err=True)


def _nothing_converted(export: Path, source: str) -> str:
    """Why an export gave no COCO objects, with the --from that would convert something (for the error line)."""
    tasks = json.loads(Path(export).read_text(encoding="utf-8"))
    tasks = [tasks] if isinstance(tasks, dict) else tasks if isinstance(tasks, list) else []
    have = {key: sum(1 for t in tasks if isinstance(t, dict) and t.get(key)) for key in ("annotations", "predictions")}
    other = "predictions" if source == "annotations" else "annotations"
    hint = f"; {have[other]} have {other}: add --from {other}" if have[other] else ""
    return (f"nothing to convert: no task of {export} has usable {source} ({have[source]} of {len(tasks)} have "
            f"any{hint}); nothing written")


def ls2coco(
    export: Path = typer.Argument(..., help="Label Studio JSON export (list of tasks)."),
    out: Path = typer.Option(..., "--out", help="COCO file to write."),
    config: Optional[Path] = typer.Option(None, "--config", help="Labeling config XML (fixes category ids)."),
    keep: str = typer.Option("latest", "--keep", help="latest or all annotations per task."),
    segmentation: str = typer.Option("auto", "--segmentation", help="auto, polygons or rle."),
    source: str = typer.Option("annotations", "--from",
                               help="annotations (what annotators saved) or predictions (e.g. seediff's proposals)."),
) -> None:
    """Label Studio export → COCO; skipped regions are listed as warnings; an export with nothing to convert
    is an error (exit 2), not an empty file."""
    from .coco import write_coco
    from .jobs.store import writing
    from .lsexport import ls_to_coco

    if source not in ("annotations", "predictions"):
        raise ValueError(f"--from must be annotations or predictions, got {source!r}")
    dataset, issues = ls_to_coco(str(export), config=_read_text(config), keep=keep, segmentation=segmentation,
                                 source=source)
    _warn_issues(issues)
    if not dataset["images"]:
        raise ValueError(_nothing_converted(export, source))
    if not dataset["annotations"]:
        typer.echo(f"warning: {len(dataset['images'])} images but no regions in their {source}", err=True)
    with writing(out):
        write_coco(out, dataset)
    typer.echo(f"wrote {out}: {len(dataset['images'])} images, {len(dataset['annotations'])} annotations"
               f"{f', {len(issues)} issues' if issues else ''}")


def coco2ls(
    coco: Path = typer.Argument(..., help="COCO file."),
    out: Path = typer.Option(..., "--out", help="Label Studio tasks JSON to write (import it in a project)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Labeling config XML (control names, labels)."),
    model_version: str = typer.Option("seediff", "--model-version", help="Prediction model_version."),
    image_prefix: str = typer.Option("", "--image-prefix", help="Prepended to file_name for data.image (e.g. /data/local-files/?d=)."),
) -> None:
    """COCO → Label Studio tasks with predictions."""
    from .coco import read_coco, write_json
    from .jobs.store import writing
    from .lsexport import coco_to_ls

    tasks, issues = coco_to_ls(read_coco(coco), config=_read_text(config), model_version=model_version)
    if image_prefix:
        for task in tasks:
            key = next(iter(task["data"]))
            task["data"][key] = image_prefix + str(task["data"][key])
    _warn_issues(issues)
    with writing(out):
        write_json(out, tasks)
    typer.echo(f"wrote {out}: {len(tasks)} tasks{f', {len(issues)} issues' if issues else ''}")
