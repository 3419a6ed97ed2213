"""The bundled sample datasets: deterministic, in the real schemas, exactly the planted bad rows, and a
preference signal a model can learn."""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from align_core.errors import UsageError
from align_core.materialize import materialize_dataset
from align_core.shards.dataset import ShardDataset
from alignflow.samples import SAMPLE_SETS, planted_positions, sample_rows, write_samples

ROWS = 300
PREFERENCE_SETS = ["hh_rlhf", "pku_saferlhf", "ultrafeedback"]


@pytest.fixture(scope="module")
def sample_paths(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("samples"), rows=ROWS, seed=0)


@pytest.fixture(scope="module")
def datasets(sample_paths, tmp_path_factory):
    """Every sample set materialised with its template and kind, plus PKU-SafeRLHF by safety."""
    out_root = tmp_path_factory.mktemp("datasets")
    built = {
        name: ShardDataset(materialize_dataset(sample_paths[name], spec.template, spec.kind, out_root))
        for name, spec in SAMPLE_SETS.items()
    }
    safer = materialize_dataset(
        sample_paths["pku_saferlhf"], "PKUSafeRLHF", "preference", out_root, template_options={"preference": "safer"}
    )
    built["pku_saferlhf_safer"] = ShardDataset(safer)
    return built


def texts(conversation: list[dict]) -> str:
    return "\n".join(part["text"] for message in conversation for part in message["content"])


def rows_of(dataset: ShardDataset) -> list[dict]:
    return dataset.read_table().to_pylist()


# --- Determinism and layout -----------------------------------------------------------------------


def test_same_seed_writes_byte_identical_files_and_another_seed_different_ones(tmp_path):
    first = write_samples(tmp_path / "a", rows=30, seed=7)
    again = write_samples(tmp_path / "b", rows=30, seed=7)
    other = write_samples(tmp_path / "c", rows=30, seed=8)
    assert list(first) == list(SAMPLE_SETS)
    for name in SAMPLE_SETS:
        assert first[name].read_bytes() == again[name].read_bytes(), name
        assert first[name].read_bytes() != other[name].read_bytes(), name


def test_files_do_not_depend_on_the_process_hash_seed(tmp_path):
    """Nothing iterates a set or hashes with Python's per-process salt: another process writes the same bytes."""
    here = write_samples(tmp_path / "here", rows=20, seed=1)
    script = f"from alignflow.samples import write_samples; write_samples({str(tmp_path / 'there')!r}, rows=20, seed=1)"
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    for name, path in here.items():
        assert path.read_bytes() == (tmp_path / "there" / path.name).read_bytes(), name


def test_rows_counts_every_row_of_a_file_the_planted_ones_included(sample_paths):
    for name, path in sample_paths.items():
        count = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else len(path.read_text().splitlines())
        assert count == ROWS, name


def test_too_few_rows_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="rows must be at least 10"):
        write_samples(tmp_path, rows=5)


def test_files_carry_the_real_datasets_fields(sample_paths):
    first_line = {name: json.loads(path.read_text().splitlines()[0]) for name, path in sample_paths.items() if path.suffix == ".jsonl"}
    assert set(first_line["alpaca"]) == {"instruction", "input", "output", "text"}
    assert set(first_line["hh_rlhf"]) == {"chosen", "rejected"}
    assert first_line["hh_rlhf"]["chosen"].startswith("\n\nHuman: ")
    assert set(first_line["gsm8k"]) == {"question", "answer"}
    assert set(first_line["pku_saferlhf"]) == {
        "prompt", "response_0", "response_1", "prompt_source", "response_0_source", "response_1_source",
        "is_response_0_safe", "is_response_1_safe", "response_0_harm_category", "response_1_harm_category",
        "response_0_severity_level", "response_1_severity_level", "better_response_id", "safer_response_id",
        "response_0_sha256", "response_1_sha256",
    }  # fmt: skip
    assert len(first_line["pku_saferlhf"]["response_0_harm_category"]) == 19
    schema = pq.read_schema(sample_paths["ultrafeedback"])
    assert schema.names == ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"]
    assert str(schema.field("chosen").type) == "list<element: struct<content: string, role: string>>"


