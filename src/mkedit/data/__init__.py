"""Benchmark and edit files: loading (any supported layout) and checking where subjects can be placed."""

from __future__ import annotations

from mkedit.data.check import (
    CHECKED_FIELDS,
    DataCheckReport,
    FieldCounts,
    LanguageCheck,
    SubjectFinding,
    check_records,
    render_report,
)
from mkedit.data.loaders import load_edit_groups, load_records, read_raw_records
from mkedit.data.records import METRICS, normalize_langs, parse_record

__all__ = [
    "CHECKED_FIELDS",
    "METRICS",
    "DataCheckReport",
    "FieldCounts",
    "LanguageCheck",
    "SubjectFinding",
    "check_records",
    "load_edit_groups",
    "load_records",
    "normalize_langs",
    "parse_record",
    "read_raw_records",
    "render_report",
]
