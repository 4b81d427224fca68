"""Plain data the library passes around: what to edit, and what an edit produced."""

from __future__ import annotations

from dataclasses import dataclass, field

from mkedit.languages import normalize_code


@dataclass(frozen=True)
class EditRequest:
    """One fact to change in one language: ``question`` should be answered by ``answer``.

    ``paraphrases`` are other phrasings of ``question`` that locate neurons (Eq. 4) and, with LU-LAFNs'
    ``train_paraphrases``, are trained on too; the test inputs of a benchmark (rephrase, portability) must
    never be put here.
    """

    lang: str
    subject: str
    question: str
    answer: str
    paraphrases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lang", normalize_code(self.lang))
        for name in ("subject", "question", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"EditRequest.{name} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class EditGroup:
    """The same fact in several languages, edited together (the paper's group G)."""

    requests: tuple[EditRequest, ...]
    group_id: str = ""
    aligned_subjects: tuple[str, ...] = ()
    """Every language's subject of the fact in its source (the paper's aligned set S_G), beyond the
    requests' own: a question that names the subject in another language's form is placed with it."""

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError("an EditGroup needs at least one EditRequest")
        langs = [r.lang for r in self.requests]
        if len(set(langs)) != len(langs):
            raise ValueError(f"an EditGroup holds one request per language, got {langs}")

    @property
    def langs(self) -> list[str]:
        return [r.lang for r in self.requests]

    def request(self, lang: str) -> EditRequest:
        code = normalize_code(lang)
        for req in self.requests:
            if req.lang == code:
                return req
        raise KeyError(f"edit group {self.group_id!r} has no language {code!r} (has {self.langs})")

    def restrict(self, langs: list[str]) -> EditGroup:
        """The same group keeping only ``langs`` (in that order)."""
        return EditGroup(tuple(self.request(lang) for lang in langs), self.group_id, self.subject_set)

    @property
    def subject_set(self) -> tuple[str, ...]:
        """The requests' subjects, then the other aligned subjects, without repeats."""
        return tuple(dict.fromkeys([*(r.subject for r in self.requests), *self.aligned_subjects]))

    def other_subjects(self, lang: str) -> tuple[str, ...]:
        """The aligned subjects other than ``lang``'s own, in :attr:`subject_set` order."""
        own = self.request(lang).subject
        return tuple(s for s in self.subject_set if s != own)


@dataclass(frozen=True)
class TestCase:
    """A benchmark input with its expected answer (Reliability, Generality, Locality, Portability)."""

    __test__ = False  # not a pytest test class, despite the name

    prompt: str
    target: str


@dataclass(frozen=True)
class Probe:
    """A Specificity probe: a question about the edited subject that asks *another* relation.

    It has no gold answer: the post-edit answer must equal the model's own pre-edit answer.
    ``source`` says where it came from (``field``, ``dataset`` or ``templates``), ``relation`` what
    it asks when known (a template's relation, or the relation family of a dataset question).
    """

    question: str
    source: str
    relation: str = ""


@dataclass(frozen=True)
class BenchmarkRecord:
    """One benchmark record: the edit group plus, per language, the test cases of each metric and the
    Specificity probes."""

    record_id: str
    group: EditGroup
    tests: dict[str, dict[str, TestCase]] = field(default_factory=dict)  # lang -> metric -> case
    probes: dict[str, tuple[Probe, ...]] = field(default_factory=dict)  # lang -> probes
