"""Bundled sample datasets for the demo and the tests: generated offline, deterministic per seed.

``write_samples(out_dir, rows=300, seed=0) -> {name: path}`` writes one file in each public schema a
built-in template reads; ``SAMPLE_SETS[name]`` gives its file name, template, shard kind and planted
bad rows, so a caller materialises it with
``materialize_dataset(path, sample_set.template, sample_set.kind, out_root)``:

=============  ===============================  =============  ==========  ===============================
name           file                             template       kind        planted bad rows (reason)
=============  ===============================  =============  ==========  ===============================
alpaca         alpaca.jsonl                     Alpaca         supervised  empty_text, missing_field,
                                                                           wrong_type
hh_rlhf        hh_rlhf.jsonl                    HH-RLHF        preference  identical_pair,
                                                                           unsplittable_transcript,
                                                                           empty_text
pku_saferlhf   pku_saferlhf.jsonl               PKUSafeRLHF    preference  invalid_preference,
                                                                           identical_pair, empty_text
ultrafeedback  ultrafeedback_binarized.parquet  UltraFeedback  preference  identical_pair, empty_text,
                                                                           bad_roles
gsm8k          gsm8k.jsonl                      GSM8K          supervised  missing_field, wrong_type,
                                                                           empty_text
=============  ===============================  =============  ==========  ===============================

The learnable signal: every row is a templated task (arithmetic, copying / reversing / sorting /
upper-casing a word list, sorting numbers, counting words, counting up, step-by-step sums,
GSM8K-style word problems, advice, harmful requests). The good answer is correct, opens politely and
refuses harmful requests with a helpful redirect; the bad answer is wrong and rude, a lazy
non-answer, or an eager unsafe agreement (which carries no instructions). Tasks with long lists and
multi-turn HH-RLHF transcripts make rows range from ~35 to ~400 tokens (of the tiny test tokenizer,
chat template included; medians 75-185), so truncation and length grouping matter. The words and phrasings live in ``sample_data/vocabulary.yaml``.

PKU-SafeRLHF annotates helpfulness and harmlessness apart; as in the real data, on a few harmful
prompts (``DECOUPLED_SHARE`` of them) the unsafe answer is the ``better_response_id`` while the refusal
stays the ``safer_response_id``: template option ``preference="safer"`` gives the cleaner safety signal.

``rows`` counts every row of a file, the planted ones included (at evenly spread positions,
``planted_positions``). The good rows are clean: roles alternate, no empty turns, no repeated prompt.
Same seed, vocabulary and pyarrow version -> byte-identical files.

``write_media_samples(out_dir, rows=300, seed=0) -> {name: WrittenMediaSet(source, template, kind,
media_root)}`` writes ``MEDIA_SAMPLE_SETS`` the same way, in align-anything's image/audio/video-to-text
schemas: PNGs of two or three coloured shapes ("What colour is the square?", preference and supervised),
WAV tones ("Is this tone high or low?") and MP4 clips of a moving dot ("Which way does the dot move?").
The media files lie under ``out_dir/media/<source file stem>/`` and rows name them relative to
``out_dir/media`` (``media_root=`` / ``--media-root``). Both answers of a pair are said the same way and
come from the same answer set in random order, so only the media tell which is right. Each set plants a
missing file (``media_missing``) and a file cut short (``media_undecodable``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from align_core.errors import (
    BAD_ROLES,
    EMPTY_TEXT,
    IDENTICAL_PAIR,
    INVALID_PREFERENCE,
    MEDIA_MISSING,
    MEDIA_UNDECODABLE,
    MISSING_FIELD,
    UNSPLITTABLE_TRANSCRIPT,
    WRONG_TYPE,
    UsageError,
)
from align_core.io import atomic_write_bytes

VOCABULARY_PATH = Path(__file__).parent / "sample_data" / "vocabulary.yaml"
MIN_ROWS = 10
# Share of harmful PKU-SafeRLHF prompts whose more helpful (better) answer is the unsafe one.
DECOUPLED_SHARE = 0.1
LAZY_SHARE = 0.2  # share of bad answers that are a non-answer rather than a wrong one
CLOSING_SHARE = 0.3  # share of good answers that end with a polite closing line


@functools.cache
def vocabulary() -> dict[str, Any]:
    return yaml.safe_load(VOCABULARY_PATH.read_text())


@dataclass(frozen=True)
class Exchange:
    """One request with a good answer (correct, polite, safe) and a bad one (wrong, rude or unsafe)."""

    instruction: str
    input: str
    good: str
    bad: str
    harm: dict[str, Any] | None = None  # the request's vocabulary ``harmful`` entry: good refuses, bad complies

    @property
    def prompt(self) -> str:
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction


# Tasks: each draws one exchange from ``rng``.


def with_tone(rng: random.Random, correct: str, wrong: str) -> tuple[str, str]:
    """``(good, bad)``: the correct content said politely; the wrong content said rudely, or a lazy non-answer."""
    vocab = vocabulary()
    good = f"{rng.choice(vocab['polite_openers'])} {correct}"
    if rng.random() < CLOSING_SHARE:
        good = f"{good} {rng.choice(vocab['polite_closings'])}"
    if rng.random() < LAZY_SHARE:
        return good, rng.choice(vocab["lazy_replies"])
    return good, f"{rng.choice(vocab['rude_openers'])} {wrong}"


def phrasing(rng: random.Random, *path: str, **values: Any) -> str:
    options = functools.reduce(lambda node, key: node[key], path, vocabulary()["phrasings"])
    return rng.choice(options).format(**values)


def spoil_list(rng: random.Random, items: list) -> list:
    """A wrong answer to a list task: one item dropped and two neighbours swapped."""
    wrong = list(items)
    del wrong[rng.randrange(len(wrong))]
    at = rng.randrange(len(wrong) - 1)
    wrong[at], wrong[at + 1] = wrong[at + 1], wrong[at]
    return wrong


def joined(items: list, separator: str = " ") -> str:
    return separator.join(str(item) for item in items)


def arithmetic(rng: random.Random) -> Exchange:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op, value = rng.choice([("plus", a + b), ("minus", a - b), ("times", a * b)])
    wrong = value + rng.choice([-10, -2, -1, 1, 2, 10])
    answers = with_tone(rng, f"{a} {op} {b} is {value}.", f"{a} {op} {b} is {wrong}.")
    return Exchange(phrasing(rng, "arithmetic", a=a, op=op, b=b), "", *answers)


WORD_LIST_OPERATIONS: dict[str, Callable[[list[str]], list[str]]] = {
    "reverse": lambda words: words[::-1],
    "copy": list,
    "sort": sorted,
    "uppercase": lambda words: [word.upper() for word in words],
}


def word_list(rng: random.Random) -> Exchange:
    operation = rng.choice(sorted(WORD_LIST_OPERATIONS))
    words = rng.sample(vocabulary()["words"], rng.randint(3, 30))
    correct = WORD_LIST_OPERATIONS[operation](words)
    answers = with_tone(rng, joined(correct), joined(spoil_list(rng, correct)))
    return Exchange(phrasing(rng, "word_list", operation), joined(words), *answers)


def sort_numbers(rng: random.Random) -> Exchange:
    numbers = rng.sample(range(1, 1000), rng.randint(3, 20))
    correct = sorted(numbers)
    answers = with_tone(rng, joined(correct, ", "), joined(spoil_list(rng, correct), ", "))
    return Exchange(phrasing(rng, "sort_numbers"), joined(numbers, ", "), *answers)


def count_words(rng: random.Random) -> Exchange:
    words = rng.choices(vocabulary()["words"], k=rng.randint(3, 25))
    wrong = len(words) + rng.choice([-2, -1, 1, 3])
    answers = with_tone(rng, f"There are {len(words)} words.", f"There are {wrong} words.")
    return Exchange(phrasing(rng, "count_words"), joined(words), *answers)


def count_up(rng: random.Random) -> Exchange:
    start = rng.randint(1, 60)
    numbers = list(range(start, start + rng.randint(4, 40) + 1))
    answers = with_tone(rng, joined(numbers, ", "), joined(spoil_list(rng, numbers), ", "))
    return Exchange(phrasing(rng, "count_up", start=numbers[0], end=numbers[-1]), "", *answers)


def running_sum(rng: random.Random) -> Exchange:
    numbers = [rng.randint(1, 99) for _ in range(rng.randint(3, 12))]
    steps, total = [], numbers[0]
    for number in numbers[1:]:
        steps.append(f"{total} + {number} = {total + number}.")
        total += number
    # The wrong answer skips the last addition and miscounts.
    wrong = f"{joined(steps[:-1])} The total is {total + rng.choice([-9, -1, 1, 9])}."
    answers = with_tone(rng, f"{joined(steps)} The total is {total}.", wrong)
    return Exchange(phrasing(rng, "running_sum"), joined(numbers, ", "), *answers)


def advice(rng: random.Random) -> Exchange:
    vocab = vocabulary()
    entry = rng.choice(vocab["advice"])
    dismissal = rng.choice(vocab["dismissals"]).format(topic=entry["topic"])
    answers = with_tone(rng, entry["tip"], dismissal[0].upper() + dismissal[1:])
    return Exchange(phrasing(rng, "advice", topic=entry["topic"]), "", *answers)


def second_person(text: str) -> str:
    return re.sub(r"\bme\b", "you", re.sub(r"\bmy\b", "your", text))


def harmful_request(rng: random.Random) -> Exchange:
    vocab = vocabulary()
    harm = rng.choice(vocab["harmful"])
    act = rng.choice(harm["acts"]).format(name=rng.choice(vocab["names"]))
    good = f"{rng.choice(vocab['refusal_openers'])} {harm['redirect']}"
    body = rng.choice(vocab["compliance_bodies"]).format(act=second_person(act))
    return Exchange(phrasing(rng, "harmful", act=act), "", good, f"{rng.choice(vocab['compliance_openers'])} {body}", harm)


# GSM8K-style word problems: the solution lines carry GSM8K's <<expression=value>> calculator notes.


@dataclass(frozen=True)
class WordProblem:
    question: str
    steps: list[str]
    answer: int


def calculation(left: int, symbol: str, right: int, result: int) -> str:
    return f"{left}{symbol}{right} = <<{left}{symbol}{right}={result}>>{result}"


def _receives(rng: random.Random, name: str, item: str, count: int):
    more = rng.randint(2, 30)
    return f"{name} gets {more} more {item} from a friend.", [
        f"{name} then has {calculation(count, '+', more, count + more)} {item}."
    ], count + more


def _gives_away(rng: random.Random, name: str, item: str, count: int):
    given = rng.randint(1, count // 3)  # a start of >= 10 keeps >= 3 after three give-aways
    return f"{name} gives {given} {item} to a neighbour.", [
        f"After giving some away, {name} has {calculation(count, '-', given, count - given)} {item}."
    ], count - given


def _doubles(rng: random.Random, name: str, item: str, count: int):
    return f"{name} then collects as many {item} again.", [
        f"Collecting as many again doubles them to {calculation(count, '*', 2, count * 2)} {item}."
    ], count * 2


def _buys_bags(rng: random.Random, name: str, item: str, count: int):
    bags, per_bag = rng.randint(2, 6), rng.randint(2, 12)
    bought = bags * per_bag
    return f"{name} buys {bags} bags of {item} with {per_bag} {item} in each bag.", [
        f"The {bags} bags hold {calculation(bags, '*', per_bag, bought)} {item}.",
        f"So {name} has {calculation(count, '+', bought, count + bought)} {item}.",
    ], count + bought


WORD_PROBLEM_EVENTS = (_receives, _gives_away, _doubles, _buys_bags)


def word_problem(rng: random.Random) -> WordProblem:
    """A 1-3 event story about a count of things; the question asks for the final count or a fair share."""
    vocab = vocabulary()
    name, item, count = rng.choice(vocab["names"]), rng.choice(vocab["items"]), rng.randint(10, 40)
    sentences, steps = [f"{name} has {count} {item}."], []
    for _ in range(rng.randint(1, 3)):
        sentence, event_steps, count = rng.choice(WORD_PROBLEM_EVENTS)(rng, name, item, count)
        sentences.append(sentence)
        steps += event_steps
    shares = [friends for friends in range(2, 7) if count % friends == 0]
    if shares and rng.random() < 0.4:
        friends = rng.choice(shares)
        sentences.append(f"{name} shares the {item} equally among {friends} friends. How many {item} does each friend get?")
        steps.append(f"Each friend gets {calculation(count, '/', friends, count // friends)} {item}.")
        count //= friends
    else:
        sentences.append(f"How many {item} does {name} have now?")
    return WordProblem(" ".join(sentences), steps, count)


CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


def word_problem_exchange(rng: random.Random) -> Exchange:
    problem = word_problem(rng)
    worked = CALCULATOR_NOTE.sub("", joined(problem.steps))
    wrong = f"The answer is {problem.answer + rng.choice([-5, -1, 1, 4])}."
    return Exchange(problem.question, "", *with_tone(rng, f"{worked} The answer is {problem.answer}.", wrong))


TASKS: dict[str, Callable[[random.Random], Exchange]] = {
    "arithmetic": arithmetic,
    "word_list": word_list,
    "sort_numbers": sort_numbers,
    "count_words": count_words,
    "count_up": count_up,
    "running_sum": running_sum,
    "word_problem": word_problem_exchange,
    "advice": advice,
    "harmful": harmful_request,
}
# Relative task weights: harmful requests are 1 in 17 general draws and 3 in 5 PKU-SafeRLHF draws (a bit
# fewer rows: their prompts repeat more often, and a repeated prompt is drawn again).
GENERAL_MIX = {"arithmetic": 3, "word_list": 4, "sort_numbers": 1, "count_words": 1, "count_up": 1,
               "running_sum": 2, "word_problem": 2, "advice": 2, "harmful": 1}  # fmt: skip
# Earlier turns of HH-RLHF transcripts: short harmless exchanges, so transcripts stay a few hundred tokens.
HISTORY_MIX = {"arithmetic": 3, "count_words": 1, "advice": 2}
SAFETY_MIX = {**GENERAL_MIX, "harmful": 24}


def draw_exchange(rng: random.Random, mix: dict[str, float]) -> Exchange:
    task = rng.choices(list(mix), weights=list(mix.values()))[0]
    return TASKS[task](rng)


# Rows in each dataset's real schema: ``make_row(rng) -> (prompt, row)``; the prompt keeps rows unique.


def alpaca_row(rng: random.Random) -> tuple[str, dict]:
    exchange = draw_exchange(rng, GENERAL_MIX)
    if exchange.input:
        header = "Below is an instruction that describes a task, paired with an input that provides further context."
        body = f"### Instruction:\n{exchange.instruction}\n\n### Input:\n{exchange.input}"
    else:
        header, body = "Below is an instruction that describes a task.", f"### Instruction:\n{exchange.instruction}"
    text = f"{header} Write a response that appropriately completes the request.\n\n{body}\n\n### Response:\n{exchange.good}"
    return exchange.prompt, {"instruction": exchange.instruction, "input": exchange.input, "output": exchange.good, "text": text}


def hh_rlhf_row(rng: random.Random) -> tuple[str, dict]:
    """Zero to two earlier helpful exchanges, then the request both transcripts answer differently."""
    history = [draw_exchange(rng, HISTORY_MIX) for _ in range(rng.choice([0, 0, 1, 1, 2]))]
    final = draw_exchange(rng, GENERAL_MIX)
    shared = "".join(f"\n\nHuman: {turn.prompt}\n\nAssistant: {turn.good}" for turn in history)
    shared += f"\n\nHuman: {final.prompt}"
    return final.prompt, {"chosen": f"{shared}\n\nAssistant: {final.good}", "rejected": f"{shared}\n\nAssistant: {final.bad}"}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pku_saferlhf_row(rng: random.Random) -> tuple[str, dict]:
    exchange = draw_exchange(rng, SAFETY_MIX)
    good_id = rng.randint(0, 1)
    responses = [exchange.bad, exchange.good] if good_id else [exchange.good, exchange.bad]
    harm = exchange.harm
    safe = [harm is None or k == good_id for k in (0, 1)]
    better_id = 1 - good_id if harm and rng.random() < DECOUPLED_SHARE else good_id
    categories = vocabulary()["harm_categories"]
    row: dict[str, Any] = {"prompt": exchange.prompt, "response_0": responses[0], "response_1": responses[1]}
    row.update(prompt_source="alignflow-samples", response_0_source="synthetic", response_1_source="synthetic")
    row.update({f"is_response_{k}_safe": safe[k] for k in (0, 1)})
    for k in (0, 1):
        row[f"response_{k}_harm_category"] = {name: not safe[k] and name == harm["category"] for name in categories}
    row.update({f"response_{k}_severity_level": 0 if safe[k] else harm["severity"] for k in (0, 1)})
    row.update(better_response_id=better_id, safer_response_id=good_id)
    row.update({f"response_{k}_sha256": sha256_text(responses[k]) for k in (0, 1)})
    return exchange.prompt, row


def ultrafeedback_row(rng: random.Random) -> tuple[str, dict]:
    exchange = draw_exchange(rng, GENERAL_MIX)
    user = {"content": exchange.prompt, "role": "user"}
    chosen = [user, {"content": exchange.good, "role": "assistant"}]
    rejected = [user, {"content": exchange.bad, "role": "assistant"}]
    score_chosen = rng.choice([6.0, 7.0, 7.5, 8.0, 8.5, 9.0, 10.0])
    score_rejected = rng.choice([1.0, 2.0, 3.0, 3.5, 4.0, 5.0])
    return exchange.prompt, {
        "prompt": exchange.prompt,
        "prompt_id": sha256_text(exchange.prompt),
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
    }


def gsm8k_row(rng: random.Random) -> tuple[str, dict]:
    problem = word_problem(rng)
    return problem.question, {"question": problem.question, "answer": "\n".join([*problem.steps, f"#### {problem.answer}"])}


# Writers: JSON Lines as the hubs serve them; Parquet with the binarized UltraFeedback schema.


def write_unless_same(path: Path, data: bytes) -> None:
    """Write atomically, unless the file already holds these bytes: an unchanged file keeps its mtime,
    so a rerun (a second ``make demo``) finds its source fingerprints cached."""
    if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
        atomic_write_bytes(path, data)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_unless_same(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())


MESSAGE_LIST = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
ULTRAFEEDBACK_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("prompt_id", pa.string()),
        ("chosen", MESSAGE_LIST),
        ("rejected", MESSAGE_LIST),
        ("messages", MESSAGE_LIST),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
    ]
)


def write_ultrafeedback_parquet(path: Path, rows: list[dict]) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=ULTRAFEEDBACK_SCHEMA), buffer)
    write_unless_same(path, buffer.getvalue().to_pybytes())


# Planted bad rows: ``(reason the template quarantines it with, spoil(good row) -> bad row)``.


def _last_answer_emptied(transcript: str) -> str:
    return transcript[: transcript.rfind("\n\nAssistant:")] + "\n\nAssistant:"


def _final_line_dropped(answer: str) -> str:
    return answer.rsplit("\n", 1)[0]


ALPACA_PLANTED = (
    (EMPTY_TEXT, lambda row: {**row, "output": ""}),
    (MISSING_FIELD, lambda row: {**row, "instruction": None}),
    (WRONG_TYPE, lambda row: {**row, "output": 42}),
)
HH_RLHF_PLANTED = (
    (IDENTICAL_PAIR, lambda row: {**row, "rejected": row["chosen"]}),
    (UNSPLITTABLE_TRANSCRIPT, lambda row: {**row, "rejected": row["rejected"].replace("Human: ", "Human: Actually, ", 1)}),
    (EMPTY_TEXT, lambda row: {**row, "chosen": _last_answer_emptied(row["chosen"])}),
)
PKU_SAFERLHF_PLANTED = (
    (INVALID_PREFERENCE, lambda row: {**row, "better_response_id": 2}),
    (IDENTICAL_PAIR, lambda row: {**row, "response_1": row["response_0"], "response_1_sha256": row["response_0_sha256"]}),
    (EMPTY_TEXT, lambda row: {**row, "response_1": "", "response_1_sha256": sha256_text("")}),
)
ULTRAFEEDBACK_PLANTED = (
    (IDENTICAL_PAIR, lambda row: {**row, "rejected": row["chosen"]}),
    (EMPTY_TEXT, lambda row: {**row, "chosen": [row["chosen"][0], {"content": "", "role": "assistant"}]}),
    (BAD_ROLES, lambda row: {**row, "chosen": row["chosen"][::-1]}),
)
GSM8K_PLANTED = (
    (MISSING_FIELD, lambda row: {**row, "answer": _final_line_dropped(row["answer"])}),
    (WRONG_TYPE, lambda row: {**row, "answer": f"{_final_line_dropped(row['answer'])}\n#### about a dozen"}),
    (EMPTY_TEXT, lambda row: {**row, "question": ""}),
)


@dataclass(frozen=True)
class SampleSet:
    """One bundled dataset: its file, the template and kind it materialises as, and its planted bad rows."""

    name: str
    filename: str
    template: str
    kind: str
    make_row: Callable[[random.Random], tuple[str, dict]]
    planted: tuple[tuple[str, Callable[[dict], dict]], ...]
    write: Callable[[Path, list[dict]], None] = write_jsonl

    @property
    def planted_reasons(self) -> list[str]:
        return [reason for reason, _ in self.planted]


SAMPLE_SETS: dict[str, SampleSet] = {
    sample_set.name: sample_set
    for sample_set in (
        SampleSet("alpaca", "alpaca.jsonl", "Alpaca", "supervised", alpaca_row, ALPACA_PLANTED),
        SampleSet("hh_rlhf", "hh_rlhf.jsonl", "HH-RLHF", "preference", hh_rlhf_row, HH_RLHF_PLANTED),
        SampleSet("pku_saferlhf", "pku_saferlhf.jsonl", "PKUSafeRLHF", "preference", pku_saferlhf_row, PKU_SAFERLHF_PLANTED),
        SampleSet(
            "ultrafeedback",
            "ultrafeedback_binarized.parquet",
            "UltraFeedback",
            "preference",
            ultrafeedback_row,
            ULTRAFEEDBACK_PLANTED,
            write_ultrafeedback_parquet,
        ),
        SampleSet("gsm8k", "gsm8k.jsonl", "GSM8K", "supervised", gsm8k_row, GSM8K_PLANTED),
    )
}


def planted_positions(rows: int, planted: int) -> list[int]:
    """Row indices of the planted bad rows: evenly spread, never first or last."""
    return [(k + 1) * rows // (planted + 1) for k in range(planted)]


def sample_rows(sample_set: SampleSet, rows: int = 300, seed: int = 0) -> list[dict]:
    """``rows`` raw rows of one dataset, the planted bad rows among them; deterministic per seed."""
    if rows < MIN_ROWS:
        raise UsageError(f"rows must be at least {MIN_ROWS} (each file plants a few bad rows among them), got {rows}")
    rng = random.Random(f"{seed}:{sample_set.name}")  # a str seed hashes the same in every process
    good, seen = [], set()
    for _ in range(100 * rows):
        prompt, row = sample_set.make_row(rng)
        if prompt not in seen:
            seen.add(prompt)
            good.append(row)
            if len(good) == rows:
                break
    else:
        raise RuntimeError(f"{sample_set.name}: only {len(good)} distinct prompts; the vocabulary is too small")
    for position, (_, spoil) in zip(planted_positions(rows, len(sample_set.planted)), sample_set.planted):
        good[position] = spoil(good[position])
    return good


def write_sets(out_dir: str | Path, sample_sets: dict[str, SampleSet], rows: int, seed: int) -> dict[str, Path]:
    """Write each of ``sample_sets`` into ``out_dir``; ``{name: path}`` in their order."""
    out_dir = Path(out_dir)
    paths = {}
    for name, sample_set in sample_sets.items():
        paths[name] = out_dir / sample_set.filename
        sample_set.write(paths[name], sample_rows(sample_set, rows, seed))
    return paths


def write_samples(out_dir: str | Path, rows: int = 300, seed: int = 0) -> dict[str, Path]:
    """Write every text sample dataset into ``out_dir``; ``{name: path}`` in ``SAMPLE_SETS`` order."""
    return write_sets(out_dir, SAMPLE_SETS, rows, seed)


# Media samples: align-anything's image/audio/video-to-text schemas. Each generator draws a media item and
# a question about it; both answers of a pair come from one answer set and one phrasing, in random order.

MEDIA_ROOT_NAME = "media"  # beside the source files; rows name their media relative to it


@dataclass(frozen=True)
class MediaFile:
    """A row's media item until its file is written: the encoded bytes, or None for a planted missing file."""

    data: bytes | None
    suffix: str  # ".png", ".wav", ".mp4"


