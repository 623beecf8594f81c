"""``PAIRS.csv``: the rows of a cohort, read and checked before anything is submitted.

Columns (header row, any order): ``id``, ``fixed``, ``moving`` (required); ``prompts`` — a Slicer ``.mrk.json``,
inline clicks ``R,A,S;R,A,S`` (RAS mm), or empty for automatic pairs; per-row options ``model``,
``checkpoint``, ``device``, ``transform``, ``auto_pairs``, ``warps``, ``bending``, ``feature_weight``,
``mind_weight``, ``prompt_px`` (``X,Y[,Z];…`` in the fixed image's pixels); scoring columns ``fixed_labels``,
``moving_labels`` (label maps: Dice per label), ``truth`` (an ITK transform fixed → moving: TRE in mm) and
``fixed_landmarks``, ``moving_landmarks`` (corresponding ``.mrk.json`` points: landmark TRE in mm).
Paths are relative to the CSV's folder. A problem with the table itself (a missing column, a duplicate or
unsafe id) stops the batch before it starts; a problem with one row's files or prompts fails that row only.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError
from ...pipeline.options import OPTION_NAMES

REQUIRED_COLUMNS = ("id", "fixed", "moving")
OPTION_COLUMNS = tuple(OPTION_NAMES) + ("prompt_px",)
SCORING_COLUMNS = ("fixed_labels", "moving_labels", "truth", "fixed_landmarks", "moving_landmarks")
PATH_COLUMNS = ("fixed", "moving", "checkpoint") + SCORING_COLUMNS
KNOWN_COLUMNS = REQUIRED_COLUMNS + ("prompts",) + OPTION_COLUMNS + SCORING_COLUMNS
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class PairsTableError(UsageError):
    """The pairs table cannot be used as a whole (unreadable, a missing column, a duplicate or unsafe id)."""


@dataclass
class PairRow:
    """One row: its id, absolute paths, the prompts cell as written, and the non-empty optional cells."""

    id: str
    fixed: str
    moving: str
    prompts: str = ""
    options: dict[str, str] = field(default_factory=dict)
    scoring: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def fingerprint(self) -> str:
        """Hash of the row and of its files' sizes and modification times: a changed row or input re-runs."""
        digest = hashlib.sha256(json.dumps([self.id, self.fixed, self.moving, self.prompts, self.options,
                                            self.scoring], sort_keys=True).encode())
        for path in [self.fixed, self.moving, self._prompts_file(), *self.scoring.values(),
                     self.options.get("checkpoint")]:
            if path and Path(path).is_file():
                stat = Path(path).stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def _prompts_file(self) -> str | None:
        return self.prompts if self.prompts.endswith(".json") else None


def read_pairs(csv_path: str | Path) -> list[PairRow]:
    """The table's rows, paths made absolute; raises :class:`PairsTableError` for table-level problems."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            records = [({(k or "").strip(): (v or "").strip() for k, v in record.items()}, reader.line_num)
                       for record in reader]
    except FileNotFoundError:
        raise PairsTableError(f"{csv_path}: no such pairs table.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PairsTableError(f"{csv_path}: cannot be read as a CSV table ({error}).") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise PairsTableError(f"{csv_path}: the header lacks the column(s) {', '.join(missing)}; the first row must "
                              f"name at least {', '.join(REQUIRED_COLUMNS)}.")
    unknown = [c for c in columns if c not in KNOWN_COLUMNS]
    if unknown:
        raise PairsTableError(f"{csv_path}: unknown column(s) {', '.join(unknown)}; known: {', '.join(KNOWN_COLUMNS)}.")
    rows, seen = [], {}
    for record, line in records:
        if not any(record.values()):
            continue
        rows.append(_row(record, line, csv_path, seen))
    if not rows:
        raise PairsTableError(f"{csv_path}: no pairs in the table.")
    return rows


def _row(record: dict[str, str], line: int, csv_path: Path, seen: dict[str, int]) -> PairRow:
    pair_id = record.get("id", "")
    if not _SAFE_ID.match(pair_id):
        raise PairsTableError(f"{csv_path}, line {line}: id {pair_id!r} cannot name an output folder; use letters, "
                              "digits, '.', '_' and '-' (not starting with '.' or '-').")
    if pair_id in seen:
        raise PairsTableError(f"{csv_path}, line {line}: id {pair_id!r} was already used on line {seen[pair_id]}.")
    seen[pair_id] = line
    base = csv_path.resolve().parent
    resolve = lambda value: str(base / value) if value else ""  # noqa: E731
    prompts = record.get("prompts", "")
    if prompts.endswith(".json"):
        prompts = resolve(prompts)
    options = {k: (resolve(record[k]) if k in PATH_COLUMNS else record[k]) for k in OPTION_COLUMNS if record.get(k)}
    scoring = {k: resolve(record[k]) for k in SCORING_COLUMNS if record.get(k)}
    return PairRow(pair_id, resolve(record.get("fixed", "")), resolve(record.get("moving", "")), prompts, options,
                   scoring, line)
