"""Submission folders and their listing.

``submissions/<name>/`` holds the prediction file, ``<name>.zip`` (that file at its top level, ready to
upload), ``metadata.json`` and ``config.yaml``. A submission is assembled in a hidden staging folder
beside it and renamed into place under a lock, so a name is never half-written and never overwritten;
``submissions/index.csv`` lists every submission and is rewritten atomically under the same lock.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from abaw.errors import AbawError
from abaw.utils import atomic_path, atomic_write_text, file_lock

INDEX = "index.csv"
LOCK = ".index.lock"
INDEX_FIELDS = ["name", "time", "runs", "val_p_va", "test_p_va", "test_ccc_v", "test_ccc_a", "rows", "videos",
                "zip", "test_truth"]  # fmt: skip


class SubmissionExistsError(FileExistsError, AbawError):
    """A submission of that name exists already; names are never reused."""


def submissions_root(cfg) -> Path:
    """``cfg.submit.out_dir``: relative to the repository root unless absolute."""
    from abaw.config import REPO_ROOT

    out = Path(cfg.submit.out_dir).expanduser()
    return out if out.is_absolute() else REPO_ROOT / out


def ensure_free(root: Path, name: str) -> None:
    if (root / name).exists():
        raise SubmissionExistsError(f"submission {name!r} exists already ({root / name}); choose another "
                                    "name (--name or submit.name)")


def stage(root: Path, name: str) -> Path:
    """A fresh hidden folder beside the final one (same filesystem, so publishing is one rename)."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=root))
    # mkdtemp makes the folder private (0700); a published submission should read like any folder.
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
    return path


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def make_zip(file: Path, zip_path: Path) -> Path:
    """Zip ``file`` alone, at the archive's top level (what the upload form expects)."""
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.write(file, arcname=file.name)
    return zip_path


def read_index(root: Path) -> list[dict[str, str]]:
    path = root / INDEX
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _index_text(rows: list[dict]) -> str:
    fields = INDEX_FIELDS + sorted({k for r in rows for k in r} - set(INDEX_FIELDS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def publish(staging: Path, root: Path, name: str, index_row: dict) -> Path:
    """Rename ``staging`` to ``root/name`` and append ``index_row`` to the listing, both under the lock.

    Raises SubmissionExistsError (leaving ``staging`` in place) when the name was taken meanwhile.
    """
    final = root / name
    with file_lock(root / LOCK):
        if final.exists():
            raise SubmissionExistsError(f"submission {name!r} appeared at {final} while this one was made; "
                                        f"its files are in {staging}")
        os.rename(staging, final)
        rows = read_index(root) + [{k: "" if v is None else v for k, v in index_row.items()}]
        try:
            atomic_write_text(root / INDEX, _index_text(rows))
        except BaseException:
            # The listing must not miss a published submission: undo the rename instead.
            with contextlib.suppress(OSError):
                os.rename(final, staging)
            raise
    return final
