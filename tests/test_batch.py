"""The batch type: extra model inputs follow their rows through selection, splitting and stacking, and
reach the model through the one forward function, with no trainer knowing their names."""

from __future__ import annotations

import pytest
import torch

from align_core.data.batch import Batch, Layout, ModelInput, forward
from align_core.reference import ResponseScorer, score_sequences


def preference_batch() -> Batch:
    """3 rows x (chosen, rejected): sequence i's tokens are all i, so selections are easy to read."""
    sequences = torch.arange(6).unsqueeze(1).repeat(1, 4)
    return Batch(
        input_ids=sequences,
        attention_mask=torch.ones_like(sequences),
        labels=sequences.clone(),
        sequences_per_row=2,
        model_inputs={
            # one image per sequence (LLaVA-style), the value marks its sequence
            "pixel_values": ModelInput(torch.arange(6.0).view(6, 1, 1, 1).repeat(1, 3, 2, 2)),
            # Qwen2-VL-style patches: sequence i owns i + 1 rows of the packed tensor
            "patches": ModelInput(
                torch.cat([torch.full((i + 1, 2), float(i)) for i in range(6)]), Layout.PACKED, torch.arange(1, 7)
            ),
            "temperature": ModelInput(torch.tensor(0.5), Layout.SHARED),
        },
        values={"ref_logps": torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])},
    )


def test_selecting_rows_keeps_both_sequences_of_each_row_and_their_inputs():
    picked = preference_batch().select_rows([2, 0])
    # sequence-major: chosen of rows 2, 0 (sequences 2, 0), then their rejected (5, 3)
    assert picked.input_ids[:, 0].tolist() == [2, 0, 5, 3]
    assert picked.model_inputs["pixel_values"].value[:, 0, 0, 0].tolist() == [2.0, 0.0, 5.0, 3.0]
    patches = picked.model_inputs["patches"]
    assert patches.counts.tolist() == [3, 1, 6, 4]
    assert patches.value[:, 0].tolist() == [2.0] * 3 + [0.0] + [5.0] * 6 + [3.0] * 4
    assert picked.model_inputs["temperature"].value.item() == 0.5
    assert picked.values["ref_logps"].tolist() == [-3.0, -1.0, -6.0, -4.0]
    assert picked.num_rows == 2 and picked.sequences_per_row == 2


def test_split_into_micro_batches_covers_every_row_once():
    parts = preference_batch().split(2)
    assert [part.num_rows for part in parts] == [2, 1]
    assert [part.input_ids[:, 0].tolist() for part in parts] == [[0, 1, 3, 4], [2, 5]]
    assert [part.model_inputs["patches"].counts.tolist() for part in parts] == [[1, 2, 4, 5], [3, 6]]
    assert len(preference_batch().split(10)) == 3  # never an empty micro-batch


def test_companions_are_selected_with_their_rows():
    batch = preference_batch()
    batch.companions["mismatched"] = preference_batch()
    assert batch.select_rows([1]).companions["mismatched"].input_ids[:, 0].tolist() == [1, 4]


def test_sequence_group_is_the_chosen_or_the_rejected_half():
    rejected = preference_batch().sequence_group(1)
    assert rejected.input_ids[:, 0].tolist() == [3, 4, 5] and rejected.sequences_per_row == 1
    assert rejected.model_inputs["patches"].counts.tolist() == [4, 5, 6]


def test_repeat_stacks_a_row_input_for_each_sequence_of_the_row():
    image = ModelInput(torch.tensor([[1.0], [2.0]]))
    assert image.repeat(2).value[:, 0].tolist() == [1.0, 2.0, 1.0, 2.0]
    packed = ModelInput(torch.tensor([[1.0], [2.0], [2.0]]), Layout.PACKED, torch.tensor([1, 2]))
    assert packed.repeat(2).counts.tolist() == [1, 2, 1, 2] and len(packed.repeat(2).value) == 6


def test_a_packed_input_needs_counts_that_cover_it():
    with pytest.raises(ValueError, match="counts"):
        ModelInput(torch.zeros(3, 2), Layout.PACKED, torch.tensor([1, 1]))


def test_trained_tokens_count_label_positions_that_predict_a_token_per_sequence_group():
    labels = torch.tensor([[-100, 5, 6], [-100, -100, 7], [5, 6, 7], [-100, -100, -100]])
    batch = Batch(labels.clamp(min=0), torch.ones_like(labels), labels, sequences_per_row=2)
    # position 0 never counts (nothing predicts it): chosen rows 2 + 1, rejected rows 2 + 0
    assert batch.trained_tokens().tolist() == [3, 2]


class BiasedLM(torch.nn.Module):
    """A causal LM stand-in whose logits depend on an input no trainer knows: ``style`` (n,)."""

    config = type("Config", (), {"model_type": "test-biased"})()

    def __init__(self, vocab: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask, style, use_cache=False):
        logits = self.embed(input_ids) + style.view(-1, 1, 1) * torch.arange(self.embed.num_embeddings)
        return type("Output", (), {"logits": logits})()


def test_a_new_model_input_reaches_the_model_through_forward_and_the_scorer():
    torch.manual_seed(0)
    model = BiasedLM()
    tokens = torch.tensor([[1, 2, 3], [1, 2, 4]])
    plain = Batch(tokens, torch.ones_like(tokens), tokens.clone())
    styled = Batch(
        tokens, torch.ones_like(tokens), tokens.clone(), model_inputs={"style": ModelInput(torch.tensor([0.0, 1.0]))}
    )
    with pytest.raises(TypeError):
        forward(model, plain)  # the model needs the input: nothing drops or invents it
    logits = forward(model, styled).logits
    assert torch.equal(logits[0], model.embed(tokens[0]))
    scored = score_sequences(ResponseScorer(model), styled)
    unstyled = score_sequences(ResponseScorer(model), styled.select_rows([0]))
    assert scored.sum[0].item() == pytest.approx(unstyled.sum[0].item())
    assert scored.sum[1].item() != pytest.approx(
        score_sequences(ResponseScorer(model), Batch(tokens[1:], torch.ones(1, 3), tokens[1:].clone(),
                                                     model_inputs={"style": ModelInput(torch.zeros(1))})).sum.item()
    )
