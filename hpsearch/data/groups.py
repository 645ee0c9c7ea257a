"""Which patient each case belongs to, so a patient's cases stay on one side of every split.

A job says it with ``dataset.group_pattern`` (a regular expression on the case id) or
``dataset.groups_file`` (a JSON object or a CSV file); without either every case is its
own patient, which is what the split by case always assumed.

Example:
    >>> case_groups(["pat01_t0", "pat01_t1", "pat02_t0"], pattern=r"^(pat\\d+)_")
    {'pat01_t0': 'pat01', 'pat01_t1': 'pat01', 'pat02_t0': 'pat02'}
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path

from hpsearch.errors import HpsearchError


def case_groups(
    case_ids: Sequence[str], pattern: str | None = None, groups_file: Path | None = None
) -> dict[str, str]:
    """The patient id of every case.

    Args:
        case_ids: Every case to place (training and labelled test cases).
        pattern: Searched in each case id; the first capture group, or the whole match
            when the pattern has no group, is the patient id.
        groups_file: A JSON object ``{case_id: patient_id}`` or a CSV with columns
            ``case,group``; it may list more cases than ``case_ids``.

    Returns:
        ``{case_id: patient_id}``; each case its own patient when neither is given.

    Raises:
        HpsearchError: A case id the pattern does not match or the file does not list, or
            an unreadable or malformed groups file.
    """
    if pattern is not None:
        return {case: _match(pattern, case) for case in case_ids}
    if groups_file is not None:
        listed = read_groups_file(groups_file)
        missing = [case for case in case_ids if case not in listed]
        if missing:
            raise HpsearchError(
                f"dataset.groups_file {groups_file}: case(s) {', '.join(missing[:5])} are not listed "
                f"({len(missing)} of {len(case_ids)} missing); list the patient of every case"
            )
        return {case: listed[case] for case in case_ids}
    return {case: case for case in case_ids}


def read_groups_file(path: Path) -> dict[str, str]:
    """``{case_id: patient_id}`` from a ``.json`` object or a ``.csv`` with columns ``case,group``.

    Raises:
        HpsearchError: Missing or unreadable file, another ending, a malformed entry, or a
            case listed twice with different patients.
    """
    where = f"dataset.groups_file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HpsearchError(f"{where}: not found; the path is relative to the working directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HpsearchError(f"{where}: cannot be read ({exc})") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return _from_json(where, text)
    if suffix == ".csv":
        return _from_csv(where, text)
    raise HpsearchError(f"{where}: must be a .json object {{case: patient}} or a .csv with columns case,group")


def _match(pattern: str, case: str) -> str:
    compiled = re.compile(pattern)
    match = compiled.search(case)
    if match is None:
        raise HpsearchError(
            f"dataset.group_pattern {pattern!r}: does not match case {case}; every case id must match "
            "(its first group is the patient id): fix the pattern"
        )
    group = match.group(1) if compiled.groups else match.group(0)
    if not group:
        raise HpsearchError(
            f"dataset.group_pattern {pattern!r}: finds an empty patient id in case {case}; "
            "make the first group match at least one character"
        )
    return group


def _from_json(where: str, text: str) -> dict[str, str]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HpsearchError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise HpsearchError(f"{where}: expected a JSON object {{\"case_id\": \"patient_id\", ...}}")
    out = {}
    for case, group in raw.items():
        # Numbers are fine as patient ids (a hospital's record number), lists or null are not.
        if isinstance(group, bool) or not isinstance(group, (str, int)) or str(group) == "":
            raise HpsearchError(f"{where}: case {case}: the patient id must be a string or integer, got {group!r}")
        out[str(case)] = str(group)
    return out


def _from_csv(where: str, text: str) -> dict[str, str]:
    reader = csv.DictReader(text.splitlines())
    if not {"case", "group"} <= set(reader.fieldnames or ()):
        raise HpsearchError(f"{where}: the first line must name the columns case,group (got {reader.fieldnames})")
    out: dict[str, str] = {}
    for row in reader:
        line = reader.line_num
        case, group = (row.get("case") or "").strip(), (row.get("group") or "").strip()
        if not case or not group:
            raise HpsearchError(f"{where}: line {line}: needs both a case and a group")
        if out.get(case, group) != group:
            raise HpsearchError(f"{where}: line {line}: case {case} is listed again with another group "
                                f"({out[case]} and {group}); keep one")
        out[case] = group
    return out
