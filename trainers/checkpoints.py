"""Where a trial's checkpoints live, how they are written and read, and when they go.

Layout: ``<checkpoint dir>/<study id>/<trial id>/r<resource>.pt``, one file per resource a
segment ended at; a promoted or retried job loads the file of its ``from_resource``. Every
worker of a study must see the same directory (a shared volume), since any of them may resume
any trial.

Format: ``torch.save`` when the process has imported torch (tensors stored efficiently, read
back onto the worker's device), plain ``pickle`` otherwise, so that a trainer without torch
(the analytic one, a user's numpy loop) never loads it. :func:`read` tells them apart by the
file's first bytes (torch writes a zip archive).

Life cycle (the worker side, ``trainers/worker.py``): a trial keeps only its newest checkpoint.
Once a segment's completion is recorded, the file it resumed from is deleted (a completed
segment is never retried); a job stopped for good writes nothing and deletes the file it resumed
from. :func:`prune_study_checkpoints` is for the end of a study: it keeps the newest file of the
trials worth keeping (the best ones) and deletes the rest.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple

SUFFIX = ".pt"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format


def _safe_part(value: object, what: str) -> str:
    text = str(value)
    if not text or "/" in text or "\\" in text or text in (".", "..") or "\0" in text:
        raise ValueError(f"{what} {text!r} cannot name a checkpoint folder")
    return text


def study_dir(root: str | os.PathLike, study: str) -> Path:
    return Path(root) / _safe_part(study, "study id")


def trial_dir(root: str | os.PathLike, study: str, trial: int | str) -> Path:
    return study_dir(root, study) / _safe_part(trial, "trial id")


def checkpoint_path(root: str | os.PathLike, study: str, trial: int | str,
                    resource: float) -> Path:
    return trial_dir(root, study, trial) / f"r{float(resource):.6g}{SUFFIX}"


def resource_of(path: Path) -> float | None:
    """The resource a checkpoint file was written at, or None for any other file."""
    name = path.name
    if not (name.startswith("r") and name.endswith(SUFFIX)):
        return None
    try:
        return float(name[1:-len(SUFFIX)])
    except ValueError:
        return None


def write(path: Path, state: Any) -> int:
    """Write then rename, so a crash never leaves a half-written checkpoint behind. Returns
    the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        if "torch" in sys.modules:
            sys.modules["torch"].save(state, tmp)
        else:
            with open(tmp, "wb") as f:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def read(path: Path, map_location: Any = None) -> Any:
    with open(path, "rb") as f:
        head = f.read(4)
        if head != _ZIP_MAGIC:
            f.seek(0)
            return pickle.load(f)
    import torch  # a torch checkpoint needs torch to read: its trainer has imported it

    return torch.load(path, map_location=map_location, weights_only=False)


def delete(path: Path) -> int:
    """Remove one checkpoint; the bytes freed (0 when it was already gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def trial_checkpoints(folder: Path) -> list[tuple[float, Path]]:
    """A trial's checkpoint files, oldest (lowest resource) first."""
    if not folder.is_dir():
        return []
    found = [(r, p) for p in folder.iterdir() if (r := resource_of(p)) is not None]
    return sorted(found)


def folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def study_bytes(ckpt_dir: str | os.PathLike, study_id: str) -> int:
    """The disk a study's checkpoints use now (every trial's files)."""
    root = study_dir(ckpt_dir, study_id)
    if not root.is_dir():
        return 0
    return sum(folder_bytes(p) for p in root.iterdir() if p.is_dir())


class PruneResult(NamedTuple):
    freed: int  # bytes deleted
    kept: int  # bytes left: the newest checkpoint of each kept trial


def prune_study_checkpoints(ckpt_dir: str | os.PathLike, study_id: str,
                            keep_trial_ids: list[int] | set[int] | tuple[int, ...] = (),
                            ) -> PruneResult:
    """Delete every checkpoint of a study except the newest one of each trial in
    ``keep_trial_ids``; remove the folders left empty. For a study that has ended (nothing can
    resume any more): call it with the trials worth keeping, e.g. the best ones. Leftover
    temporary files of crashed writes go too. Safe to call again."""
    root = study_dir(ckpt_dir, study_id)
    keep = {str(t) for t in keep_trial_ids}
    freed = kept = 0
    if not root.is_dir():
        return PruneResult(0, 0)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if p.is_file()]
        found = trial_checkpoints(folder) if folder.name in keep else []
        newest = found[-1][1] if found else None
        for p in files:
            if newest is not None and p == newest:
                kept += p.stat().st_size
            else:
                freed += delete(p)
        if newest is None:
            _rmdir(folder)
    _rmdir(root)
    return PruneResult(freed, kept)


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (kept files, a concurrent writer) or already gone
        pass
