"""Rewards for online RL: built-in rules on hand-made strings, the registry, weighted combination,
the reward-model scorer on a tiny real model, and metas joined from a materialised GSM8K dataset."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from align_core.errors import UsageError
from align_core.rewards import (
    RewardModelScorer,
    RewardSpec,
    combine_rewards,
    get_reward,
    known_rewards,
    load_reward_module,
    metas_for,
    read_metas,
    register_reward,
)


def score(name: str, completions: list[str], metas: list | None = None, **kwargs) -> list[float]:
    """The registered reward ``name`` on completions to a dummy prompt."""
    metas = metas if metas is not None else [None] * len(completions)
    return get_reward(name)(["Q?"] * len(completions), completions, metas, **kwargs)


# --- gsm8k_exact_match ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("completion", "final_answer", "expected"),
    [
        ("48/2 = 24 in May, 48+24 = 72 in all.\n#### 72", "72", 1.0),
        ("4 boxes of 250 hold 1,000 pens.\n#### 1,000", "1000", 1.0),
        ("The ticket costs $5.", "5", 1.0),
        ("She pays 5.0 dollars", "5", 1.0),
        ("It cooled to -3 degrees", "-3", 1.0),
        ("The answer is .5", "0.5", 1.0),
        ("In total 1,234.50 dollars", "1234.5", 1.0),
        ("72 at first, then 73", "72", 0.0),  # the last number counts
        ("between 3-5 apples", "-5", 0.0),  # a hyphen after a digit is a range, not a minus
        ("apples: 3,4", "34", 0.0),  # "3,4" is two numbers, not a thousands group
        ("no idea", "7", 0.0),
    ],
)
def test_gsm8k_exact_match_compares_the_last_number_with_the_final_answer(completion, final_answer, expected):
    assert score("gsm8k_exact_match", [completion], [{"final_answer": final_answer}]) == [expected]


def test_gsm8k_exact_match_names_the_row_without_a_final_answer():
    with pytest.raises(UsageError, match=r"gsm8k_exact_match.*row 1 has no meta\['final_answer'\]"):
        score("gsm8k_exact_match", ["#### 1", "#### 2"], [{"final_answer": "1"}, {"source": "x"}])


# --- format_check, length_penalty, target_word ----------------------------------------------------

def test_format_check_default_wants_a_gsm8k_answer_line():
    completions = ["So 72 in all.\n#### 72", "So 72 in all. #### 72 apples", "#### seventy-two", "#### 1,000\n"]
    assert score("format_check", completions) == [1.0, 0.0, 0.0, 1.0]


def test_format_check_full_match_needs_the_whole_completion():
    assert score("format_check", ["42", "42 apples"], pattern=r"\d+", match="full") == [1.0, 0.0]
    assert score("format_check", ["42", "42 apples"], pattern=r"\d+", match="search") == [1.0, 1.0]


def test_format_check_rejects_a_bad_pattern_by_name():
    with pytest.raises(UsageError, match=r"pattern '\(unclosed' is not a valid regex"):
        score("format_check", ["x"], pattern="(unclosed")


def test_length_penalty_is_zero_up_to_the_target_then_linear_in_characters():
    completions = ["a" * 5, "a" * 10, "a" * 14, ""]
    assert score("length_penalty", completions, target_length=10, coefficient=0.5) == [0.0, 0.0, -2.0, 0.0]


def test_length_penalty_counts_tokens_of_the_named_tokenizer(reward_model_dir):
    from align_core.models.registry import load_tokenizer

    completions = ["hello there, how are you today?", "ok"]
    lengths = [len(load_tokenizer(reward_model_dir)(text, add_special_tokens=False)["input_ids"]) for text in completions]
    assert lengths[0] > 3 and lengths[0] != len(completions[0])
    penalties = score(
        "length_penalty", completions, target_length=3, coefficient=1.0, unit="tokens", tokenizer=str(reward_model_dir)
    )
    assert penalties == [-(lengths[0] - 3), 0.0]


def test_length_penalty_in_tokens_needs_a_tokenizer():
    with pytest.raises(UsageError, match="needs kwarg 'tokenizer'"):
        score("length_penalty", ["abc"], target_length=1, unit="tokens")


def test_target_word_matches_whole_words_case_insensitively_by_default():
    completions = ["I love Bananas and banana bread", "bananas only", "BANANA!", "no fruit"]
    assert score("target_word", completions, word="banana") == [1.0, 0.0, 1.0, 0.0]
    assert score("target_word", completions, word="banana", case_sensitive=True) == [1.0, 0.0, 0.0, 0.0]


# --- registry -------------------------------------------------------------------------------------

def test_registered_function_is_found_by_name():
    @register_reward("test_rewards_exclaims")
    def exclaims(prompts, completions, metas):
        return [float(text.endswith("!")) for text in completions]

    assert get_reward("test_rewards_exclaims") is exclaims
    assert "test_rewards_exclaims" in known_rewards()


def test_unknown_reward_lists_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown reward 'no_such_reward'; known rewards: .*gsm8k_exact_match"):
        get_reward("no_such_reward")


def test_user_reward_module_from_a_py_file_registers_its_rewards(tmp_path):
    module = tmp_path / "my_rewards.py"
    module.write_text(textwrap.dedent("""
        from align_core.rewards import register_reward

        @register_reward("test_rewards_user_length")
        def user_length(prompts, completions, metas, scale=1.0):
            return [scale * len(text) for text in completions]
    """))
    load_reward_module(str(module))
    total, _ = combine_rewards([RewardSpec(name="test_rewards_user_length", kwargs={"scale": 0.5})], ["p", "p"], ["ab", "abcd"])
    assert total.tolist() == [1.0, 2.0]


def test_missing_reward_module_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="reward module .*no such file"):
        load_reward_module(str(tmp_path / "absent.py"))


# --- combination ----------------------------------------------------------------------------------

def test_combine_rewards_weights_each_source_and_reports_it_unweighted():
    specs = [
        RewardSpec(name="target_word", weight=2.0, kwargs={"word": "yes"}),
        RewardSpec(name="length_penalty", weight=0.5, kwargs={"target_length": 4, "coefficient": 1.0}),
    ]
    total, per_source = combine_rewards(specs, ["q1", "q2", "q3"], ["yes", "yes indeed", "nope"])
    assert per_source["target_word"].tolist() == [1.0, 1.0, 0.0]
    assert per_source["length_penalty"].tolist() == [0.0, -6.0, 0.0]
    assert total.tolist() == [2.0, 2.0 - 3.0, 0.0]
    assert total.dtype == torch.float32 and total.shape == (3,)


def test_two_sources_of_one_function_need_labels():
    specs = [RewardSpec(name="target_word", kwargs={"word": "a"}), RewardSpec(name="target_word", kwargs={"word": "b"})]
    with pytest.raises(UsageError, match="share a name"):
        combine_rewards(specs, ["q"], ["a b"])
    specs[1] = specs[1].model_copy(update={"label": "word_b"})
    _, per_source = combine_rewards(specs, ["q"], ["b"])
    assert {key: values.tolist() for key, values in per_source.items()} == {"target_word": [0.0], "word_b": [1.0]}


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, 1e39])  # 1e39 overflows float32
def test_non_finite_reward_names_the_function_and_row(bad_value):
    @register_reward("test_rewards_unstable")
    def unstable(prompts, completions, metas):
        return [0.0, 1.0, bad_value]

    with pytest.raises(UsageError, match=r"reward 'test_rewards_unstable' \(.*unstable\) returned .* for row 2; expected a finite"):
        combine_rewards([RewardSpec(name="test_rewards_unstable")], ["q"] * 3, ["a", "b", "c"])


def test_reward_returning_the_wrong_count_is_an_error():
    register_reward("test_rewards_short")(lambda prompts, completions, metas: [1.0])
    with pytest.raises(UsageError, match="returned 1 values for 2 completions"):
        combine_rewards([RewardSpec(name="test_rewards_short")], ["q", "q"], ["a", "b"])


def test_spec_kwargs_the_function_does_not_take_are_rejected_before_scoring():
    with pytest.raises(UsageError, match=r"reward 'target_word' \(target_word\): kwargs \{'wrod': 'x'\} do not fit"):
        RewardSpec(name="target_word", kwargs={"wrod": "x"}).resolve()


# --- reward-model scorer --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a score model, its head scaled up so scores differ by more than the tolerance."""
    from align_core.models.registry import load_score_model, load_tokenizer
    from align_core.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("rm")
    lm_dir = build_tiny_model(root / "lm", vocab_size=384, hidden_size=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    model = load_score_model(lm_dir)
    with torch.no_grad():
        model.score_head.weight.normal_(std=1.0)
    model.save_pretrained(root / "rm")
    load_tokenizer(lm_dir).save_pretrained(root / "rm")
    return root / "rm"


PROMPTS = [
    [{"role": "user", "content": [{"type": "text", "text": "What is two plus two?"}]}],
    "Name a colour.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
]
COMPLETIONS = ["Two plus two is four, as everyone who has counted apples will tell you.", "Red.", "Hi!"]


def manual_scores(model_dir: Path, texts: list[str]) -> list[float]:
    """Each text alone, unpadded, through the score model: the head's value at its last token."""
    from align_core.models.registry import load_score_model, load_tokenizer

    model, tokenizer = load_score_model(model_dir).eval(), load_tokenizer(model_dir)
    with torch.no_grad():
        return [
            model(input_ids=tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]).scores[0, -1].item()
            for text in texts
        ]


