"""Specificity probes for benchmark records: questions about the edited subject that ask another relation.

Three sources, each optional per record (``SOURCES``):

* ``field``: the record's own ``specificity`` lists (edit files), taken as written;
* ``dataset``: other records of the same file that share the subject (its English form when the file has
  English, else the language's own) and whose English question asks a relation family that differs from
  the edit's (:mod:`mkedit.data.relations`); their questions in each language become probes. In Bi-ZsRE
  and MzsRE the records that share a subject ask the same relation in other words, so this source finds
  nothing there by design (README, Specificity);
* ``templates``: relation templates per language (``specificity_templates.json``, or a file the user
  gives), filled with the record's subject in that language; a template whose relation family the edit
  asks is left out for that record.

Probes equal to one of the record's own test prompts are dropped, and each language keeps one copy of a
question.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mkedit.data.relations import relations_differ, relations_of
from mkedit.errors import DataFormatError, UnknownLanguageError
from mkedit.languages import normalize_code
from mkedit.types import BenchmarkRecord, Probe

SOURCES: tuple[str, ...] = ("field", "dataset", "templates")
DEFAULT_TEMPLATES = "specificity_templates.json"


@dataclass(frozen=True)
class RelationTemplate:
    """One relation's question in each language (``{s}`` = the subject) and its relation family."""

    name: str
    family: str
    templates: Mapping[str, str]


def parse_sources(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"field,dataset,templates"`` (or ``"none"``/empty) into a tuple of known sources, in canonical order."""
    if value is None:
        return SOURCES
    items = [x.strip() for x in value.split(",")] if isinstance(value, str) else [str(x).strip() for x in value]
    items = [x for x in items if x and x != "none"]
    unknown = [x for x in items if x not in SOURCES]
    if unknown:
        raise ValueError(f"unknown specificity source(s) {unknown}; choose from {', '.join(SOURCES)} or 'none'")
    return tuple(s for s in SOURCES if s in items)


def load_templates(path: str | Path | None = None, packaged: str = DEFAULT_TEMPLATES) -> tuple[RelationTemplate, ...]:
    """The relation templates of ``path`` (default: the packaged set named ``packaged``), checked."""
    if path is None:
        text = resources.files("mkedit.data").joinpath(packaged).read_text(encoding="utf-8")
        name = packaged
    else:
        path = Path(path)
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{name}: cannot read the specificity templates ({exc})") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{name}: not JSON ({exc})") from exc
    relations = obj.get("relations") if isinstance(obj, dict) else None
    if not isinstance(relations, dict) or not relations:
        raise DataFormatError(f'{name}: expected {{"relations": {{NAME: {{"family": ..., "templates": ...}}}}}}')
    out = []
    for rel, spec in relations.items():
        where = f"{name}: relation {rel!r}"
        if not isinstance(spec, dict) or not isinstance(spec.get("templates"), dict) or not spec["templates"]:
            raise DataFormatError(f"{where} needs a non-empty object 'templates' of language -> question")
        family = spec.get("family", rel)
        if not isinstance(family, str) or not family:
            raise DataFormatError(f"{where}: 'family' must be a non-empty string")
        templates: dict[str, str] = {}
        for lang, template in spec["templates"].items():
            try:
                code = normalize_code(lang)
            except UnknownLanguageError as exc:
                raise DataFormatError(f"{where}: {exc}") from exc
            if not isinstance(template, str) or template.count("{s}") != 1:
                raise DataFormatError(f"{where}, language {lang!r}: a template must hold '{{s}}' exactly once")
            templates[code] = template
        out.append(RelationTemplate(rel, family, templates))
    return tuple(out)


def _parts(raw: Any) -> dict[str, Mapping[str, Any]]:
    """``{canonical_code: part}`` of a raw record, skipping what does not parse (it is not this record)."""
    if not isinstance(raw, Mapping):
        return {}
    parts = {}
    for key, part in raw.items():
        try:
            code = normalize_code(key) if isinstance(key, str) else None
        except UnknownLanguageError:
            code = None
        if code and isinstance(part, Mapping):
            parts[code] = part
    return parts


def _field(part: Mapping[str, Any] | None, key: str) -> str | None:
    value = part.get(key) if part is not None else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _subject_key(parts: Mapping[str, Mapping[str, Any]], lang: str) -> str | None:
    """What makes two records "about the same subject": the English subject when present, else ``lang``'s."""
    subject = _field(parts.get("en"), "subject") or _field(parts.get(lang), "subject")
    return subject.casefold() if subject else None


def _edit_families(parts: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    english = parts.get("en")
    question, subject = _field(english, "src"), _field(english, "subject")
    return relations_of(question, subject or "") if question else frozenset()


class _DatasetIndex:
    """Records of one file grouped by subject, with the relation families their English question asks."""

    def __init__(self, raw_records: Sequence[Any], langs: Sequence[str]) -> None:
        self.parts = [_parts(raw) for raw in raw_records]
        self.families = [_edit_families(p) for p in self.parts]
        self.by_subject: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, parts in enumerate(self.parts):
            for lang in langs:
                if (key := _subject_key(parts, lang)) is not None:
                    self.by_subject[(lang, key)].append(index)

    def probes(self, index: int, lang: str) -> list[Probe]:
        key = _subject_key(self.parts[index], lang)
        out = []
        for other in self.by_subject.get((lang, key or ""), []):
            if other == index or not relations_differ(self.families[index], self.families[other]):
                continue
            if question := _field(self.parts[other].get(lang), "src"):
                out.append(Probe(question, "dataset", "+".join(sorted(self.families[other]))))
        return out


def _template_probes(
    record: BenchmarkRecord, lang: str, families: frozenset[str], templates: Sequence[RelationTemplate]
) -> list[Probe]:
    subject = record.group.request(lang).subject
    return [
        Probe(t.templates[lang].replace("{s}", subject), "templates", t.name)
        for t in templates
        if lang in t.templates and t.family not in families
    ]


def attach_probes(
    records: Sequence[BenchmarkRecord],
    raw_records: Sequence[Any],
    indices: Sequence[int],
    sources: Sequence[str] = SOURCES,
    templates: Sequence[RelationTemplate] | None = None,
) -> list[BenchmarkRecord]:
    """``records`` with their Specificity probes from ``sources``.

    ``raw_records`` is the whole file the records come from (the dataset source looks at every record of
    it) and ``indices[i]`` the position of ``records[i]`` in it.
    """
    if len(records) != len(indices):
        raise ValueError("attach_probes needs one file index per record")
    if "templates" in sources and templates is None:
        templates = load_templates()
    langs = list(dict.fromkeys(lang for r in records for lang in r.group.langs))
    dataset = _DatasetIndex(raw_records, langs) if "dataset" in sources else None
    out = []
    for record, index in zip(records, indices, strict=True):
        families = _edit_families(_parts(raw_records[index]))
        probes: dict[str, tuple[Probe, ...]] = {}
        for lang in record.group.langs:
            found = list(record.probes.get(lang, ())) if "field" in sources else []
            if dataset is not None:
                found += dataset.probes(index, lang)
            if templates:
                found += _template_probes(record, lang, families, templates)
            own_prompts = {case.prompt.strip() for case in record.tests.get(lang, {}).values()}
            kept: dict[str, Probe] = {}
            for probe in found:
                text = probe.question.strip()
                if text not in own_prompts and text not in kept:
                    kept[text] = probe
            if kept:
                probes[lang] = tuple(kept.values())
        out.append(dataclasses.replace(record, probes=probes))
    return out
