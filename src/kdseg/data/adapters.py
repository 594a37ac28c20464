"""Dataset adapters: find every case's files, whatever layout the dataset comes in.

One adapter per layout, selected by ``dataset.source`` in the config:

``brats``
    ``root/<case>/<case>_<modality>.nii.gz`` + ``<case>_seg.nii.gz`` (BraTS 2018–2021; case
    folders may sit one level down in group folders, as BraTS 2018's ``HGG/``/``LGG/``), or the
    BraTS 2023 naming ``root/<case>/<case>-t1n.nii.gz`` (``-t1c``, ``-t2w``, ``-t2f``,
    ``-seg``), detected from the files (``naming: auto``) or told (``2018`` / ``2023``). With
    the 2023 naming the kdseg modality names t1, t1ce, t2, flair map to t1n, t1c, t2w, t2f.
``synthetic``
    The built-in generator's output, in the BraTS 2018–2021 layout.
``msd``
    Medical Segmentation Decathlon: ``root/dataset.json`` lists the training cases; each image
    is one 4-D NIfTI ``(X, Y, Z, modality)`` whose volume order the json's ``modality`` block
    gives (Task01: FLAIR, T1w, t1gd, T2w); labels are 3-D files in ``labelsTr``.
``manifest``
    A CSV/TSV table with a ``case`` column, one column per modality (file path) and a ``label``
    column; paths are relative to ``root``. In an unpaired dataset (``unpaired: true``) a case
    leaves the cells of the modalities it lacks empty.

``modality_files`` maps a kdseg modality name to its name in the files (BraTS suffix, MSD
modality name, manifest column) wherever the defaults do not fit.

Every adapter returns ``(cases, problems)``: the complete cases and a :class:`DataProblem` per
thing wrong with the others, so one validation pass can list everything at once.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from kdseg.data.io import (
    LABEL_SUFFIX,
    NIFTI_EXTENSIONS,
    CaseFiles,
    DataError,
    DataProblem,
    check_modalities,
)

SOURCES = ("synthetic", "brats", "msd", "manifest")
BRATS_NAMINGS = ("auto", "2018", "2023")
# BraTS 2023 file suffixes of the usual kdseg modality names (other names are used as given).
BRATS_2023_SUFFIXES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
# MSD modality names (lower case) that mean the same sequence as a kdseg name.
MSD_ALIASES = {
    "t1": ("t1", "t1w", "t1n"),
    "t1ce": ("t1ce", "t1gd", "t1c", "t1-gd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2-flair"),
}
# Case ids name output files (``<case>_image.npy``): letters, digits, ``.``, ``_``, ``-`` only,
# not starting with a dot, so an id can never climb out of a folder or hide a file.
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset lives and how to read it (the ``dataset`` block of the config).

    Attributes:
        source: one of :data:`SOURCES`.
        root: dataset folder (for ``manifest``, the folder paths in the table are relative to).
        modalities: kdseg modality names in channel order.
        naming: BraTS file naming, one of :data:`BRATS_NAMINGS`.
        manifest: the CSV/TSV table (``manifest`` source only).
        modality_files: modality -> its name in the files, where it differs.
        unpaired: cases may carry only some of the modalities (manifest source only).
        require_label: every case must have a label file.
    """

    source: str
    root: Path
    modalities: tuple[str, ...]
    naming: str = "auto"
    manifest: Path | None = None
    modality_files: Mapping[str, str] = field(default_factory=dict)
    unpaired: bool = False
    require_label: bool = True

    def __post_init__(self) -> None:
        check_modalities(self.modalities)
        if self.source not in SOURCES:
            raise ValueError(f"dataset.source: unknown {self.source!r}; known: {list(SOURCES)}")
        if self.naming not in BRATS_NAMINGS:
            raise ValueError(f"dataset.naming: unknown {self.naming!r}; "
                             f"known: {list(BRATS_NAMINGS)}")
        stray = sorted(set(self.modality_files) - set(self.modalities))
        if stray:
            raise ValueError(f"dataset.modality_files: {stray} are not in dataset.modalities "
                             f"{list(self.modalities)}")
        if self.source == "manifest" and self.manifest is None:
            raise ValueError("dataset.manifest: the manifest source needs a CSV/TSV file")
        if self.unpaired and self.source != "manifest":
            raise ValueError("dataset.unpaired: only a manifest can describe unpaired cases "
                             f"(source is {self.source!r})")

    @classmethod
    def from_config(cls, dataset: Mapping[str, Any], root: str | Path | None = None,
                    require_label: bool = True) -> DatasetSource:
        """From the config's ``dataset`` block; ``root`` overrides ``dataset.root`` (the
        synthetic dataset's generated folder)."""
        manifest = dataset.get("manifest")
        folder = root if root is not None else dataset.get("root")
        if folder is None and manifest:
            folder = Path(manifest).parent
        if folder is None:
            raise ValueError(f"dataset.root is required for source {dataset['source']!r}")
        return cls(
            source=str(dataset["source"]),
            root=Path(folder),
            modalities=tuple(dataset["modalities"]),
            naming=str(dataset.get("naming", "auto")),
            manifest=Path(manifest) if manifest else None,
            modality_files=dict(dataset.get("modality_files") or {}),
            unpaired=bool(dataset.get("unpaired", False)),
            require_label=require_label,
        )


