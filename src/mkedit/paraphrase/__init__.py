"""Paraphrases of edit questions for locating neurons (the corpus of Eq. 4; the paper's App. A.3).

A source (a local instruct model, an OpenAI-compatible endpoint, a JSONL file) answers the paper's
instruction in each language; lines that do not name the subject are dropped, repeats too, and at most
``n`` are kept per (record, language), stored as JSON lines that ``mkedit edit``/``mkedit eval`` attach with
``--paraphrases``. A benchmark's test fields (rephrase, portability) are never used as paraphrases.
"""

from mkedit.paraphrase.attach import Attached, attach_to_groups, attach_to_records, file_sha256
from mkedit.paraphrase.filter import filter_paraphrases, normalise, subject_forms
from mkedit.paraphrase.instructions import INSTRUCTIONS, instruction
from mkedit.paraphrase.parse import parse_list
from mkedit.paraphrase.run import GenerateResult, LangSummary, generate, pending, requests_for, summarize
from mkedit.paraphrase.sources import (
    OPENAI_PIP,
    JsonlSource,
    LocalSource,
    OpenAISource,
    ParaphraseRequest,
    ParaphraseSource,
    ParaphraseSourceError,
    Sampling,
)
from mkedit.paraphrase.store import ParaphraseEntry, ParaphraseStore, read_entries

__all__ = [
    "INSTRUCTIONS",
    "OPENAI_PIP",
    "Attached",
    "GenerateResult",
    "JsonlSource",
    "LangSummary",
    "LocalSource",
    "OpenAISource",
    "ParaphraseEntry",
    "ParaphraseRequest",
    "ParaphraseSource",
    "ParaphraseSourceError",
    "ParaphraseStore",
    "Sampling",
    "attach_to_groups",
    "attach_to_records",
    "file_sha256",
    "filter_paraphrases",
    "generate",
    "instruction",
    "normalise",
    "parse_list",
    "pending",
    "read_entries",
    "requests_for",
    "subject_forms",
    "summarize",
]