# --- Materialisation: exactly the planted rows are quarantined ------------------------------------


@pytest.mark.parametrize("name", list(SAMPLE_SETS))
def test_sample_materialises_with_its_template_quarantining_exactly_the_planted_rows(datasets, name):
    dataset, spec = datasets[name], SAMPLE_SETS[name]
    quarantine = dataset.read_quarantine().to_pylist()
    assert dataset.num_rows == ROWS - len(spec.planted)
    assert [row["source_index"] for row in quarantine] == planted_positions(ROWS, len(spec.planted))
    assert [row["reason"] for row in quarantine] == spec.planted_reasons
    assert dataset.verify() == []


def test_pku_saferlhf_by_safety_quarantines_the_same_rows(datasets):
    by_safety = datasets["pku_saferlhf_safer"]
    assert by_safety.manifest.quarantine_reasons == datasets["pku_saferlhf"].manifest.quarantine_reasons
    assert by_safety.num_rows == ROWS - 3


@pytest.mark.parametrize("name", list(SAMPLE_SETS))
def test_good_rows_never_repeat_a_prompt(datasets, name):
    supervised = datasets[name].kind.value == "supervised"
    prompts = [texts(row["messages"][:-1] if supervised else row["prompt"]) for row in rows_of(datasets[name])]
    assert len(set(prompts)) == len(prompts)


def test_data_contracts_pass_on_every_sample(datasets):
    runner = pytest.importorskip("data_contracts.runner")
    for name, dataset in datasets.items():
        result = runner.validate_dataset(dataset.path)
        assert result.passed, (name, result.results)


# --- The learnable signal -------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def bag_of_words_accuracy(pairs: list[tuple[str, str]]) -> float:
    """Fit naive-Bayes word log-odds of chosen vs rejected on the even pairs; return the share of odd
    (held-out) pairs whose chosen answer outscores its rejected one."""
    fit, held_out = pairs[::2], pairs[1::2]
    chosen_counts, rejected_counts = Counter(), Counter()
    for chosen, rejected in fit:
        chosen_counts.update(words(chosen))
        rejected_counts.update(words(rejected))
    vocabulary_size = len(chosen_counts | rejected_counts) + 1
    chosen_total = sum(chosen_counts.values()) + vocabulary_size
    rejected_total = sum(rejected_counts.values()) + vocabulary_size

    def score(text: str) -> float:
        return sum(
            math.log((chosen_counts[w] + 1) / chosen_total) - math.log((rejected_counts[w] + 1) / rejected_total)
            for w in words(text)
        )

    return sum(score(chosen) > score(rejected) for chosen, rejected in held_out) / len(held_out)


def answer_pairs(dataset: ShardDataset) -> list[tuple[str, str]]:
    return [(texts(row["chosen"]), texts(row["rejected"])) for row in rows_of(dataset)]


@pytest.mark.parametrize("name", [*PREFERENCE_SETS, "pku_saferlhf_safer"])
def test_a_bag_of_words_separates_chosen_from_rejected(datasets, name):
    pairs = answer_pairs(datasets[name])
    assert bag_of_words_accuracy(pairs) > 0.9
    # Control: with chosen and rejected swapped at random there is nothing to learn.
    rng = random.Random(0)
    shuffled = [pair if rng.random() < 0.5 else pair[::-1] for pair in pairs]
    assert 0.3 < bag_of_words_accuracy(shuffled) < 0.7


