"""``truncate_prompt_left`` never leaves a row without its prompt: the kept sequence is BOS then whole
messages, every trained turn keeps its chat-template header, at least one user message stays, and
chosen and rejected lose the same tokens. Expected tokens are built piece by piece as in
test_tokenize (each ChatML piece tokenised on its own)."""

from __future__ import annotations

from test_tokenize import (  # noqa: F401 (fixtures)
    LONG_PROMPT,
    Pieces,
    assistant,
    encode_rows,
    formatter,
    tokenizer_dir,
    user,
    write_dataset,
)

from align_core.data import IGNORE_INDEX, Truncation, tokenize_dataset
from align_core.data.token_cache import read_token_manifest
from align_core.shards.schema import Kind

CUT = Truncation.TRUNCATE_PROMPT_LEFT


def full_length(formatter, kind, row, assistant_turns="all") -> int:
    """The longest sequence of ``row`` untruncated."""
    (encoded,), _ = encode_rows(formatter, kind, [row], assistant_turns=assistant_turns)
    return max(len(sequence.input_ids) for sequence in encoded.sequences)


def trained_text(tokenizer, labels) -> str:
    return tokenizer.decode([label for label in labels if label != IGNORE_INDEX])


def test_long_prompt_cut_keeps_bos_then_whole_turns_with_the_trained_header_intact(formatter):
    tokenizer = formatter.tokenizer
    messages = [
        {"role": "system", "content": "You are brief."},
        user(LONG_PROMPT),
        assistant("Noted."),
        user("Is it cold in the mountains?"),
        assistant("Yes, very cold."),
    ]
    row = {"messages": messages}
    # A token-exact cut would stop inside the "Noted." turn's "<|im_start|>assistant\n" header.
    through_header = Pieces(tokenizer).add("<|bos|>").turn("system", "You are brief.").turn("user", LONG_PROMPT)
    through_header.add("<|im_start|>")
    max_length = full_length(formatter, Kind.SUPERVISED, row, "last") - (len(through_header.ids) - 1)
    (encoded,), outcomes = encode_rows(formatter, Kind.SUPERVISED, [row], max_length, CUT, assistant_turns="last")
    (sequence,) = encoded.sequences
    expected = Pieces(tokenizer).add("<|bos|>").turn("user", "Is it cold in the mountains?")
    expected.turn("assistant", "Yes, very cold.", trained=True)
    assert tokenizer.decode(sequence.input_ids) == (
        "<|bos|><|im_start|>user\nIs it cold in the mountains?<|im_end|>\n"
        "<|im_start|>assistant\nYes, very cold.<|im_end|>\n"
    )
    assert sequence.input_ids == expected.ids and sequence.labels == expected.labels
    assert outcomes["truncated"] == 1


def test_all_turns_training_keeps_no_label_of_a_turn_whose_start_was_cut(formatter):
    tokenizer = formatter.tokenizer
    row = {"messages": [user("Hi."), assistant(LONG_PROMPT), user("Shorter, please."), assistant("Cold.")]}
    # The cut must reach 5 tokens into the long answer's text: that whole turn goes, labels and all.
    into_answer = Pieces(tokenizer).add("<|bos|>").turn("user", "Hi.").add("<|im_start|>").add("assistant\n")
    max_length = full_length(formatter, Kind.SUPERVISED, row) - (len(into_answer.ids) - 1 + 5)
    (encoded,), outcomes = encode_rows(formatter, Kind.SUPERVISED, [row], max_length, CUT, assistant_turns="all")
    (sequence,) = encoded.sequences
    expected = Pieces(tokenizer).add("<|bos|>").turn("user", "Shorter, please.")
    expected.turn("assistant", "Cold.", trained=True)
    assert sequence.input_ids == expected.ids and sequence.labels == expected.labels
    assert trained_text(tokenizer, sequence.labels) == "Cold.<|im_end|>"
    assert outcomes["truncated"] == 1