def find_dataset(src: DatasetSource) -> tuple[list[CaseFiles], list[DataProblem]]:
    """The complete cases of ``src`` (sorted by id) and every problem of the incomplete ones.

    Raises DataError only for problems that concern the whole dataset (missing root or
    dataset.json, unreadable manifest, no cases at all).
    """
    root = Path(src.root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: dataset path is not a folder")
    if src.source in ("brats", "synthetic"):
        naming = "2018" if src.source == "synthetic" else src.naming
        cases, problems = _find_brats(src, naming)
    elif src.source == "msd":
        cases, problems = _find_msd(src)
    else:
        cases, problems = _find_manifest(src)
    if not cases and not problems:
        raise DataError(f"{root}: empty dataset folder: no cases found for modalities "
                        f"{list(src.modalities)} ({_layout_hint(src)})")
    return sorted(cases, key=lambda c: c.case_id), problems


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name output files (path separators, ``..``, odd characters)."""
    if not case_id:
        return "empty case id"
    if "/" in case_id or "\\" in case_id or ".." in case_id:
        return f"case id {case_id!r} contains a path separator or '..'"
    if not _SAFE_ID.fullmatch(case_id):
        return (f"case id {case_id!r} has characters other than letters, digits, '.', '_', '-' "
                f"(or starts with '.')")
    return None


def _id_problems(case: str, seen: dict[str, str], where: str, path: Path,
                 label: str = "") -> list[DataProblem]:
    """Problems of a case id: unusable as a file name, or already used (``seen`` maps ids to
    where they were first found and is updated)."""
    prefix = f"{label}: " if label else ""
    bad = case_id_problem(case)
    if bad:
        return [DataProblem(case or label, path, f"{prefix}{bad}")]
    if case in seen:
        return [DataProblem(case, path, f"{prefix}duplicate case id (also {seen[case]})")]
    seen[case] = where
    return []


def _layout_hint(src: DatasetSource) -> str:
    if src.source == "msd":
        return "MSD layout: dataset.json with a 'training' list"
    if src.source == "manifest":
        return f"manifest {src.manifest} has no rows"
    return f"BraTS layout: <case>/<case>_<modality>{NIFTI_EXTENSIONS[0]} or <case>-<modality>"


# --------------------------------------------------------------------------------------- BraTS


def _existing(folder: Path, stem: str) -> Path | None:
    for ext in NIFTI_EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _case_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root``, and of its sub-folders that hold no NIfTI file named after
    themselves (BraTS 2018/2019 ship ``HGG/`` and ``LGG/`` group folders; a stray template or
    mask file in one must not hide its cases), sorted; hidden folders skipped."""
    def subfolders(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def holds_case_files(folder: Path) -> bool:
        prefixes = (f"{folder.name}_", f"{folder.name}-")
        return any(p.name.startswith(prefixes) and ".nii" in p.name for p in folder.iterdir())

    out = []
    for folder in subfolders(root):
        inner = [] if holds_case_files(folder) else subfolders(folder)
        out += inner if inner else [folder]
    return out


def detect_brats_naming(root: Path) -> str | None:
    """``"2023"`` if the first case folder holding a BraTS file uses ``<case>-seg``/``-t1n``
    names, ``"2018"`` for ``<case>_seg``/``_t1``, None if no folder holds either."""
    for folder in _case_folders(Path(root)):
        case = folder.name
        for ext in NIFTI_EXTENSIONS:
            if any((folder / f"{case}-{s}{ext}").is_file() for s in ("seg", "t1n", "t2f")):
                return "2023"
            if any((folder / f"{case}_{s}{ext}").is_file() for s in ("seg", "t1", "flair")):
                return "2018"
    return None


def _find_brats(src: DatasetSource, naming: str) -> tuple[list[CaseFiles], list[DataProblem]]:
    root = Path(src.root)
    if naming == "auto":
        naming = detect_brats_naming(root) or "2018"
    sep = "-" if naming == "2023" else "_"
    default = BRATS_2023_SUFFIXES if naming == "2023" else {}
    suffix = {m: src.modality_files.get(m, default.get(m, m)) for m in src.modalities}
    cases: list[CaseFiles] = []
    problems: list[DataProblem] = []
    seen: dict[str, str] = {}
    for folder in _case_folders(root):
        case = folder.name
        images = {m: _existing(folder, f"{case}{sep}{suffix[m]}") for m in src.modalities}
        label = _existing(folder, f"{case}{sep}{LABEL_SUFFIX}")
        if label is None and all(path is None for path in images.values()):
            continue  # not a case folder (documentation, a results folder)
        found = [DataProblem(case, folder / f"{case}{sep}{suffix[m]}{NIFTI_EXTENSIONS[0]}",
                             f"missing {m!r} image file")
                 for m, path in images.items() if path is None]
        if label is None and src.require_label:
            found.append(DataProblem(case, folder / f"{case}{sep}{LABEL_SUFFIX}"
                                     f"{NIFTI_EXTENSIONS[0]}", "missing label file"))
        found += _id_problems(case, seen, str(folder), folder)
        problems += found
        if not found:
            cases.append(CaseFiles(case, {m: p for m, p in images.items() if p}, label))
    return cases, problems


# ----------------------------------------------------------------------------------------- MSD


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` (or an absolute path) if it stays inside ``root`` once ``..`` is
    resolved. The check is lexical: a symbolic link inside the dataset folder may point
    elsewhere (datasets on shared drives are often linked), a ``..`` may not climb out."""
    base = Path(os.path.abspath(root))
    if "\\" in relative and os.sep == "/":  # a table written on Windows: images\\x.nii.gz
        relative = PureWindowsPath(relative).as_posix()
    path = Path(os.path.normpath(base / relative))  # base / an absolute path = that path
    return path if path.is_relative_to(base) else None


def _msd_volumes(src: DatasetSource, names: Mapping[str, str], where: Path) -> dict[str, int]:
    """kdseg modality -> volume index, from dataset.json's ``modality`` block."""
    by_name = {str(name).lower(): int(index) for index, name in names.items()}
    volumes: dict[str, int] = {}
    for m in src.modalities:
        wanted = src.modality_files.get(m)
        candidates = (wanted.lower(),) if wanted else MSD_ALIASES.get(m, (m.lower(),))
        hits = [by_name[c] for c in candidates if c in by_name]
        if not hits:
            raise DataError(f"{where}: no modality in its 'modality' block {dict(names)} matches "
                            f"{m!r}; map it with dataset.modality_files ({m}: <name>)")
        twin = [other for other, v in volumes.items() if v == hits[0]]
        if twin:
            raise DataError(f"{where}: modalities {twin[0]!r} and {m!r} both map to volume "
                            f"{hits[0]} ({names.get(str(hits[0]))!r}); fix dataset.modality_files")
        volumes[m] = hits[0]
    return volumes


def _find_msd(src: DatasetSource) -> tuple[list[CaseFiles], list[DataProblem]]:
    root = Path(src.root)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        entries = meta["training"]
        names = meta["modality"]
    except FileNotFoundError:
        raise DataError(f"{meta_path}: missing (an MSD dataset folder holds dataset.json)"
                        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        hint = ""
        if isinstance(err, KeyError) and "channel_names" in meta_path.read_text():
            hint = ("; this looks like an nnU-Net v2 dataset (one file per channel): list its "
                    "files in a manifest and use source: manifest")
        raise DataError(f"{meta_path}: not a valid MSD dataset.json (missing or bad "
                        f"{err!s}){hint}") from None
    volumes = _msd_volumes(src, names, meta_path)
    cases: list[CaseFiles] = []
    problems: list[DataProblem] = []
    seen: dict[str, str] = {}
    for row, entry in enumerate(entries):
        image_rel = str(entry.get("image", "")) if isinstance(entry, dict) else ""
        case = Path(image_rel).name.removesuffix(".gz").removesuffix(".nii")
        where = f"training[{row}]"
        found = _id_problems(case, seen, where, meta_path, where)
        image = _inside(root, image_rel) if image_rel else None
        label_rel = entry.get("label") if isinstance(entry, dict) else None
        label = _inside(root, str(label_rel)) if label_rel else None
        for rel, path, what in ((image_rel, image, "image"), (label_rel, label, "label")):
            if what == "label" and not rel:
                if src.require_label:
                    found.append(DataProblem(case or where, meta_path, f"{where}: no label"))
                continue
            if path is None:
                found.append(DataProblem(case or where, meta_path,
                                         f"{where}: {what} {rel!r} points outside {root}"))
            elif not path.is_file():
                found.append(DataProblem(case or where, path, f"missing {what} file"))
        problems += found
        if not found and image is not None:
            cases.append(CaseFiles(case, {m: image for m in src.modalities}, label,
                                   volumes=dict(volumes)))
    return cases, problems


# ------------------------------------------------------------------------------------ manifest


def read_manifest_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV (``,``) or TSV (tab, ``.tsv``/``.tab``) manifest; cells are
    stripped strings. DataError naming the file if it cannot be read."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = [{str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None}
                    for row in reader]
            header = [h.strip() for h in (reader.fieldnames or [])]
    except FileNotFoundError:
        raise DataError(f"{path}: manifest file does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from None
    return header, rows


def _find_manifest(src: DatasetSource) -> tuple[list[CaseFiles], list[DataProblem]]:
    root, table = Path(src.root), Path(src.manifest)  # type: ignore[arg-type]
    header, rows = read_manifest_table(table)
    column = {m: src.modality_files.get(m, m) for m in src.modalities}
    needed = ["case", *column.values()] + (["label"] if src.require_label else [])
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(f"{table}: manifest lacks column(s) {absent}; it has {header} "
                        f"(map modality names to columns with dataset.modality_files)")
    cases: list[CaseFiles] = []
    problems: list[DataProblem] = []
    seen: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        case = row.get("case", "")
        where = f"line {number}"
        if not any(row.values()):
            continue  # an empty row (spreadsheets export trailing ",,,," lines)
        found = _id_problems(case, seen, where, table, where)
        images: dict[str, Path] = {}
        for m, col in column.items():
            cell = row.get(col, "")
            if not cell:
                if not src.unpaired:
                    found.append(DataProblem(case or where, table,
                                             f"{where}: missing {m!r} image file (empty cell)"))
                continue
            path = _inside(root, cell)
            if path is None:
                found.append(DataProblem(case or where, table,
                                         f"{where}: {m} path {cell!r} points outside {root}"))
            elif not path.is_file():
                found.append(DataProblem(case or where, path, f"missing {m!r} image file"))
            else:
                images[m] = path
        if src.unpaired and not images and not found:
            found.append(DataProblem(case or where, table, f"{where}: no modality file at all"))
        label = None
        cell = row.get("label", "")
        if cell:
            label = _inside(root, cell)
            if label is None:
                found.append(DataProblem(case or where, table,
                                         f"{where}: label path {cell!r} points outside {root}"))
            elif not label.is_file():
                found.append(DataProblem(case or where, label, "missing label file"))
        elif src.require_label:
            found.append(DataProblem(case or where, table, f"{where}: missing label file "
                                                           "(empty cell)"))
        problems += found
        if not found:
            cases.append(CaseFiles(case, images, label))
    return cases, problems


def available_modalities(cases: Sequence[CaseFiles], modalities: Sequence[str]) -> dict[str, int]:
    """How many cases carry each modality (an unpaired dataset's composition)."""
    return {m: sum(m in c.images for c in cases) for m in modalities}
