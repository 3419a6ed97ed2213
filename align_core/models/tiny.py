"""Offline tiny models for tests, benchmarks and the demo: no network, deterministic per seed.

``build_tiny_model(out_dir, arch="llama", seed=0, ...) -> Path`` trains a byte-level BPE tokenizer
on the corpus shipped in ``align_core/models/corpus/``, gives it a ChatML-style chat template whose
assistant turns sit inside ``{% generation %}`` markers (so ``return_assistant_tokens_mask`` and
alignflow's label masks work), builds a randomly initialised model of ``arch`` from a config, and
saves both, so ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(out_dir)`` load offline.

The same arguments give byte-identical files. Default size: Llama, hidden 256, 4 layers, ~3.7M
parameters: small enough to train on a laptop CPU, big enough that losses move like a real model's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from align_core.errors import UsageError
from align_core.io import publish_dir, staging_dir

CORPUS_DIR = Path(__file__).parent / "corpus"

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"  # also the EOS token, so generation stops at the end of an assistant turn
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, TURN_START, TURN_END]

# ChatML with the end-of-turn token inside the generation block: it is what the model must learn to
# emit, so it is trained on. Newlines are Jinja literals because HF renders with trim_blocks.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")
# Config field names that differ from the Llama names used in build_tiny_model's arguments.
_RENAMED_FIELDS: dict[str, dict[str, str]] = {"gpt2": {"intermediate_size": "n_inner", "num_key_value_heads": ""}}


def corpus_texts(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """The shipped corpus as paragraphs, in a fixed (sorted file, then file) order."""
    files = sorted(corpus_dir.glob("*.txt"))
    if not files:
        raise UsageError(f"{corpus_dir}: no *.txt corpus files to train the tokenizer on")
    return [paragraph for path in files for paragraph in path.read_text().split("\n\n") if paragraph.strip()]


def build_tiny_tokenizer(vocab_size: int = 2048, corpus_dir: Path = CORPUS_DIR) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes, no unknown token) with a BOS-adding post-processor.

    The post-processor makes ``tokenizer(text)`` prepend BOS like Llama's does, which is exactly
    the case where a chat template that also renders BOS could double it.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(corpus_dir), trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=TURN_END,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def as_auto_tokenizer_loads_it(tokenizer: PreTrainedTokenizerFast, arch: str):
    """The tokenizer exactly as ``AutoTokenizer`` will load it from a folder of model type ``arch``.

    For some model types transformers swaps in its own tokenizer class, which rebuilds the
    pre-tokenizer and adds tokens (Qwen2: its split regex, NFC and ``<|endoftext|>``). Saving that
    class's view instead of ours makes the saved files a fixed point: what tests and training
    load is what the model's vocabulary was sized for.
    """
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        AutoConfig.for_model(arch).save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, **sizes: Any):
    """A config of ``arch`` with the given sizes (Llama field names) and the tokenizer's special ids."""
    renames = _RENAMED_FIELDS.get(arch, {})
    fields = {renames.get(name, name): value for name, value in sizes.items()}
    fields.pop("", None)  # a field the architecture does not have
    return AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
) -> Path:
    """Train the tokenizer, build a random ``arch`` model seeded by ``seed``, save both to ``out_dir``.

    ``vocab_size`` is the BPE target; the model's vocabulary is the tokenizer's actual size.
    ``intermediate_size`` defaults to 2 x ``hidden_size``. Returns ``out_dir``.
    """
    if hidden_size % num_heads:
        raise UsageError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    out_dir = Path(out_dir)
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown tiny-model arch {arch!r}; expected one of: {', '.join(ARCHITECTURES)}")
    tokenizer = as_auto_tokenizer_loads_it(build_tiny_tokenizer(vocab_size), arch)
    config = tiny_config(
        arch,
        tokenizer,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
    )
    # A private RNG stream: the weights depend on ``seed`` only, and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = staging_dir(out_dir)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    publish_files(staging, out_dir)
    return out_dir


def publish_files(staging: Path, out_dir: Path) -> None:
    """Move a finished staging folder into ``out_dir``: one rename if new, else file by file (each atomic)."""
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if publish_dir(staging, out_dir):
            return
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()
