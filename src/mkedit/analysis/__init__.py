"""Analyses of a model's neurons: the paper's §3.2 study of language-agnostic factual neurons (Fig. 1)."""

from __future__ import annotations

from mkedit.analysis.corpora import CORPUS_KINDS, Corpus, CorpusSpec, load_corpora, load_corpus, parse_corpus_spec
from mkedit.analysis.lafn_study import (
    STUDY_BETA,
    LafnStudy,
    LayerRow,
    count_corpus,
    run_lafn_study,
    select_study,
)
from mkedit.analysis.outputs import csv_columns, load_counts, save_counts, write_csv, write_plot

__all__ = [
    "CORPUS_KINDS",
    "STUDY_BETA",
    "Corpus",
    "CorpusSpec",
    "LafnStudy",
    "LayerRow",
    "count_corpus",
    "csv_columns",
    "load_corpora",
    "load_corpus",
    "load_counts",
    "parse_corpus_spec",
    "run_lafn_study",
    "save_counts",
    "select_study",
    "write_csv",
    "write_plot",
]
