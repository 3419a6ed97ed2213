"""Tokenisation with label masks and an explicit truncation policy, the token cache, collators, sampling.

Public API::

    tokenize_dataset(dataset_dir, tokenizer_path, max_length, truncation="drop", cache_root=None,
                     *, assistant_turns="all", trust_remote_code=False) -> Path   # the cache folder
    token_cache_key(dataset_dir, tokenizer_path, max_length, truncation="drop", *, assistant_turns="all") -> str
    TokenDataset(cache_dir)            # torch Dataset: .kind, .lengths (n,), .pad_token_id, .collator()
    Collator(kind, pad_token_id, pad_to_multiple_of=None)   # rows -> a padded Batch of (b, L) / (2b, L)
    Batch, ModelInput, forward(model, batch)   # tokens + extra model inputs; the one way to call a model
    TokenizeSpec(dataset_dir, tokenizer_path, max_length, ...)   # .key(), .cache_dir(), .build()
    LengthGroupedSampler(lengths, batch_size, *, seed, rank, world_size, group_by_length=True)
    pad_fraction(lengths, batches) -> float
    ConversationEncoder(formatter, max_length, truncation, assistant_turns)  # rows -> token ids + labels
    Truncation: drop | truncate_prompt_left | error;  IGNORE_INDEX = -100
"""

from align_core.data.batch import Batch, Layout, ModelInput, forward
from align_core.data.collate import Collator, pad_sequences
from align_core.data.encode import ConversationEncoder
from align_core.data.sampler import LengthGroupedSampler, pad_fraction
from align_core.data.token_cache import (
    TokenizeSpec,
    default_cache_root,
    read_token_manifest,
    token_cache_key,
    tokenize_dataset,
)
from align_core.data.token_dataset import TokenDataset
from align_core.data.truncation import IGNORE_INDEX, Truncation, parse_truncation

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "Collator",
    "ConversationEncoder",
    "Layout",
    "LengthGroupedSampler",
    "ModelInput",
    "TokenDataset",
    "TokenizeSpec",
    "Truncation",
    "default_cache_root",
    "forward",
    "pad_fraction",
    "pad_sequences",
    "parse_truncation",
    "read_token_manifest",
    "token_cache_key",
    "tokenize_dataset",
]
