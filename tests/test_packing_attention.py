"""Packing under each attention implementation: sdpa, eager and flex_attention get the block-causal mask that
transformers builds from a packed batch's position_ids, FlashAttention the batch's varlen boundaries (here through
transformers' own FlashAttention path, with a reference kernel in place of the CUDA one); without those
boundaries the same rows attend across sequences; a model that would read neither is refused in one line."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from train_data import tiny_model  # noqa: F401

from align_core.data.batch import forward
from align_core.data.packing import pack_sequences
from align_core.errors import UsageError

LENGTHS = (9, 4, 6, 3)  # into 2 rows of 12: [9, 3] and [6, 4] + 2 padding


def packed_sequences() -> tuple[list[torch.Tensor], object]:
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, 300, (n,), generator=generator) for n in LENGTHS]
    return sequences, pack_sequences(sequences, sequences, pad_token_id=0, capacity=12)


def largest_difference_from_alone(model, logits: torch.Tensor, packed, sequences: list[torch.Tensor]) -> list[float]:
    """Per sequence: how far its packed logits are from the logits of the sequence run alone."""
    owners = packed.packing.sequence_index
    differences = []
    with torch.no_grad():
        for index, sequence in enumerate(sequences):
            alone = model(input_ids=sequence[None], use_cache=False).logits[0]
            differences.append((logits[owners == index] - alone).abs().max().item())
    return differences


def load(tiny_model, implementation: str = "sdpa"):
    from align_core.models.registry import load_causal_lm

    return load_causal_lm(tiny_model, attn_implementation=implementation).eval()


@pytest.mark.parametrize("implementation", ["sdpa", "eager", "flex_attention"])
def test_each_attention_implementation_keeps_packed_sequences_apart(implementation, tiny_model):
    model = load(tiny_model, implementation)
    sequences, packed = packed_sequences()
    with torch.no_grad():
        logits = forward(model, packed).logits
    assert max(largest_difference_from_alone(model, logits, packed, sequences)) < 1e-5


def small_model(architecture: str):
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    if architecture == "gpt2":  # learned absolute positions: read at each sequence's own positions
        return GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=64, n_layer=2, n_head=4, n_positions=64)).eval()
    # a window of 4 tokens, shorter than three of the sequences: "alone" attends within it, so must packed
    config = MistralConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4)
    return MistralForCausalLM(config).eval()


@pytest.mark.parametrize("architecture", ["gpt2", "mistral-sliding-window"])
def test_learned_positions_and_sliding_windows_keep_packed_sequences_apart(architecture):
    model = small_model(architecture)
    sequences, packed = packed_sequences()
    with torch.no_grad():
        logits = forward(model, packed).logits
    assert max(largest_difference_from_alone(model, logits, packed, sequences)) < 1e-5


def test_without_its_boundaries_a_packed_row_attends_across_sequences(tiny_model):
    model = load(tiny_model)
    sequences, packed = packed_sequences()
    with torch.no_grad():  # positions counting through each row: one causal sequence per row
        logits = model(input_ids=packed.input_ids, use_cache=False).logits
    first_in_row_0, second_in_row_1, first_in_row_1, second_in_row_0 = largest_difference_from_alone(
        model, logits, packed, sequences
    )
    assert first_in_row_0 < 1e-5 and first_in_row_1 < 1e-5  # nothing before them in their row
    assert second_in_row_0 > 1e-2 and second_in_row_1 > 1e-2


def reference_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Causal attention of one sequence, (T, heads, dim) -> (T, heads, dim)."""
    query, key, value = (tensor.transpose(0, 1) for tensor in (query, key, value))
    return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn's dense kernel: each row of (b, L, heads, dim) one causal sequence."""
    assert causal
    return torch.stack([reference_attention(q[row], k[row], v[row], softmax_scale) for row in range(len(q))])


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False):
    """flash_attn's varlen kernel: (T, heads, dim) tokens, the sequences between consecutive ``cu_seqlens``."""
    assert causal and torch.equal(cu_seqlens_q, cu_seqlens_k) and int(cu_seqlens_q[-1]) == len(q)
    bounds = cu_seqlens_q.tolist()
    assert max_seqlen_q == max(end - start for start, end in itertools.pairwise(bounds))
    return torch.cat([reference_attention(q[start:end], k[start:end], v[start:end], softmax_scale)
                      for start, end in itertools.pairwise(bounds)])


def test_flash_attention_reads_the_packed_batch_varlen_boundaries(tiny_model, monkeypatch):
    import transformers.modeling_flash_attention_utils as flash_utils

    # transformers' FlashAttention path as it runs on a GPU, with these kernels in place of the flash_attn package
    monkeypatch.setattr(flash_utils, "_lazy_imports", lambda *args, **kwargs: (
        flash_attn_func, flash_attn_varlen_func, None, flash_utils._pad_input, flash_utils._unpad_input))
    monkeypatch.setattr(flash_utils, "_loaded_implementation", None)
    model = load(tiny_model)
    model.config._attn_implementation = "flash_attention_2"
    sequences, packed = packed_sequences()
    with torch.no_grad():
        logits = forward(model, packed).logits
        positions_only = model(input_ids=packed.input_ids, position_ids=packed.packing.position_ids, use_cache=False).logits
    assert max(largest_difference_from_alone(model, logits, packed, sequences)) < 1e-5
    # from position_ids alone transformers finds the sequences of a one-row batch only: these two rows run dense
    assert max(largest_difference_from_alone(model, positions_only, packed, sequences)) > 1e-2


def test_an_attention_implementation_given_no_boundaries_is_refused_in_one_line(tiny_model):
    model = load(tiny_model)
    model.config._attn_implementation = "paged|sdpa"  # continuous batching's: its cache decides what attends
    with pytest.raises(UsageError) as raised:
        forward(model, packed_sequences()[1])
    assert str(raised.value) == (
        "train_cfgs.packing: the 'paged|sdpa' attention implementation is given no sequence boundaries; load the model "
        "with one of sdpa, eager, flex_attention, flash_attention_2, flash_attention_3, flash_attention_4 or set packing: false"
    )


def test_a_model_that_builds_its_mask_without_masking_utils_is_refused(tiny_model):
    from transformers import LlamaModel

    class HandMaskedModel(LlamaModel):  # defined here, where create_causal_mask is not imported
        pass

    model = HandMaskedModel(load(tiny_model).config)
    with pytest.raises(UsageError, match=r"^train_cfgs.packing: HandMaskedModel builds its attention mask without "
                                         r"transformers.masking_utils, so packed sequences would attend to each other"):
        forward(model, packed_sequences()[1])
