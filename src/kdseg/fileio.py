"""Atomic file writes, for every file that another step or a resumed run reads.

Every writer goes through :func:`atomic_path`: the content is written to a hidden temporary file
in the target's own folder and then ``os.replace``-d onto the target. ``os.replace`` is atomic
within one file system, so a reader (a later Snakemake rule, a resumed run) sees either the old
file or the complete new one, never a truncated one, and a crash leaves the old file untouched.

Temporary names are ``.<stem>.partial-<12 hex><suffixes>``, e.g. ``SYN_0000_t1.nii.gz`` ->
``.SYN_0000_t1.partial-3fa2c01b9e7d.nii.gz``. They keep the target's suffixes because writers
choose the format from them (nibabel gzips for ``.nii.gz``, ``np.save`` appends ``.npy`` to a name
without it), and they all match :data:`TEMP_GLOB`, so leftovers of a killed process (where no
``finally`` ran) can be found and removed with :func:`remove_stale_temp_files`.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMP_MARK = ".partial-"
TEMP_GLOB = f".*{_TEMP_MARK}*"
"""Glob (for ``Path.glob`` / ``Path.match``) matching every temporary name :func:`atomic_path`
makes, and nothing a kdseg writer produces as a final file."""


def temp_path_for(path: Path) -> Path:
    """A fresh hidden temporary path beside ``path`` that keeps all of its suffixes.

    The stem ends at the first dot (``"c1.nii.gz"`` -> stem ``"c1"``, suffixes ``".nii.gz"``);
    leading dots of an already hidden name are dropped so the result starts with one dot. The
    48-bit random part makes a clash with another writer's temporary file negligible.
    """
    path = Path(path)
    stem, dot, suffixes = path.name.lstrip(".").partition(".")
    return path.with_name(f".{stem}{_TEMP_MARK}{secrets.token_hex(6)}{dot}{suffixes}")


@contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path (see :func:`temp_path_for`) to write ``path``'s new content to.

    On normal exit of the ``with`` block the temporary file is (with ``fsync``) flushed to disk
    and then ``os.replace``-d onto ``path``; on any exception, ``KeyboardInterrupt`` included, it
    is deleted and the exception propagates, leaving ``path`` as it was. The parent folder must
    exist. The block's writer creates the file itself (unlike ``tempfile.mkstemp``), so it gets
    the usual umask permissions rather than 0600.

    Args:
        path: the final file.
        fsync: ``os.fsync`` the content before the rename, so that after a power loss ``path``
            holds the old or the new content, not an empty file. Costs a disk flush per file.

    Example::

        with atomic_path(out / "c1.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        # After a successful replace ``tmp`` no longer exists; otherwise this removes the
        # partial file the failed writer left.
        tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    # Writers such as np.save, nib.save and torch.save take a path and close their own handle,
    # so the file is reopened to fsync it; fsync acts on the file, not on the descriptor.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def write_json_atomic(data: object, path: Path) -> None:
    """Write ``data`` as JSON (``indent=1``; non-JSON values such as paths via ``str``) to
    ``path`` atomically."""
    write_text_atomic(json.dumps(data, indent=1, default=str), path)


def remove_stale_temp_files(folder: Path) -> int:
    """Delete the temporary files (:data:`TEMP_GLOB`) directly in ``folder``; return how many.

    Only for leftovers of a killed earlier run: a temporary file of a writer that is still
    running in ``folder`` would be deleted too, making its ``os.replace`` fail.
    """
    removed = 0
    for stale in Path(folder).glob(TEMP_GLOB):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed
