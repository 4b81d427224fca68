"""Factual corpora for the neuron study (§3.2): plain text, MzsRE training questions, or PARAREL facts.

A corpus spec is ``LANG:PATH`` or ``LANG:KIND:PATH`` with ``KIND`` one of :data:`CORPUS_KINDS`:

- ``text``: a UTF-8 file, one sentence per line (empty lines skipped).
- ``mzsre``: an MzsRE training file (``question<TAB>answer`` per line; the question column is the
  sentence; a line without a tab is a question alone: 35 lines of each translated file lost their answer),
  or the folder holding them (``zsre_mend_train_{code}_*.txt``; the file of ``LANG`` is
  chosen, with the data set's own codes ``cz`` for Czech and ``du`` for Dutch). The files of different
  languages are line-aligned, so they make a parallel corpus.
- ``pararel``: a PARAREL folder (``patterns/P*.jsonl`` cloze patterns, ``trex/P*.jsonl`` subject/object
  tuples); English only. Each sentence is one pattern with ``[X]`` filled by a T-REx subject *and* ``[Y]``
  by its object: the paper's corpus is of factual *sentences* that it machine-translates (§3.2), and Eq. 4
  counts every token position of a sentence, so the fact's object belongs to it.

Without ``KIND``: a folder with ``patterns/`` and ``trex/`` is PARAREL, a folder of ``zsre_mend_train_*``
files, a ``zsre_mend_*`` file or a file where at least 90% of the non-empty lines hold a tab is MzsRE, any
other file is text.

Sampling is by line index with a seeded generator, so line-aligned files of equal length (MzsRE's
languages) give aligned samples under the same ``limit`` and ``seed``. PARAREL first samples at most
``per_relation`` sentences of each relation (the paper: 3,000 per relation, about 100k in all), then
``limit`` over the pooled sentences.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from mkedit.errors import DataFormatError
from mkedit.languages import ALIASES, normalize_code

CorpusKind = Literal["text", "mzsre", "pararel"]
CORPUS_KINDS: tuple[str, ...] = get_args(CorpusKind)
PARAREL_PER_RELATION = 3000  # the paper's sample per relation (§3.2)
_MZSRE_GLOB = "zsre_mend_train_{code}_*.txt"
_MZSRE_TABBED = 0.9  # share of lines with a tab that makes an unnamed file MzsRE


@dataclass(frozen=True)
class CorpusSpec:
    """One ``--corpus`` value, parsed: a canonical language code, a path, and a kind (``None``: detect)."""

    lang: str
    path: Path
    kind: CorpusKind | None = None


@dataclass(frozen=True)
class Corpus:
    """The sentences of one language, with what is needed to reproduce them."""

    lang: str
    kind: CorpusKind
    source: Path  # the file or folder read
    sentences: tuple[str, ...]
    available: int  # sentences the source holds before sampling (PARAREL: after the per-relation cap)
    source_sha256: str  # of the bytes read (PARAREL: of the relation files used, in name order)

    @property
    def sentences_sha256(self) -> str:
        """sha256 of the sampled sentences joined by newlines: equal digests, equal corpora."""
        return hashlib.sha256("\n".join(self.sentences).encode("utf-8")).hexdigest()


def parse_corpus_spec(spec: str) -> CorpusSpec:
    """``"en:FILE"`` or ``"zh:mzsre:FOLDER"`` -> :class:`CorpusSpec`; an unknown language code raises
    :class:`~mkedit.errors.UnknownLanguageError`, a value without ``LANG:`` a :class:`DataFormatError`."""
    lang, sep, rest = spec.partition(":")
    if not sep or not lang.strip() or not rest.strip():
        raise DataFormatError(f"corpus {spec!r} is not LANG:PATH (or LANG:KIND:PATH), e.g. en:sentences.txt")
    kind: CorpusKind | None = None
    head, sep, tail = rest.partition(":")
    if sep and head in CORPUS_KINDS:
        kind, rest = head, tail  # type: ignore[assignment]
    return CorpusSpec(normalize_code(lang), Path(rest).expanduser(), kind)


def load_corpus(
    spec: CorpusSpec | str,
    limit: int | None = None,
    seed: int = 0,
    per_relation: int | None = PARAREL_PER_RELATION,
) -> Corpus:
    """Read and sample one corpus; a missing, empty or malformed source raises :class:`DataFormatError`."""
    if isinstance(spec, str):
        spec = parse_corpus_spec(spec)
    if limit is not None and limit < 1:
        raise DataFormatError(f"limit must be at least 1, not {limit}")
    path = spec.path
    if not path.exists():
        raise DataFormatError(f"corpus {spec.lang}:{path}: no such file or folder")
    kind = spec.kind or _detect_kind(path)
    if kind == "pararel":
        if spec.lang != "en":
            raise DataFormatError(f"corpus {spec.lang}:{path}: PARAREL is English only; give it as en:{path}")
        sentences, digest = _pararel_sentences(path, per_relation, seed)
        source = path
    else:
        source = _mzsre_file(path, spec.lang) if kind == "mzsre" and path.is_dir() else path
        if not source.is_file():
            raise DataFormatError(f"corpus {spec.lang}:{path}: a {kind} corpus is a file, not a folder")
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        sentences = _lines(source, data, kind)
    available = sum(s is not None for s in sentences)
    if available == 0:
        raise DataFormatError(f"corpus {spec.lang}:{source} holds no sentences")
    chosen = _sample(sentences, limit, seed)
    return Corpus(spec.lang, kind, source, tuple(chosen), available, digest)


def load_corpora(
    specs: Sequence[str | CorpusSpec],
    limit: int | None = None,
    seed: int = 0,
    per_relation: int | None = PARAREL_PER_RELATION,
    min_languages: int = 2,
) -> list[Corpus]:
    """Every corpus, one per language; fewer than ``min_languages`` or a language given twice raises."""
    parsed = [parse_corpus_spec(s) if isinstance(s, str) else s for s in specs]
    langs = [p.lang for p in parsed]
    if twice := sorted({lang for lang in langs if langs.count(lang) > 1}):
        raise DataFormatError(f"language {', '.join(twice)} has more than one corpus; give one per language")
    if len(parsed) < min_languages:
        raise DataFormatError(
            f"shared neurons need corpora in at least {min_languages} languages, got {len(parsed)} "
            f"({', '.join(langs) or 'none'}); add e.g. --corpus zh:FILE"
        )
    return [load_corpus(p, limit, seed, per_relation) for p in parsed]


def _detect_kind(path: Path) -> CorpusKind:
    if path.is_dir():
        if (path / "patterns").is_dir() and (path / "trex").is_dir():
            return "pararel"
        if any(path.glob(_MZSRE_GLOB.format(code="*"))):
            return "mzsre"
        raise DataFormatError(
            f"corpus folder {path} is neither PARAREL (patterns/ and trex/) nor MzsRE (zsre_mend_train_*.txt)"
        )
    if path.name.startswith("zsre_mend_"):
        return "mzsre"
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in (raw.rstrip("\r\n") for raw in handle) if line.strip()]
    tabbed = sum("\t" in line for line in lines)
    return "mzsre" if lines and tabbed >= _MZSRE_TABBED * len(lines) else "text"


def _mzsre_file(folder: Path, lang: str) -> Path:
    codes = [lang, *sorted(alias for alias, code in ALIASES.items() if code == lang)]
    for code in codes:
        if found := sorted(folder.glob(_MZSRE_GLOB.format(code=code))):
            return found[0]
    held = sorted({p.name.split("_")[3] for p in folder.glob(_MZSRE_GLOB.format(code="*"))})
    raise DataFormatError(f"MzsRE folder {folder} has no {lang} file; its languages: {', '.join(held)}")


def _lines(source: Path, data: bytes, kind: CorpusKind) -> list[str | None]:
    """One entry per line (``None`` for an empty line, kept so that line indices stay aligned)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"corpus {source} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    out: list[str | None] = []
    for line in text.splitlines():
        if kind == "mzsre":
            line = line.split("\t", 1)[0]
        out.append(" ".join(line.split()) or None)  # MzsRE has doubled spaces ("What  is ...")
    return out


def _sample(sentences: Sequence[str | None], limit: int | None, seed: int) -> list[str]:
    """``limit`` entries chosen by index with ``Random(seed)`` (kept in file order); empty lines dropped."""
    indices = range(len(sentences))
    if limit is not None and limit < len(sentences):
        indices = sorted(random.Random(seed).sample(indices, limit))
    return [s for s in (sentences[i] for i in indices) if s is not None]


def _pararel_sentences(folder: Path, per_relation: int | None, seed: int) -> tuple[list[str | None], str]:
    """Every relation with both patterns and tuples: pattern x tuple sentences, capped per relation."""
    patterns_dir, trex_dir = folder / "patterns", folder / "trex"
    if not patterns_dir.is_dir() or not trex_dir.is_dir():
        raise DataFormatError(f"PARAREL folder {folder} needs patterns/ and trex/ subfolders")
    relations = sorted({p.name for p in patterns_dir.glob("*.jsonl")} & {p.name for p in trex_dir.glob("*.jsonl")})
    if not relations:
        raise DataFormatError(f"PARAREL folder {folder} has no relation with both patterns/ and trex/ files")
    digest = hashlib.sha256()
    out: list[str | None] = []
    for name in relations:
        patterns = [row["pattern"] for row in _jsonl(patterns_dir / name, "pattern", digest)]
        tuples = [(row["sub_label"], row["obj_label"]) for row in _jsonl(trex_dir / name, "sub_label", digest)]
        sentences = [p.replace("[X]", s).replace("[Y]", o) for p in patterns for s, o in tuples]
        if per_relation is not None and len(sentences) > per_relation:
            rng = random.Random(f"{seed}-{name}")
            sentences = [sentences[i] for i in sorted(rng.sample(range(len(sentences)), per_relation))]
        out.extend(sentences)
    return out, digest.hexdigest()


def _jsonl(path: Path, key: str, digest) -> list[dict]:
    data = path.read_bytes()
    digest.update(path.name.encode() + b"\0" + data)
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        needed = (key, "obj_label") if key == "sub_label" else (key,)
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in needed):
            raise DataFormatError(f"{path}:{number}: expected string field(s) {', '.join(needed)}")
        rows.append(row)
    return rows
