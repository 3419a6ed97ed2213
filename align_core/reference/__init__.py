"""Reference log-probabilities for the preference family: scored once, cached beside the token cache.

Public API::

    compute_reference_logps(token_cache_dir, reference_model, pairing="matched", *, dtype, batch_size,
                            device, trust_remote_code) -> Path   # <token_cache_dir>/reference/<key>/
    reference_dir(token_cache_dir, reference_model, pairing, dtype) -> Path   # without computing
    read_reference_logps(folder, rows) -> (n, k) float32
    model_weights_digest(model_dir) -> str
    ResponseScorer(causal_lm)      # forward(input_ids, attention_mask, labels, **model_inputs) -> SequenceLogps
    score_sequences(scorer, batch) -> SequenceLogps   # sum, mean, n_tokens of each sequence's response
    MismatchedRows(rows)           # KTO: row i's prompt with row (i+1) % n's completion
    ScoredRows / ScoredCollator    # token rows + cached columns + mismatched pairs, batched
"""

from align_core.reference.cache import (
    PAIRINGS,
    ReferenceSpec,
    compute_reference_logps,
    is_complete,
    model_weights_digest,
    read_reference_logps,
    reference_dir,
)
from align_core.reference.mismatched import MismatchedRows, mismatched_sequence
from align_core.reference.rows import ScoredCollator, ScoredRows
from align_core.reference.scoring import (
    ResponseScorer,
    SequenceLogps,
    load_frozen_scorer,
    response_logps,
    score_sequences,
)

__all__ = [
    "PAIRINGS",
    "MismatchedRows",
    "ReferenceSpec",
    "ResponseScorer",
    "ScoredCollator",
    "ScoredRows",
    "SequenceLogps",
    "compute_reference_logps",
    "is_complete",
    "load_frozen_scorer",
    "mismatched_sequence",
    "model_weights_digest",
    "read_reference_logps",
    "reference_dir",
    "response_logps",
    "score_sequences",
]