def test_pku_saferlhf_safety_labels_agree_with_each_other(sample_paths):
    rows = [json.loads(line) for line in sample_paths["pku_saferlhf"].read_text().splitlines()]
    bad = set(planted_positions(ROWS, 3))
    decoupled = harmful = 0
    for index, row in enumerate(rows):
        if index in bad:
            continue
        for k in (0, 1):
            flagged = [name for name, on in row[f"response_{k}_harm_category"].items() if on]
            assert row[f"is_response_{k}_safe"] == (row[f"response_{k}_severity_level"] == 0) == (not flagged)
        assert row[f"is_response_{row['safer_response_id']}_safe"]
        if not (row["is_response_0_safe"] and row["is_response_1_safe"]):
            harmful += 1
            decoupled += row["better_response_id"] != row["safer_response_id"]
    # Most prompts are harmful, and helpfulness sides with the unsafe answer on a few of them, as in the real data.
    assert harmful > 0.5 * ROWS
    assert 0 < decoupled < 0.2 * harmful


def test_hh_rlhf_prompts_are_multi_turn_and_alternate(datasets):
    prompts = [row["prompt"] for row in rows_of(datasets["hh_rlhf"])]
    for prompt in prompts:
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]
    multi_turn = sum(len(prompt) > 1 for prompt in prompts)
    assert 0.3 * len(prompts) < multi_turn < 0.9 * len(prompts)


@pytest.mark.parametrize("name", list(SAMPLE_SETS))
def test_rows_span_short_and_long(datasets, name):
    column_sets = ["messages"] if datasets[name].kind.value == "supervised" else ["prompt", "chosen"]
    lengths = sorted(sum(len(texts(row[c]).split()) for c in column_sets) for row in rows_of(datasets[name]))
    assert lengths[0] < 40 and lengths[-1] > 80, (lengths[0], lengths[-1])


# --- Answers are right ----------------------------------------------------------------------------

OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str) -> float:
    """Integer arithmetic with + - * / only."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"not plain arithmetic: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def test_gsm8k_calculator_notes_and_final_answers_are_right(datasets):
    for row in rows_of(datasets["gsm8k"]):
        answer = texts(row["messages"][1:])
        notes = re.findall(r"<<([^=>]+)=(-?\d+)>>", answer)
        assert notes, answer
        for expression, value in notes:
            assert evaluate(expression) == int(value), expression
        assert json.loads(row["meta"])["final_answer"] == notes[-1][1]


def test_alpaca_arithmetic_answers_are_right():
    rows = sample_rows(SAMPLE_SETS["alpaca"], ROWS)
    checked = 0
    for row in rows:
        match = re.search(r"(\d+) (plus|minus|times) (\d+)", row["instruction"] or "")
        if match and isinstance(row["output"], str) and row["output"]:
            a, op, b = int(match[1]), match[2], int(match[3])
            expected = {"plus": a + b, "minus": a - b, "times": a * b}[op]
            assert f"{a} {op} {b} is {expected}." in row["output"]
            checked += 1
    assert checked > 20


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_writes_every_file_and_prints_out_dir_last(tmp_path):
    from alignflow.cli import app

    out_dir = tmp_path / "samples"
    result = CliRunner().invoke(app, ["samples", str(out_dir), "--rows", "12", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == str(out_dir)
    assert lines[:-1] == [str(out_dir / spec.filename) for spec in SAMPLE_SETS.values()]
    assert (out_dir / "gsm8k.jsonl").read_bytes() == write_samples(tmp_path / "again", rows=12, seed=3)["gsm8k"].read_bytes()


def test_cli_refuses_fewer_rows_than_the_planted_ones_need(tmp_path):
    from alignflow.cli import app

    result = CliRunner().invoke(app, ["samples", str(tmp_path / "x"), "--rows", "3"])
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_writing_the_same_samples_again_leaves_the_files_untouched(tmp_path):
    import os

    from alignflow.samples import write_samples

    paths = write_samples(tmp_path, rows=20, seed=0)
    for path in paths.values():
        os.utime(path, ns=(1, 1))  # an old mtime, which a rewrite would replace
    write_samples(tmp_path, rows=20, seed=0)
    assert {path.stat().st_mtime_ns for path in paths.values()} == {1}
    write_samples(tmp_path, rows=21, seed=0)  # other content is written
    assert all(path.stat().st_mtime_ns != 1 for path in paths.values())
