"""Tokenisation: exact label masks per shard kind, truncation policies with counts, the token cache
and its Prefect task, TokenDataset reading. Expected tokens are built independently: each piece of
the ChatML rendering is tokenised on its own (special tokens split segments, and the byte-level
pre-tokenizer splits at newlines, so the pieces concatenate to the whole)."""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from align_core.chat import ModelFormatter
from align_core.data import (
    IGNORE_INDEX,
    ConversationEncoder,
    TokenDataset,
    Truncation,
    token_cache_key,
    tokenize_dataset,
)
from align_core.data.token_cache import read_token_manifest
from align_core.errors import UsageError
from align_core.models.tiny import build_tiny_tokenizer
from align_core.shards.conversation import normalize_conversation
from align_core.shards.manifest import Manifest
from align_core.shards.schema import CONVERSATION_COLUMNS, Kind
from align_core.shards.writer import QuarantineWriter, ShardWriter

# ----- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def formatter(tokenizer_dir) -> ModelFormatter:
    return ModelFormatter.from_pretrained(tokenizer_dir)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_dataset(root: Path, kind: Kind, samples: list[dict], rows_per_shard: int = 3) -> Path:
    """A dataset folder written with the shard writer, as the materialiser would leave it (several
    shards by default, so readers cross shard boundaries)."""
    source_sha256 = hashlib.sha256(repr(samples).encode()).hexdigest()
    folder = root / f"{kind.value}-{source_sha256[:12]}"
    writer = ShardWriter(folder, kind, source_sha256, rows_per_shard=rows_per_shard)
    for index, sample in enumerate(samples):
        sample = dict(sample)
        for column in CONVERSATION_COLUMNS[kind]:
            sample[column] = normalize_conversation(sample[column], column)
        writer.add(index, sample)
    shards = writer.close()
    quarantine = QuarantineWriter(folder).close()
    Manifest(
        dataset_digest=source_sha256,
        kind=kind.value,
        template="test",
        template_code_version="0",
        template_options={},
        source={"path": "memory", "format": "python"},
        source_sha256=source_sha256,
        rows=sum(entry.rows for entry in shards),
        quarantined=0,
        shards=shards,
        quarantine=quarantine,
    ).write(folder)
    return folder


