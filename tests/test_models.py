"""Models: offline tiny models (deterministic, reloadable with the Auto classes), the registry, and
score models (head restored or initialised, end score at the last real token for either padding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align_core.errors import UsageError
from align_core.models import (
    build_tiny_model,
    causal_lm_class,
    last_real_token_index,
    load_causal_lm,
    load_config,
    load_score_model,
    load_tokenizer,
    register_model,
    registry,
)

SMALL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("llama"), seed=0, hidden_size=64, num_layers=2, num_heads=4)


def test_same_seed_gives_byte_identical_files_and_another_seed_other_weights(tmp_path):
    first = build_tiny_model(tmp_path / "a", seed=7, **SMALL)
    second = build_tiny_model(tmp_path / "b", seed=7, **SMALL)
    other = build_tiny_model(tmp_path / "c", seed=8, **SMALL)
    names = sorted(path.name for path in first.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(names)
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_building_does_not_touch_the_callers_random_state(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", **SMALL)
    assert torch.equal(torch.rand(3), expected)


def test_default_tiny_model_has_a_few_million_parameters_and_reloads_offline(tmp_path):
    folder = build_tiny_model(tmp_path / "default")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert 2_000_000 < sum(parameter.numel() for parameter in model.parameters()) < 8_000_000
    conversation = [{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Simmer it."}]
    encoded = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    trained = encoded["input_ids"][encoded["assistant_masks"].bool()]
    assert tokenizer.decode(trained) == "Simmer it.<|im_end|>"
    logits = model(input_ids=encoded["input_ids"]).logits
    assert logits.shape == (1, encoded["input_ids"].shape[1], len(tokenizer))


@pytest.mark.parametrize("arch, model_class", [("qwen2", "Qwen2ForCausalLM"), ("mistral", "MistralForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_other_architectures_build_and_load_through_the_registry(tmp_path, arch, model_class):
    folder = build_tiny_model(tmp_path / arch, arch=arch, **SMALL)
    model = load_causal_lm(folder)
    tokenizer = load_tokenizer(folder)
    assert type(model).__name__ == model_class
    # Qwen2's own tokenizer class replaces the pre-tokenizer and adds a token when loading: the
    # saved files must already be what it loads, or the embedding would be one row short.
    assert model.config.vocab_size == len(tokenizer)
    conversation = [{"role": "user", "content": "Hi there."}, {"role": "assistant", "content": "Hello, friend."}]
    encoded = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    trained = [token for token, mask in zip(encoded["input_ids"], encoded["assistant_masks"]) if mask]
    assert tokenizer.decode(trained) == "Hello, friend.<|im_end|>"


def test_unknown_arch_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown tiny-model arch 'bert'"):
        build_tiny_model(tmp_path / "x", arch="bert", **SMALL)


def test_missing_path_and_hub_id_are_clear_errors_without_network():
    with pytest.raises(UsageError, match="'/no/such/model' is not a local folder"):
        load_causal_lm("/no/such/model")
    with pytest.raises(UsageError, match="tokenizer path 'gpt2' is not a local folder"):
        load_tokenizer("gpt2")


def test_registered_causal_lm_class_overrides_the_auto_mapping(tiny_llama, monkeypatch):
    from transformers import LlamaForCausalLM

    class PatchedLlama(LlamaForCausalLM):
        pass

    monkeypatch.setattr(registry, "_ENTRIES", {})
    config = load_config(tiny_llama)
    assert causal_lm_class(config) is LlamaForCausalLM
    register_model("llama", causal_lm=PatchedLlama)
    assert causal_lm_class(config) is PatchedLlama
    assert type(load_causal_lm(tiny_llama)) is PatchedLlama


# ----- score models -----------------------------------------------------------------------------------


def test_last_real_token_index_for_right_left_and_no_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_real_token_index(mask).tolist() == [2, 4, 4, 0]


def test_score_model_from_a_causal_lm_keeps_its_base_and_initialises_a_head(tiny_llama):
    torch.manual_seed(0)
    score_model = load_score_model(tiny_llama)
    causal_lm = load_causal_lm(tiny_llama)
    assert type(score_model).__name__ == "LlamaForScore"
    base, lm_base = score_model.model.state_dict(), causal_lm.model.state_dict()
    assert base.keys() == lm_base.keys() and all(torch.equal(base[key], lm_base[key]) for key in base)
    assert score_model.score_head.weight.shape == (1, 64) and score_model.score_head.weight.abs().sum() > 0
    assert torch.count_nonzero(score_model.score_head.bias) == 0


def test_end_score_is_the_score_of_the_last_real_token_for_either_padding(tiny_llama):
    score_model = load_score_model(tiny_llama).eval()
    tokens = [11, 200, 37, 512]
    pad = 0
    right = torch.tensor([tokens + [pad, pad]])
    left = torch.tensor([[pad, pad] + tokens])
    with torch.no_grad():
        out_right = score_model(right, attention_mask=(torch.arange(6) < 4).long().unsqueeze(0))
        out_left = score_model(left, attention_mask=(torch.arange(6) >= 2).long().unsqueeze(0))
        unpadded = score_model(torch.tensor([tokens]))
    assert out_right.scores.shape == (1, 6) and out_right.end_scores.shape == (1,)
    assert out_right.end_index.tolist() == [3] and out_left.end_index.tolist() == [5]
    assert out_right.end_scores[0] == out_right.scores[0, 3]
    # Llama's rotary positions are relative, so padding on either side must not move the end score.
    torch.testing.assert_close(out_right.end_scores, unpadded.end_scores)
    torch.testing.assert_close(out_left.end_scores, unpadded.end_scores)


def test_saved_score_model_restores_its_head_and_is_not_a_causal_lm(tiny_llama, tmp_path):
    score_model = load_score_model(tiny_llama)
    with torch.no_grad():
        score_model.score_head.weight.fill_(0.25)
        score_model.score_head.bias.fill_(-1.5)
    score_model.save_pretrained(tmp_path / "rm")
    restored = load_score_model(tmp_path / "rm")
    assert torch.equal(restored.score_head.weight, score_model.score_head.weight)
    assert restored.score_head.bias.item() == -1.5
    assert load_config(tmp_path / "rm").architectures == ["LlamaForScore"]
    with pytest.raises(UsageError, match="holds a score model"):
        load_causal_lm(tmp_path / "rm")


def test_score_model_on_gpt2_keeps_gpt2s_base_prefix(tmp_path):
    folder = build_tiny_model(tmp_path / "gpt2", arch="gpt2", **SMALL)
    score_model = load_score_model(folder)
    causal_lm = load_causal_lm(folder)
    assert type(score_model).__name__ == "GPT2ForScore" and score_model.base_model_prefix == "transformer"
    assert torch.equal(score_model.transformer.wte.weight, causal_lm.transformer.wte.weight)


def test_score_model_trains_its_end_score(tiny_llama):
    score_model = load_score_model(tiny_llama)
    optimizer = torch.optim.AdamW(score_model.parameters(), lr=1e-2)
    batch = torch.tensor([[5, 6, 7, 8]])
    for _ in range(5):
        loss = -score_model(batch).end_scores.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert score_model(batch).end_scores.item() > -loss.item()


def test_tiny_model_cli_prints_the_folder_last(tmp_path):
    from typer.testing import CliRunner

    from alignflow.cli import app

    result = CliRunner().invoke(
        app, ["tiny-model", "--arch", "qwen2", "--out", str(tmp_path / "cli"), "--seed", "3", "--hidden-size", "32",
              "--num-layers", "1", "--num-heads", "2"]
    )
    assert result.exit_code == 0, result.output
    folder = Path(result.stdout.strip().splitlines()[-1])
    assert folder == (tmp_path / "cli").resolve() and load_config(folder).model_type == "qwen2"
