"""Atomic writes (kdseg.fileio): success, failure without trace, temp names, fsync, cleanup."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdseg import fileio
from kdseg.fileio import (
    TEMP_GLOB,
    atomic_path,
    remove_stale_temp_files,
    temp_path_for,
    write_json_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_atomic_writes_exactly_the_text_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "run_config.yaml"
    write_text_atomic("a: 1\r\nb: é\n", target)
    assert target.read_bytes() == "a: 1\r\nb: é\n".encode()  # UTF-8, newlines untranslated
    write_text_atomic("a: 2\n", target)  # replaces an existing file
    assert target.read_text() == "a: 2\n"
    assert _names(tmp_path) == ["run_config.yaml"]


def test_write_json_atomic_format(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    write_json_atomic({"path": Path("/x/y"), "n": [1, 2]}, target)
    # indent=1 and default=str, as run.json has always been written.
    assert target.read_text() == '{\n "path": "/x/y",\n "n": [\n  1,\n  2\n ]\n}'


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt()])
def test_exception_in_block_leaves_old_target_and_no_temp_file(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    seen: list[Path] = []
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        seen.append(tmp)
        tmp.write_text("new but only half")
        raise error
    assert seen[0].parent == tmp_path
    assert not seen[0].exists()
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["scores.csv"]


def test_block_that_writes_nothing_fails_and_keeps_target(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert target.read_bytes() == b"old"


@pytest.mark.parametrize(
    ("name", "suffixes"),
    [
        ("SYN_0000_t1.nii.gz", ".nii.gz"),
        ("c1_image.npy", ".npy"),
        ("checkpoint_last.pt", ".pt"),
        ("Makefile", ""),
        (".hidden.json", ".json"),
    ],
)
def test_temp_name_is_hidden_keeps_suffixes_and_matches_glob(
    tmp_path: Path, name: str, suffixes: str
) -> None:
    tmp = temp_path_for(tmp_path / name)
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".") and not tmp.name.startswith("..")
    assert tmp.name.endswith(suffixes)
    stem = name.lstrip(".").partition(".")[0]
    assert tmp.name.removesuffix(suffixes).startswith(f".{stem}.partial-")
    assert tmp.match(TEMP_GLOB)
    assert temp_path_for(tmp_path / name) != tmp  # random part


@given(
    stem=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12),
    suffixes=st.sampled_from(["", ".json", ".nii.gz", ".tar.gz"]),
)
def test_temp_name_property(stem: str, suffixes: str) -> None:
    target = Path("/data/out") / f"{stem}{suffixes}"
    tmp = temp_path_for(target)
    assert tmp.parent == target.parent
    assert tmp.name.endswith(suffixes) and tmp.name.startswith(f".{stem}.partial-")
    assert tmp.match(TEMP_GLOB) and not target.match(TEMP_GLOB)


def test_writers_that_pick_format_from_suffix(tmp_path: Path) -> None:
    """nibabel gzips only for a ``.nii.gz`` name; np.save appends ``.npy`` unless present."""
    image = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    nifti = tmp_path / "case.nii.gz"
    with atomic_path(nifti) as tmp:
        nib.save(image, tmp)
    with gzip.open(nifti) as stream:
        stream.read(1)  # raises BadGzipFile if nibabel wrote plain .nii
    np.testing.assert_array_equal(np.asanyarray(nib.load(nifti).dataobj), image.get_fdata())

    array = tmp_path / "image.npy"
    with atomic_path(array) as tmp:
        np.save(tmp, np.ones(3, dtype=np.float32), allow_pickle=False)
    np.testing.assert_array_equal(np.load(array), np.ones(3, dtype=np.float32))
    assert _names(tmp_path) == ["case.nii.gz", "image.npy"]


@pytest.mark.parametrize("fsync", [True, False])
def test_fsync_happens_on_the_complete_temp_file_before_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    target = tmp_path / "c1.json"
    target.write_text("old")
    synced: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        # What the descriptor points at, and what the target holds, at the moment of the fsync.
        synced.append((Path(os.readlink(f"/proc/self/fd/{fd}")).read_text(), target.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", spy)
    with atomic_path(target, fsync=fsync) as tmp:
        tmp.write_text("new")
    assert synced == ([("new", "old")] if fsync else [])
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["c1.json"]


def test_remove_stale_temp_files_removes_only_direct_leftovers(tmp_path: Path) -> None:
    keep = ["c1.json", "c1_image.npy", ".gitignore", "notes.partial-draft.txt"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    stale = [temp_path_for(tmp_path / "c1.json"), tmp_path / ".SYN_0000_t2.partial-0123.nii.gz"]
    for path in stale:
        path.write_text("left by a killed run")
    nested = tmp_path / "sub"
    nested.mkdir()
    nested_stale = temp_path_for(nested / "x.json")
    nested_stale.write_text("not in this folder")

    assert remove_stale_temp_files(tmp_path) == 2
    assert _names(tmp_path) == sorted([*keep, "sub"])
    assert nested_stale.exists()  # not recursive
    assert remove_stale_temp_files(tmp_path) == 0