class Pieces:
    """Builds expected (input_ids, labels) from rendering pieces, each marked trained or not."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.trained: list[bool] = []

    def add(self, text_or_token: str, trained: bool = False) -> Pieces:
        if text_or_token in self.tokenizer.all_special_tokens:
            ids = [self.tokenizer.convert_tokens_to_ids(text_or_token)]
        else:
            ids = self.tokenizer.encode(text_or_token, add_special_tokens=False)
        self.ids += ids
        self.trained += [trained] * len(ids)
        return self

    def turn(self, role: str, text: str, trained: bool = False) -> Pieces:
        """``<|im_start|>role\\ntext<|im_end|>\\n``, with the text and end token trained if asked."""
        self.add("<|im_start|>").add(f"{role}\n")
        return self.add(text, trained).add("<|im_end|>", trained).add("\n")

    @property
    def labels(self) -> list[int]:
        return [token if trained else IGNORE_INDEX for token, trained in zip(self.ids, self.trained)]


def encode_rows(formatter, kind, rows, max_length=512, truncation=Truncation.DROP, assistant_turns="all"):
    from collections import Counter

    outcomes = Counter()
    rows = [{"id": f"row-{index}", **row} for index, row in enumerate(rows)]
    for row in rows:
        for column in CONVERSATION_COLUMNS[kind]:
            row[column] = normalize_conversation(row[column], column)
    encoder = ConversationEncoder(formatter, max_length, truncation, assistant_turns)
    return encoder.encode_rows(kind, rows, outcomes), outcomes


MULTI_TURN = [
    {"role": "system", "content": "You are brief."},
    user("What is two plus two?"),
    assistant("Four."),
    user("And three plus three?"),
    assistant("Six, which is four plus two."),
]


# ----- exact label masks ----------------------------------------------------------------------------


def test_supervised_multi_turn_labels_every_assistant_turn_with_its_end_token(formatter):
    (row,), _ = encode_rows(formatter, Kind.SUPERVISED, [{"messages": MULTI_TURN}])
    expected = Pieces(formatter.tokenizer).add("<|bos|>")
    expected.turn("system", "You are brief.").turn("user", "What is two plus two?")
    expected.turn("assistant", "Four.", trained=True).turn("user", "And three plus three?")
    expected.turn("assistant", "Six, which is four plus two.", trained=True)
    (sequence,) = row.sequences
    assert sequence.input_ids == expected.ids
    assert sequence.labels == expected.labels


def test_supervised_last_turn_only_leaves_earlier_assistant_turns_untrained(formatter):
    (row,), _ = encode_rows(formatter, Kind.SUPERVISED, [{"messages": MULTI_TURN}], assistant_turns="last")
    expected = Pieces(formatter.tokenizer).add("<|bos|>")
    expected.turn("system", "You are brief.").turn("user", "What is two plus two?")
    expected.turn("assistant", "Four.").turn("user", "And three plus three?")
    expected.turn("assistant", "Six, which is four plus two.", trained=True)
    assert row.sequences[0].labels == expected.labels


def test_preference_row_trains_only_each_continuation(formatter):
    prompt = [user("Name a colour of the sky.")]
    (row,), _ = encode_rows(
        formatter, Kind.PREFERENCE, [{"prompt": prompt, "chosen": [assistant("Blue.")], "rejected": [assistant("Loud.")]}]
    )
    chosen, rejected = row.sequences
    for sequence, answer in ((chosen, "Blue."), (rejected, "Loud.")):
        expected = Pieces(formatter.tokenizer).add("<|bos|>").turn("user", "Name a colour of the sky.")
        expected.turn("assistant", answer, trained=True)
        assert sequence.input_ids == expected.ids
        assert sequence.labels == expected.labels


def test_preference_with_multi_turn_prompt_does_not_train_on_prompt_assistant_turns(formatter):
    prompt = [user("Hi."), assistant("Hello."), user("Tell me a fact.")]
    (row,), _ = encode_rows(
        formatter, Kind.PREFERENCE, [{"prompt": prompt, "chosen": [assistant("Bees dance.")], "rejected": [assistant("No.")]}]
    )
    tokenizer = formatter.tokenizer
    trained = [tokenizer.decode([token]) for token in row.sequences[0].labels if token != IGNORE_INDEX]
    assert "".join(trained) == "Bees dance.<|im_end|>"


def test_prompt_only_row_ends_with_the_generation_prompt_and_has_no_labels(formatter):
    (row,), _ = encode_rows(formatter, Kind.PROMPT_ONLY, [{"prompt": [user("Write a haiku.")]}])
    expected = Pieces(formatter.tokenizer).add("<|bos|>").turn("user", "Write a haiku.")
    expected.add("<|im_start|>").add("assistant\n")
    (sequence,) = row.sequences
    assert sequence.input_ids == expected.ids
    assert sequence.labels is None


def test_unpaired_preference_labels_the_completion_and_keeps_desirable(formatter):
    rows, _ = encode_rows(
        formatter,
        Kind.UNPAIRED_PREFERENCE,
        [{"prompt": [user("Is fire hot?")], "completion": [assistant("Yes.")], "label": False}],
    )
    expected = Pieces(formatter.tokenizer).add("<|bos|>").turn("user", "Is fire hot?").turn("assistant", "Yes.", True)
    assert rows[0].sequences[0].labels == expected.labels
    assert rows[0].desirable is False


def test_no_double_bos_although_the_tokenizer_adds_bos_itself(formatter):
    tokenizer = formatter.tokenizer
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id  # the trap: a BOS-adding tokenizer
    (row,), _ = encode_rows(formatter, Kind.SUPERVISED, [{"messages": MULTI_TURN}])
    ids = row.sequences[0].input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_template_without_generation_markers_falls_back_to_prefix_rendering(tokenizer_dir):
    formatter = ModelFormatter.from_pretrained(tokenizer_dir)
    formatter.tokenizer.chat_template = re.sub(r"\{%-? ?(end)?generation ?-?%\}", "", formatter.chat_template)
    unmarked = ModelFormatter(formatter.tokenizer)
    assert not unmarked.has_generation_markers
    (row,), _ = encode_rows(unmarked, Kind.SUPERVISED, [{"messages": MULTI_TURN[1:3]}])
    # The span runs to the end of the rendered message, so the newline after <|im_end|> is trained too.
    expected = Pieces(formatter.tokenizer).add("<|bos|>").turn("user", "What is two plus two?")
    expected.add("<|im_start|>").add("assistant\n").add("Four.", True).add("<|im_end|>", True).add("\n", True)
    assert row.sequences[0].labels == expected.labels


def test_default_template_when_the_tokenizer_has_none(tokenizer_dir):
    tokenizer = ModelFormatter.from_pretrained(tokenizer_dir).tokenizer
    tokenizer.chat_template = None
    formatter = ModelFormatter(tokenizer)
    assert formatter.source == "default"
    (row,), _ = encode_rows(formatter, Kind.SUPERVISED, [{"messages": MULTI_TURN[1:3]}])
    expected = Pieces(tokenizer).add("<|bos|>").add("USER: What is two plus two?\nASSISTANT:")
    expected.add(" Four.", True).add("<|im_end|>", True).add("\n")
    assert row.sequences[0].input_ids == expected.ids
    assert row.sequences[0].labels == expected.labels


# ----- truncation -----------------------------------------------------------------------------------

LONG_PROMPT = "Please tell me about the weather in the mountains during a long cold winter. " * 4


def _lengths(formatter, kind, rows):
    encoded, _ = encode_rows(formatter, kind, rows)
    return [max(len(sequence.input_ids) for sequence in row.sequences) for row in encoded]


def test_drop_policy_drops_long_rows_and_counts_them(formatter):
    rows = [{"messages": [user("Hi."), assistant("Hello.")]}, {"messages": [user(LONG_PROMPT), assistant("Cold.")]}]
    short, _ = _lengths(formatter, Kind.SUPERVISED, rows)
    kept, outcomes = encode_rows(formatter, Kind.SUPERVISED, rows, max_length=short + 5)
    assert [row.id for row in kept] == ["row-0"]
    assert outcomes["kept"] == 1 and outcomes["dropped_too_long"] == 1


def test_truncate_prompt_left_keeps_bos_and_the_whole_response(formatter):
    messages = [user(LONG_PROMPT), assistant("Noted."), user("And now?"), assistant("It is cold and snowy.")]
    rows = [{"messages": messages}]
    (full,) = _lengths(formatter, Kind.SUPERVISED, rows)
    ((untruncated,), _), max_length = encode_rows(formatter, Kind.SUPERVISED, rows), full - 20
    (row,), outcomes = encode_rows(formatter, Kind.SUPERVISED, rows, max_length, Truncation.TRUNCATE_PROMPT_LEFT)
    (sequence,) = row.sequences
    original = untruncated.sequences[0]
    assert outcomes["truncated"] == 1 and len(sequence.input_ids) <= max_length
    # BOS, then the original sequence from the second message on: the long first message is cut whole.
    removed = len(Pieces(formatter.tokenizer).add("<|bos|>").turn("user", LONG_PROMPT).ids)
    assert sequence.input_ids == original.input_ids[:1] + original.input_ids[removed:]
    assert sequence.labels == original.labels[:1] + original.labels[removed:]


def test_truncate_prompt_left_cuts_chosen_and_rejected_at_the_same_place(formatter):
    prompt = [user(LONG_PROMPT), assistant("Noted."), user("Is it cold?")]
    row = {"prompt": prompt, "chosen": [assistant("Cold.")], "rejected": [assistant("Warm and sunny all day.")]}
    (full,) = _lengths(formatter, Kind.PREFERENCE, [row])
    (encoded,), outcomes = encode_rows(formatter, Kind.PREFERENCE, [row], full - 10, Truncation.TRUNCATE_PROMPT_LEFT)
    chosen, rejected = encoded.sequences
    kept_prompt = Pieces(formatter.tokenizer).add("<|bos|>").turn("assistant", "Noted.").turn("user", "Is it cold?").ids
    assert chosen.input_ids[: len(kept_prompt)] == rejected.input_ids[: len(kept_prompt)] == kept_prompt
    assert max(len(chosen.input_ids), len(rejected.input_ids)) <= full - 10
    assert outcomes["truncated"] == 1


def test_truncate_prompt_left_drops_a_row_whose_response_alone_is_too_long(formatter):
    rows = [{"messages": [user("Hi."), assistant(LONG_PROMPT)]}]
    kept, outcomes = encode_rows(formatter, Kind.SUPERVISED, rows, 30, Truncation.TRUNCATE_PROMPT_LEFT)
    assert kept == [] and outcomes["dropped_response_too_long"] == 1


def test_error_policy_names_the_row_and_its_length(formatter):
    rows = [{"messages": [user(LONG_PROMPT), assistant("Cold.")]}]
    (full,) = _lengths(formatter, Kind.SUPERVISED, rows)
    with pytest.raises(UsageError, match=rf"row 'row-0': {full} tokens exceed max_length=16"):
        encode_rows(formatter, Kind.SUPERVISED, rows, 16, Truncation.ERROR)


def test_row_without_trained_tokens_is_dropped_and_counted(formatter):
    rows = [{"messages": [user("Is anyone there?")]}, {"messages": [user("Hi."), assistant("Hello.")]}]
    kept, outcomes = encode_rows(formatter, Kind.SUPERVISED, rows)
    assert [row.id for row in kept] == ["row-1"] and outcomes["dropped_no_labels"] == 1


# ----- token cache -----------------------------------------------------------------------------------

SUPERVISED_ROWS = [
    {"messages": [user("Hi."), assistant("Hello.")]},
    {"messages": [user(LONG_PROMPT), assistant("Cold.")]},
    {"messages": MULTI_TURN},
    {"messages": [user("Count to three."), assistant("One, two, three.")]},
]


@pytest.fixture(scope="module")
def supervised_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("datasets"), Kind.SUPERVISED, SUPERVISED_ROWS)


def test_tokenize_dataset_writes_rows_and_counts_to_the_manifest(supervised_dataset, tokenizer_dir, tmp_path):
    cache = tokenize_dataset(supervised_dataset, tokenizer_dir, 72, "drop", tmp_path)
    manifest = read_token_manifest(cache)
    counts = manifest["counts"]
    assert cache.parent == tmp_path and cache.name == manifest["cache_key"]
    assert counts["rows_in"] == 4 and counts["rows_out"] == 3 and counts["dropped_too_long"] == 1
    dataset = TokenDataset(cache)
    assert len(dataset) == 3 and dataset.kind is Kind.SUPERVISED
    assert dataset.pad_token_id == manifest["pad_token_id"]
    assert counts["tokens"] == int(dataset.lengths.sum())
    assert counts["label_tokens"] == sum(int((dataset[i]["labels"] != IGNORE_INDEX).sum()) for i in range(3))


def test_token_dataset_rows_equal_the_encoder_output(supervised_dataset, tokenizer_dir, formatter, tmp_path):
    dataset = TokenDataset(tokenize_dataset(supervised_dataset, tokenizer_dir, 72, "drop", tmp_path))
    expected, _ = encode_rows(formatter, Kind.SUPERVISED, [SUPERVISED_ROWS[0], SUPERVISED_ROWS[2]])
    for item, row in zip([dataset[0], dataset[1]], expected):
        assert item["input_ids"].tolist() == row.sequences[0].input_ids
        assert item["labels"].tolist() == row.sequences[0].labels
        assert item["length"] == len(row.sequences[0].input_ids)
    assert dataset[-1]["id"] == dataset[2]["id"]
    with pytest.raises(IndexError):
        dataset[3]


def test_token_dataset_maps_its_shards_without_copying_and_pickles_by_path(supervised_dataset, tokenizer_dir, tmp_path):
    cache = tokenize_dataset(supervised_dataset, tokenizer_dir, 72, "drop", tmp_path)
    allocated = pa.total_allocated_bytes()
    dataset = TokenDataset(cache)
    assert pa.total_allocated_bytes() - allocated < 1024  # token columns are views into the mapped files
    assert not dataset[0]["input_ids"].flags.writeable
    clone = pickle.loads(pickle.dumps(dataset))  # how DataLoader workers receive it under spawn
    assert len(clone) == len(dataset) and clone[2]["labels"].tolist() == dataset[2]["labels"].tolist()


def test_cache_is_a_hit_for_the_same_inputs(supervised_dataset, tokenizer_dir, tmp_path):
    first = tokenize_dataset(supervised_dataset, tokenizer_dir, 72, "drop", tmp_path)
    written = (first / "manifest.json").stat().st_mtime_ns
    second = tokenize_dataset(supervised_dataset, tokenizer_dir, 72, "drop", tmp_path)
    assert second == first and (second / "manifest.json").stat().st_mtime_ns == written
    assert token_cache_key(supervised_dataset, tokenizer_dir, 72, "drop") == first.name


def test_cache_key_changes_with_max_length_policy_turns_template_and_tokenizer(supervised_dataset, tokenizer_dir, tmp_path):
    base = token_cache_key(supervised_dataset, tokenizer_dir, 72, "drop")
    assert token_cache_key(supervised_dataset, tokenizer_dir, 73, "drop") != base
    assert token_cache_key(supervised_dataset, tokenizer_dir, 72, "truncate_prompt_left") != base
    assert token_cache_key(supervised_dataset, tokenizer_dir, 72, "drop", assistant_turns="last") != base
    edited = tmp_path / "edited-template"
    shutil.copytree(tokenizer_dir, edited)
    template = edited / "chat_template.jinja"
    template.write_text(template.read_text().replace("'\\n'", "'\\n\\n'", 1))
    assert token_cache_key(supervised_dataset, edited, 72, "drop") != base
    retrained = tmp_path / "retrained-tokenizer"
    build_tiny_tokenizer(vocab_size=1024).save_pretrained(retrained)
    assert token_cache_key(supervised_dataset, retrained, 72, "drop") != base


def test_model_weights_do_not_change_the_cache_key(supervised_dataset, tokenizer_dir, tmp_path):
    with_weights = tmp_path / "with-weights"
    shutil.copytree(tokenizer_dir, with_weights)
    (with_weights / "model.safetensors").write_bytes(b"weights that do not affect tokens")
    assert token_cache_key(supervised_dataset, with_weights, 72, "drop") == token_cache_key(
        supervised_dataset, tokenizer_dir, 72, "drop"
    )


def test_preference_cache_feeds_the_collator_chosen_first(tokenizer_dir, tmp_path):
    samples = [
        {"prompt": [user("Pick a fruit.")], "chosen": [assistant("An apple.")], "rejected": [assistant("A rock.")]},
        {"prompt": [user("Say hi.")], "chosen": [assistant("Hi!")], "rejected": [assistant("Go away, I am busy now.")]},
    ]
    dataset = TokenDataset(tokenize_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples), tokenizer_dir, 64, "drop", tmp_path))
    batch = dataset.collator()([dataset[0], dataset[1]])
    assert batch.input_ids.shape[0] == 4
    for row, (item, column) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        ids = dataset[item][f"{column}_input_ids"]
        assert batch.input_ids[row, : len(ids)].tolist() == ids.tolist()
    assert dataset.lengths.tolist() == [
        max(len(dataset[i]["chosen_input_ids"]), len(dataset[i]["rejected_input_ids"])) for i in range(2)
    ]


def test_missing_cache_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="not a complete token cache"):
        TokenDataset(tmp_path)


def test_tokenize_task_caches_on_the_key_and_rebuilds_a_deleted_folder(
    prefect_harness, supervised_dataset, tokenizer_dir, tmp_path
):
    from align_core.data.token_cache import TokenizeSpec
    from tasks.tokenize import tokenize

    spec = TokenizeSpec(dataset_dir=str(supervised_dataset), tokenizer_path=str(tokenizer_dir), max_length=72,
                        cache_root=str(tmp_path))
    arguments = {"spec": spec}
    first = tokenize(**arguments, return_state=True)
    assert first.is_completed() and first.name != "Cached"
    folder = Path(first.result())
    assert TokenDataset(folder).manifest["counts"]["rows_out"] == 3
    tokenize(**arguments)  # the folder exists now: this run stores the cache entry
    assert tokenize(**arguments, return_state=True).name == "Cached"
    changed = tokenize(spec.model_copy(update={"max_length": 512}), return_state=True)
    assert changed.name != "Cached" and Path(changed.result()) != folder
    shutil.rmtree(folder)
    rebuilt = tokenize(**arguments, return_state=True)
    assert rebuilt.name != "Cached" and Path(rebuilt.result()) == folder and (folder / "manifest.json").is_file()