def test_all_turns_training_keeps_an_earlier_answer_whose_start_survives_whole_and_trained(formatter):
    tokenizer = formatter.tokenizer
    row = {"messages": [user(LONG_PROMPT), assistant("Noted."), user("Why?"), assistant("Snow.")]}
    max_length = full_length(formatter, Kind.SUPERVISED, row) - 5  # 5 tokens into the long question
    (encoded,), _ = encode_rows(formatter, Kind.SUPERVISED, [row], max_length, CUT, assistant_turns="all")
    (sequence,) = encoded.sequences
    expected = Pieces(tokenizer).add("<|bos|>").turn("assistant", "Noted.", trained=True).turn("user", "Why?")
    expected.turn("assistant", "Snow.", trained=True)
    assert sequence.input_ids == expected.ids and sequence.labels == expected.labels
    assert trained_text(tokenizer, sequence.labels) == "Noted.<|im_end|>Snow.<|im_end|>"


def test_a_row_that_fits_only_without_any_user_turn_is_dropped_and_counted_in_the_manifest(
    tokenizer_dir, tmp_path
):
    samples = [
        {"messages": [user("Hi."), assistant("Hello.")]},
        {"messages": [user(LONG_PROMPT), assistant("Cold.")]},  # its response fits, but only without the question
    ]
    dataset = write_dataset(tmp_path, Kind.SUPERVISED, samples)
    cache = tokenize_dataset(dataset, tokenizer_dir, 32, "truncate_prompt_left", tmp_path)
    counts = read_token_manifest(cache)["counts"]
    assert counts["rows_in"] == 2 and counts["rows_out"] == 1 and counts["kept"] == 1
    assert counts["dropped_prompt_too_long"] == 1 and counts["truncated"] == 0


def test_preference_row_chosen_and_rejected_lose_the_same_prompt_tokens(formatter):
    tokenizer = formatter.tokenizer
    system = {"role": "system", "content": "You are brief."}
    prompt = [system, user(LONG_PROMPT), assistant("Noted."), user("Is it cold?")]
    row = {"prompt": prompt, "chosen": [assistant("Cold.")], "rejected": [assistant("Warm and sunny all day.")]}
    (untruncated,), _ = encode_rows(formatter, Kind.PREFERENCE, [row])
    system_turn = Pieces(tokenizer).turn("system", "You are brief.").ids
    # The longer rejected must lose the system turn and 5 tokens of the long question; chosen loses the same.
    max_length = full_length(formatter, Kind.PREFERENCE, row) - (len(system_turn) + 5)
    (encoded,), outcomes = encode_rows(formatter, Kind.PREFERENCE, [row], max_length, CUT)
    removed = len(system_turn) + len(Pieces(tokenizer).turn("user", LONG_PROMPT).ids)
    answers = ["Cold.", "Warm and sunny all day."]
    for sequence, original, answer in zip(encoded.sequences, untruncated.sequences, answers):
        expected = Pieces(tokenizer).add("<|bos|>").turn("assistant", "Noted.").turn("user", "Is it cold?")
        expected.turn("assistant", answer, trained=True)
        assert sequence.input_ids == expected.ids and sequence.labels == expected.labels
        assert sequence.input_ids == original.input_ids[:1] + original.input_ids[1 + removed :]
    assert outcomes["truncated"] == 1


def test_a_row_that_already_fits_is_unchanged(formatter):
    tokenizer = formatter.tokenizer
    row = {"messages": [{"role": "system", "content": "You are brief."}, user(LONG_PROMPT), assistant("Cold.")]}
    max_length = full_length(formatter, Kind.SUPERVISED, row)
    (encoded,), outcomes = encode_rows(formatter, Kind.SUPERVISED, [row], max_length, CUT)
    (sequence,) = encoded.sequences
    expected = Pieces(tokenizer).add("<|bos|>").turn("system", "You are brief.").turn("user", LONG_PROMPT)
    expected.turn("assistant", "Cold.", trained=True)
    assert sequence.input_ids == expected.ids and sequence.labels == expected.labels
    assert sequence.cuts is None  # a row that fits never pays for finding message starts
    assert outcomes["kept"] == 1 and outcomes["truncated"] == 0