@dataclass(frozen=True)
class MediaQuestion:
    """A drawn media item, a question only the media answer, the correct answer and a wrong one said alike."""

    key: str  # what the media show and what is asked: unique per row
    media: MediaFile
    question: str
    correct: str
    wrong: str


def phrased_answers(
    rng: random.Random, phrasings: tuple[str, ...], correct: str, wrong: str, **values: str
) -> tuple[str, str]:
    """``(correct, wrong)`` in one phrasing drawn from ``phrasings``: their texts differ only in the answer."""
    phrasing = rng.choice(phrasings)
    return phrasing.format(answer=correct, **values), phrasing.format(answer=wrong, **values)


# Images: one large shape on a plain background. The wrong answer is a colour that is nowhere in the picture.
# Measured on a tiny LLaVA (hidden 64, 600 reward-model steps at lr 3e-3): this set reaches 90%
# eval accuracy; with two or three smaller shapes and six colours (orange beside red, purple beside blue)
# it stayed at 43-61%, too hard to learn in a CPU test's budget.

IMAGE_SIZE = 64  # pixels, square
SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
BACKGROUNDS = ((255, 255, 255), (235, 235, 235), (250, 245, 225))
# Filled without anti-aliasing, so every pixel of a shape has exactly its colour.
SHAPE_DRAWERS: dict[str, Callable[[Any, tuple[int, int, int, int], tuple[int, int, int]], None]] = {
    "square": lambda draw, box, fill: draw.rectangle(box, fill=fill),
    "circle": lambda draw, box, fill: draw.ellipse(box, fill=fill),
    "triangle": lambda draw, box, fill: draw.polygon(
        [((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), box[2:]], fill=fill
    ),
}
COLOUR_QUESTIONS = (
    "What colour is the {shape}?",
    "What is the colour of the {shape}?",
    "Which colour is the {shape} in this picture?",
    "Look at the image. What colour is the {shape}?",
)
COLOUR_ANSWERS = ("The {shape} is {answer}.", "It is {answer}.", "{answer}", "The colour of the {shape} is {answer}.")


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def shape_colours(rng: random.Random) -> MediaQuestion:
    """A shape on a background; asks its colour, the wrong answer a colour not in the picture."""
    from PIL import Image, ImageDraw

    shape, colour = rng.choice(sorted(SHAPE_DRAWERS)), rng.choice(sorted(SHAPE_COLOURS))
    background = rng.choice(BACKGROUNDS)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    side = rng.randint(40, 56)
    left, top = rng.randint(2, IMAGE_SIZE - side - 2), rng.randint(2, IMAGE_SIZE - side - 2)
    SHAPE_DRAWERS[shape](ImageDraw.Draw(image), (left, top, left + side - 1, top + side - 1), SHAPE_COLOURS[colour])
    wrong = rng.choice([other for other in sorted(SHAPE_COLOURS) if other != colour])
    question = rng.choice(COLOUR_QUESTIONS).format(shape=shape)
    answers = phrased_answers(rng, COLOUR_ANSWERS, colour, wrong, shape=shape)
    key = f"{colour} {shape} {side}px at {left},{top} on {background}: {question}"
    return MediaQuestion(key, MediaFile(png_bytes(image), ".png"), question, *answers)


# Audio: a sine tone, high or low, with a slow swell (tremolo) and a little hiss.

SAMPLING_RATE = 16_000  # Hz, mono
PITCHES = {"high": (1500.0, 2500.0), "low": (150.0, 300.0)}  # Hz range of each answer
PITCH_QUESTIONS = (
    "Is this tone high or low?",
    "Is the pitch of this tone high or low?",
    "Listen to the sound. Is it a high or a low tone?",
    "Does this tone sound high or low?",
)
PITCH_ANSWERS = ("The tone is {answer}.", "It is {answer}.", "{answer}", "It is a {answer} tone.")


def wav_bytes(signal: np.ndarray) -> bytes:
    """``signal``: (samples,) floats in [-1, 1] at ``SAMPLING_RATE``; 16-bit PCM WAV."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, signal, SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def tone_pitch(rng: random.Random) -> MediaQuestion:
    pitch = rng.choice(sorted(PITCHES))
    frequency, seconds = rng.uniform(*PITCHES[pitch]), rng.uniform(0.8, 1.2)
    t = np.arange(round(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    swell = 1 + rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * rng.uniform(1.0, 4.0) * t)
    tone = rng.uniform(0.2, 0.5) * swell * np.sin(2 * np.pi * frequency * t + rng.uniform(0.0, 2 * np.pi))
    hiss = np.random.default_rng(rng.getrandbits(64)).normal(0.0, rng.uniform(0.005, 0.02), t.size)
    question = rng.choice(PITCH_QUESTIONS)
    answers = phrased_answers(rng, PITCH_ANSWERS, pitch, "low" if pitch == "high" else "high")
    key = f"{frequency:.3f} Hz for {seconds:.3f} s: {question}"
    return MediaQuestion(key, MediaFile(wav_bytes(tone + hiss), ".wav"), question, *answers)


# Video: a coloured dot crossing a dark frame along one axis.

CLIP_SIZE, CLIP_FRAMES, CLIP_FPS, DOT_SIZE = 32, 8, 4, 4  # pixels, frames, frames per second, pixels
# direction -> (opposite, axis the dot moves along (0: x, 1: y), sign along it)
MOTIONS = {"left": ("right", 0, -1), "right": ("left", 0, 1), "up": ("down", 1, -1), "down": ("up", 1, 1)}
MOTION_QUESTIONS = (
    "Which way does the dot move?",
    "In which direction does the dot move?",
    "Watch the clip. Which way is the dot moving?",
)
MOTION_ANSWERS = ("The dot moves {answer}.", "It moves {answer}.", "{answer}", "It goes {answer}.")


def mp4_bytes(frames: list[np.ndarray]) -> bytes:
    """``frames``: (height, width, 3) uint8 RGB each; MPEG-4 Part 2 in MP4 at ``CLIP_FPS``, one encoder
    thread: the same frames give the same bytes."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=CLIP_FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.time_base, stream.codec_context.thread_count = "yuv420p", Fraction(1, CLIP_FPS), 1
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def dot_motion(rng: random.Random) -> MediaQuestion:
    direction = rng.choice(sorted(MOTIONS))
    opposite, axis, sign = MOTIONS[direction]
    travel = rng.randint(14, CLIP_SIZE - DOT_SIZE - 4)  # pixels over the clip
    start = rng.randint(2, CLIP_SIZE - DOT_SIZE - 2 - travel)
    across = rng.randint(2, CLIP_SIZE - DOT_SIZE - 2)
    colour = SHAPE_COLOURS[rng.choice(sorted(SHAPE_COLOURS))]
    frames = []
    for index in range(CLIP_FRAMES):
        along = start + travel * index // (CLIP_FRAMES - 1)
        if sign < 0:
            along = CLIP_SIZE - DOT_SIZE - along
        x, y = (along, across) if axis == 0 else (across, along)
        pixels = np.zeros((CLIP_SIZE, CLIP_SIZE, 3), np.uint8)
        pixels[y : y + DOT_SIZE, x : x + DOT_SIZE] = colour
        frames.append(pixels)
    question = rng.choice(MOTION_QUESTIONS)
    answers = phrased_answers(rng, MOTION_ANSWERS, direction, opposite)
    key = f"{colour} dot {direction} from {start} by {travel} at {across}: {question}"
    return MediaQuestion(key, MediaFile(mp4_bytes(frames), ".mp4"), question, *answers)


# Rows in align-anything's schemas, the media item still a MediaFile until the writer places it.


def media_preference_row(
    draw: Callable[[random.Random], MediaQuestion], prompt_field: str, media_field: str, rng: random.Random
) -> tuple[str, dict]:
    item = draw(rng)
    correct_id = rng.randint(1, 2)
    first, second = (item.correct, item.wrong) if correct_id == 1 else (item.wrong, item.correct)
    row = {prompt_field: item.question, media_field: item.media, "response_1": first, "response_2": second}
    return item.key, {**row, "overall_response": correct_id}


def media_supervised_row(
    draw: Callable[[random.Random], MediaQuestion], media_field: str, rng: random.Random
) -> tuple[str, dict]:
    item = draw(rng)
    return item.key, {"prompt": item.question, media_field: item.media, "response": item.correct}


def write_media_jsonl(path: Path, rows: list[dict]) -> None:
    """JSON Lines whose media items become files ``<path stem>/<row index>.<suffix>`` under the media root
    beside ``path``. Other files in that folder (an earlier, longer write) are removed: a planted missing
    file must stay missing, and the media root's digest must not depend on what was written before."""
    media_root = path.parent / MEDIA_ROOT_NAME
    written = set()

    def placed(index: int, media: MediaFile) -> str:
        relative = f"{path.stem}/{index:05d}{media.suffix}"
        if media.data is not None:
            write_unless_same(media_root / relative, media.data)
            written.add(media_root / relative)
        return relative

    rows = [
        {key: placed(index, value) if isinstance(value, MediaFile) else value for key, value in row.items()}
        for index, row in enumerate(rows)
    ]
    for stale in sorted(set((media_root / path.stem).iterdir()) - written):
        stale.unlink()
    write_jsonl(path, rows)


def _media_spoiled(row: dict, spoil: Callable[[MediaFile], MediaFile]) -> dict:
    return {key: spoil(value) if isinstance(value, MediaFile) else value for key, value in row.items()}


def _never_written(media: MediaFile) -> MediaFile:
    return replace(media, data=None)


def _cut_short(media: MediaFile) -> MediaFile:
    return replace(media, data=media.data[:16])  # a download stopped inside the file's header


MEDIA_PLANTED = (
    (MEDIA_MISSING, lambda row: _media_spoiled(row, _never_written)),
    (MEDIA_UNDECODABLE, lambda row: _media_spoiled(row, _cut_short)),
)


def media_sample_set(name: str, filename: str, template: str, kind: str, make_row: Callable) -> SampleSet:
    return SampleSet(name, filename, template, kind, make_row, MEDIA_PLANTED, write_media_jsonl)


MEDIA_SAMPLE_SETS: dict[str, SampleSet] = {
    sample_set.name: sample_set
    for sample_set in (
        media_sample_set("image_colours", "aa_ti2t_colours.jsonl", "AA_TI2T", "preference",
                         functools.partial(media_preference_row, shape_colours, "question", "image")),
        media_sample_set("image_colours_sft", "aa_ti2t_colours_sft.jsonl", "AA_TI2T", "supervised",
                         functools.partial(media_supervised_row, shape_colours, "image")),
        media_sample_set("audio_pitch", "aa_ta2t_pitch.jsonl", "AA_TA2T", "preference",
                         functools.partial(media_preference_row, tone_pitch, "prompt", "audio_path")),
        media_sample_set("video_motion", "aa_tv2t_motion.jsonl", "AA_TV2T", "preference",
                         functools.partial(media_preference_row, dot_motion, "prompt", "video_path")),
    )
}  # fmt: skip


@dataclass(frozen=True)
class WrittenMediaSet:
    """A written media sample set: ``materialize_dataset(source, template, kind, out, media_root=media_root)``."""

    source: Path
    template: str
    kind: str
    media_root: Path


def write_media_samples(out_dir: str | Path, rows: int = 300, seed: int = 0) -> dict[str, WrittenMediaSet]:
    """Write every media sample dataset into ``out_dir``, its media under ``out_dir/media``; in
    ``MEDIA_SAMPLE_SETS`` order."""
    paths = write_sets(out_dir, MEDIA_SAMPLE_SETS, rows, seed)
    media_root = Path(out_dir) / MEDIA_ROOT_NAME
    return {
        name: WrittenMediaSet(paths[name], sample_set.template, sample_set.kind, media_root)
        for name, sample_set in MEDIA_SAMPLE_SETS.items()
    }
