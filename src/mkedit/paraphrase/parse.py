"""Read a model's list of questions out of free text.

Instruct models answer "give me N questions" with a numbered or bulleted list, often behind a preamble
("Here are 30 questions:") and sometimes with markdown, quotes, or several items run together on one line.
Only the items are wanted; anything else is dropped here or, failing that, by the subject filter.
"""

from __future__ import annotations

import re

# "1." "1)" "(1)" "1:" "1、" "１." "Q1:" "#1" "**1.**", or a bullet: - * • · ‣ ▪ –
_MARKER = re.compile(
    r"""^\s*(?:\*\*)?\s*
    (?:
        [(（]?\s*(?:[Qq]\s*)?\#?[0-9０-９]{1,3}\s*[.)）:：、．]\s*(?:\*\*)?
      | [-*•·‣▪–]\s+
    )""",
    re.VERBOSE,
)
# a new numbered item starting right after a question mark on the same line: "... Brno? 2. Which ..."
_RUN_ON = re.compile(r"(?<=[?？])\s*(?=(?:\*\*)?[0-9]{1,3}[.)、]\s)")
_QUOTES = "\"'“”„«»「」『』‘’`"


def _clean(item: str) -> str:
    """An item without markdown emphasis and surrounding quotes."""
    item = item.strip()
    if item.startswith("**") and item.endswith("**") and len(item) > 4:
        item = item[2:-2].strip()
    item = item.replace("**", "").strip()
    while len(item) > 1 and item[0] in _QUOTES and item[-1] in _QUOTES:
        item = item[1:-1].strip()
    return item


def parse_list(text: str) -> list[str]:
    """The items of a numbered or bulleted list in ``text``, in order, cleaned of markers and quotes.

    When some lines carry list markers, only those lines are items (a preamble or closing remark is
    dropped); when none do, every non-empty line is an item. Headers (lines ending with a colon) and
    code fences are never items. Duplicates are kept: deduplication is the filter's job.
    """
    lines = [piece for line in text.splitlines() for piece in _RUN_ON.split(line)]
    lines = [line for line in lines if line.strip() and not line.strip().startswith("```")]
    marked = [_MARKER.match(line) for line in lines]
    items = lines
    if any(marked):  # a list: its items only, without the preamble and closing remarks
        items = [line[m.end() :] for line, m in zip(lines, marked, strict=True) if m is not None]
    cleaned = (_clean(item) for item in items)
    return [item for item in cleaned if item and not item.endswith((":", "："))]


def has_items(text: str, n: int) -> bool:
    """True once ``text`` holds ``n`` finished items (lines ended by a newline; ``n + 1`` lines when nothing is
    marked as a list, one being a likely preamble): a model that goes on after its list can stop there."""
    complete = text[: text.rfind("\n") + 1]
    marked = any(_MARKER.match(line) for line in complete.splitlines())
    return len(parse_list(complete)) >= (n if marked else n + 1)