def test_scorer_renders_prompt_and_completion_with_the_models_chat_template(reward_model_dir):
    scorer = RewardModelScorer(reward_model_dir)
    assert scorer.texts(PROMPTS[1:2], ["Red."]) == [
        "<|bos|><|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
    ]


def test_scorer_scores_equal_a_manual_forward_of_the_same_texts(reward_model_dir):
    scorer = RewardModelScorer(reward_model_dir, batch_size=3)
    scores = scorer.score(PROMPTS, COMPLETIONS)
    expected = manual_scores(reward_model_dir, scorer.texts(PROMPTS, COMPLETIONS))
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert max(expected) - min(expected) > 0.1  # distinct rows, so a mix-up would show
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)


def test_scorer_row_score_does_not_depend_on_padding_or_batch_mates(reward_model_dir):
    alone = RewardModelScorer(reward_model_dir, batch_size=1).score(PROMPTS, COMPLETIONS)
    together = RewardModelScorer(reward_model_dir, batch_size=3).score(PROMPTS, COMPLETIONS)
    reordered = RewardModelScorer(reward_model_dir, batch_size=2).score(PROMPTS[::-1], COMPLETIONS[::-1])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered.flip(0), alone, atol=1e-5, rtol=0)


def test_reward_model_is_a_reward_source(reward_model_dir):
    spec = RewardSpec(name="reward_model", weight=2.0, kwargs={"path": str(reward_model_dir)})
    total, per_source = combine_rewards([spec], PROMPTS, COMPLETIONS)
    expected = RewardModelScorer(reward_model_dir).score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(per_source["reward_model"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(total, 2.0 * expected, atol=1e-5, rtol=0)


def test_scorer_refuses_a_folder_without_a_trained_score_head(reward_model_dir):
    with pytest.raises(UsageError, match="holds no trained score model"):
        RewardModelScorer(reward_model_dir.parent / "lm")


# --- metas from a materialised dataset ------------------------------------------------------------

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4 = <<3+4=7>>7\n#### 7"},
    {"question": "A box holds 250 pens. How many in 4 boxes?", "answer": "4*250 = <<4*250=1000>>1000\n#### 1,000"},
    {"question": "It was 2 degrees and fell by 5. Now?", "answer": "2-5 = <<2-5=-3>>-3\n#### -3"},
]


@pytest.fixture(scope="module")
def gsm8k_prompts(tmp_path_factory) -> Path:
    from align_core.materialize import materialize_dataset

    root = tmp_path_factory.mktemp("gsm8k")
    source = root / "gsm8k.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS))
    return materialize_dataset(source, "GSM8K", "prompt_only", root / "datasets", workers=1)


def test_read_metas_maps_each_row_id_to_its_meta(gsm8k_prompts):
    from align_core.shards.dataset import ShardDataset

    metas = read_metas(gsm8k_prompts)
    rows = ShardDataset(gsm8k_prompts).read_table(["id", "source_index"]).to_pylist()
    by_index = {row["source_index"]: metas[row["id"]] for row in rows}
    assert len(metas) == 3
    assert by_index == {0: {"final_answer": "7"}, 1: {"final_answer": "1000"}, 2: {"final_answer": "-3"}}


def test_joined_metas_let_gsm8k_exact_match_score_prompt_rows(gsm8k_prompts):
    from align_core.shards.dataset import ShardDataset

    rows = ShardDataset(gsm8k_prompts).read_table(["id", "prompt", "source_index"]).to_pylist()
    rows.sort(key=lambda row: row["source_index"])
    ids = [row["id"] for row in reversed(rows)]  # a batch in another order than the dataset
    answers = {0: "So 7 apples.\n#### 7", 1: "That makes 1,000.0 pens", 2: "It is 3 degrees"}
    completions = [answers[row["source_index"]] for row in reversed(rows)]
    metas = metas_for(ids, read_metas(gsm8k_prompts))
    rewards = get_reward("gsm8k_exact_match")([row["prompt"] for row in reversed(rows)], completions, metas)
    assert rewards == [0.0, 1.0, 1.0]


def test_metas_for_an_unknown_id_names_it():
    with pytest.raises(UsageError, match="'row-x'"):
        metas_for(["row-a", "row-x"], {"row-a": None})
