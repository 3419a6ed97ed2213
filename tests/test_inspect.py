"""``alignflow inspect``: rows rendered as the model sees them. The rendering functions are checked on
hand-made token ids and labels; the command end to end on tiny real datasets, a tiny model's tokenizer
and a token cache with a reference column beside it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from train_data import materialize_validated, preference_rows, supervised_rows, tiny_model  # noqa: F401
from typer.testing import CliRunner

from align_core.data.token_cache import tokenize_dataset
from align_core.data.token_dataset import TokenDataset
from align_core.data.truncation import IGNORE_INDEX
from align_core.inspect import ANSI, Inspection, ShownRow, render_html, render_text, shown_sequence, token_texts
from align_core.models.registry import load_tokenizer
from align_core.reference.cache import compute_reference_logps, read_reference_logps
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import Kind
from alignflow.cli import app

END = "<|im_end|>"
LONG_ANSWER = " ".join(["the answer is long"] * 30)


class HandTokenizer:
    """A tokenizer whose tokens are fixed strings: decoding joins them, so expected views are plain to read."""

    pieces = {1: "<s>", 2: "User: hi\n", 3: "Bot: ", 4: "hel", 5: "lo", 6: "</s>", 7: "<img>", 8: "a<b>&c"}
    all_special_ids = [1, 6, 7]
    added_tokens_decoder: dict = {}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        return "".join(self.pieces[token_id] for token_id in ids)


def masked(input_ids, trained_from):
    return [IGNORE_INDEX if position < trained_from else token for position, token in enumerate(input_ids)]


def invoke(*args: str):
    return CliRunner().invoke(app, ["inspect", *map(str, args)])


def text_spans(stdout: str) -> list[str]:
    """The «…» spans of the text views (not of the one-line token views)."""
    text = "\n".join(line for line in stdout.splitlines() if not line.startswith("tokens: "))
    return re.findall("«(.*?)»", text, flags=re.DOTALL)


def headers(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("── ")]


class TrainedSpans(HTMLParser):
    """Per ``<pre>`` (one sequence), the text of its tokens with class ``trained``, and all its text."""

    def __init__(self):
        super().__init__()
        self.trained: list[str] = []
        self.whole: list[str] = []
        self._in_pre = self._in_trained = False

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self.trained.append("")
            self.whole.append("")
            self._in_pre = True
        self._in_trained = tag == "span" and "trained" in dict(attrs).get("class", "").split()

    def handle_endtag(self, tag):
        self._in_trained = False
        self._in_pre = self._in_pre and tag != "pre"

    def handle_data(self, data):
        if self._in_pre:
            self.whole[-1] += data
            if self._in_trained:
                self.trained[-1] += data


# ----- rendering, on hand-made tokens ---------------------------------------------------------------


def test_token_texts_concatenate_to_the_decoded_text_across_a_split_multibyte_character(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    input_ids = tokenizer("café \U0001f642 ok", add_special_tokens=False)["input_ids"]
    pieces = token_texts(input_ids, tokenizer)
    assert "".join(pieces) == "café \U0001f642 ok"
    assert "\U0001f642" in pieces and "\ufffd" not in "".join(pieces)  # the emoji's bytes are one piece
    assert len(pieces) == len(input_ids)


def test_plain_text_view_marks_exactly_the_labelled_tokens():
    input_ids = [1, 2, 3, 4, 5, 6]
    row = ShownRow("r0", "kept", [shown_sequence("", input_ids, masked(input_ids, 3), HandTokenizer())])
    assert render_text(row).splitlines() == [
        "── r0  kept",
        "tokens 6, trained 3 (50%)",
        "<s>User: hi",
        "Bot: «hello</s>»",
        "tokens: <s>|User: hi\\n|Bot: |«hel|lo|</s>»",
    ]


def test_token_ids_follow_each_token_and_a_placeholder_run_is_shown_once():
    input_ids = [1, 2, 7, 7, 7, 7, 7, 3, 4]
    sequence = shown_sequence("", input_ids, masked(input_ids, 8), HandTokenizer())
    assert render_text(ShownRow("r0", "kept", [sequence]), token_ids=True).splitlines()[-1] == (
        "tokens: <s>[1]|User: hi\\n[2]|<img>[7]×5|Bot: [3]|«hel[4]»"
    )


def test_ansi_style_colours_the_trained_span_and_shades_alternate_tokens():
    input_ids = [2, 3, 4, 5]
    row = ShownRow("r0", "kept", [shown_sequence("", input_ids, masked(input_ids, 2), HandTokenizer())])
    lines = render_text(row, ANSI).splitlines()
    assert lines[3] == f"Bot: {ANSI.trained_open}hello{ANSI.trained_close}"
    shades = [ANSI.shades[position % 2] for position in range(4)]
    assert lines[4].count(shades[0]) == 2 and lines[4].count(shades[1]) == 2
    assert lines[4].endswith(f"lo{ANSI.reset}{ANSI.trained_close}")


def test_preference_sequences_show_their_reference_log_probs_and_prompt_only_trains_nothing():
    chosen = shown_sequence("chosen", [2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 4], HandTokenizer(), {"ref fp32": -1.25})
    prompt = shown_sequence("", [2, 3], None, HandTokenizer())
    assert render_text(ShownRow("r0", "kept", [chosen])).splitlines()[1] == (
        "[chosen] tokens 3, trained 1 (33%), reference log-prob -1.250 (ref fp32)"
    )
    assert prompt.trained_count == 0 and "«" not in render_text(ShownRow("r1", "kept", [prompt]))


def test_html_escapes_token_text_and_marks_trained_tokens():
    input_ids = [2, 3, 8, 6]
    sequence = shown_sequence("", input_ids, masked(input_ids, 2), HandTokenizer())
    page = render_html(Inspection("hand <made>", Kind.SUPERVISED, [ShownRow("r0", "kept", [sequence])]))
    assert "a&lt;b&gt;&amp;c" in page and "a<b>&c" not in page
    parser = TrainedSpans()
    parser.feed(page)
    assert parser.trained == ["a<b>&c</s>"] and parser.whole == ["User: hi\nBot: a<b>&c</s>"]


# ----- the command, on tiny real data -----------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    multi_turn = {"messages": [
        {"role": "user", "content": "Count the colours red, blue, green, yellow, purple and orange for me."},
        {"role": "assistant", "content": "There are six colours in that list."},
        {"role": "user", "content": "And one?"},
        {"role": "assistant", "content": "One."},
    ]}
    long_answer = {"messages": [{"role": "user", "content": "Talk."}, {"role": "assistant", "content": LONG_ANSWER}]}
    return {
        "supervised": materialize_validated(supervised_rows(3), "supervised", root, "sft"),
        "preference": materialize_validated(preference_rows(3), "preference", root, "pref"),
        "lengths": materialize_validated([*supervised_rows(1), multi_turn, long_answer], "supervised", root, "lengths"),
    }


@pytest.fixture(scope="module")
def preference_cache(datasets, tiny_model, tmp_path_factory) -> Path:
    """A token cache of the preference rows with a reference column beside it."""
    cache = tokenize_dataset(datasets["preference"], tiny_model, 256, cache_root=tmp_path_factory.mktemp("cache"))
    compute_reference_logps(cache, tiny_model)
    return cache


def row_ids(dataset_dir: Path) -> list[str]:
    return ShardDataset(dataset_dir).read_table(["id"]).column("id").to_pylist()


def test_supervised_trained_span_is_exactly_the_assistant_turn_and_nothing_of_the_prompt(datasets, tiny_model):
    result = invoke(datasets["supervised"], "--model", tiny_model, "-n", "3")
    assert result.exit_code == 0, result.output
    answers = [row["messages"][1]["content"] for row in supervised_rows(3)]
    assert text_spans(result.stdout) == [answer + END for answer in answers]
    questions = [row["messages"][0]["content"] for row in supervised_rows(3)]
    assert all(question in result.stdout and not any(question in span for span in text_spans(result.stdout))
               for question in questions)
    assert headers(result.stdout) == row_ids(datasets["supervised"])


def test_preference_rows_show_chosen_then_rejected(datasets, tiny_model):
    result = invoke(datasets["preference"], "--model", tiny_model, "-n", "1")
    assert result.exit_code == 0, result.output
    row = preference_rows(1)[0]
    assert text_spans(result.stdout) == [row["chosen"][0]["content"] + END, row["rejected"][0]["content"] + END]
    labels = [line.split("]")[0] + "]" for line in result.stdout.splitlines() if line.startswith("[")]
    assert labels == ["[chosen]", "[rejected]"]


def test_ids_select_those_rows_in_the_order_given(datasets, tiny_model):
    first, _, third = row_ids(datasets["supervised"])
    result = invoke(datasets["supervised"], "--model", tiny_model, "--ids", third, "--ids", first)
    assert result.exit_code == 0, result.output
    assert headers(result.stdout) == [third, first]
    assert text_spans(result.stdout)[0] == supervised_rows(3)[2]["messages"][1]["content"] + END


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{supervised}", "--model", "{model}", "--ids", "no-such-row"], "no row with id 'no-such-row' in dataset"),
        (["{supervised}"], "is a dataset folder: --model is needed"),
        (["{empty}"], "neither a materialised dataset folder nor a token cache folder"),
        (["{cache}", "--ids", "no-such-row"], "no row with id 'no-such-row' in token cache"),
    ],
    ids=["unknown id", "dataset without --model", "not a dataset or cache", "unknown id in a cache"],
)
def test_bad_input_is_one_line_error_and_exit_2(datasets, tiny_model, preference_cache, tmp_path, arguments, message):
    places = {"supervised": datasets["supervised"], "model": tiny_model, "empty": tmp_path, "cache": preference_cache}
    result = invoke(*(argument.format(**places) for argument in arguments))
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_html_page_highlights_exactly_the_trained_tokens_of_each_sequence(preference_cache, tmp_path):
    page = tmp_path / "rows.html"
    result = invoke(preference_cache, "-n", "2", "--html", page)
    assert result.exit_code == 0, result.output
    parser = TrainedSpans()
    parser.feed(page.read_text())
    rows = TokenDataset(preference_cache)
    tokenizer = load_tokenizer(rows.manifest["tokenizer_path"])
    expected = []
    for index in range(2):
        for side in ("chosen", "rejected"):
            input_ids, labels = rows[index][f"{side}_input_ids"], rows[index][f"{side}_labels"]
            expected.append(tokenizer.decode(input_ids[labels != IGNORE_INDEX], skip_special_tokens=False))
    assert parser.trained == expected
    assert parser.whole[0] == tokenizer.decode(rows[0]["chosen_input_ids"], skip_special_tokens=False)


def test_token_cache_without_model_shows_rows_counts_and_reference_log_probs(preference_cache):
    result = invoke(preference_cache, "-n", "1")
    assert result.exit_code == 0, result.output
    rows = TokenDataset(preference_cache)
    (reference,) = sorted((preference_cache / "reference").glob("[!.]*"))
    chosen, rejected = read_reference_logps(reference, rows)[0]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert f"reference log-prob {chosen:.3f} (" in summaries[0]
    assert f"reference log-prob {rejected:.3f} (" in summaries[1]
    trained = int(np.sum(rows[0]["chosen_labels"] != IGNORE_INDEX))
    assert summaries[0].startswith(f"[chosen] tokens {len(rows[0]['chosen_input_ids'])}, trained {trained} (")
    assert "token cache counts: rows_in 3, kept 3, truncated 0" in result.stdout
    assert headers(result.stdout) == [rows[0]["id"]]


def test_what_truncation_did_to_each_row_from_a_dataset(datasets, tiny_model):
    short, multi_turn, long_answer = row_ids(datasets["lengths"])
    result = invoke(
        datasets["lengths"], "--model", tiny_model, "--max-length", "80", "--truncation", "truncate_prompt_left"
    )
    assert result.exit_code == 0, result.output
    outcomes = {line.split()[1]: line.split()[2] for line in result.stdout.splitlines() if line.startswith("── ")}
    assert outcomes == {short: "kept", multi_turn: "truncated", long_answer: "dropped_response_too_long:"}
    assert text_spans(result.stdout)[-1] == "One." + END  # the kept last turn; the first answer was cut with its prompt


def test_ids_of_rows_the_cache_dropped_or_truncated_are_said_so(datasets, tiny_model, tmp_path):
    cache = tokenize_dataset(datasets["lengths"], tiny_model, 80, "truncate_prompt_left", tmp_path)
    short, multi_turn, long_answer = row_ids(datasets["lengths"])
    result = invoke(cache, "--ids", f"{long_answer},{multi_turn},{short}")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("── ")]
    assert lines[0] == f"── {long_answer}  dropped_response_too_long: not in the token cache, never trained on"
    assert lines[1:] == [f"── {multi_turn}  truncated", f"── {short}  kept"]
