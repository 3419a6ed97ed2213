"""Reference log-probs: KTO's mismatched pairs, the cached column (values, key, hits, refusals), the
collator that batches it, and the Prefect task that computes it once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from preference_data import unpaired_data, unpaired_rows  # noqa: F401
from train_data import materialize_validated, preference_data, tiny_model  # noqa: F401

from align_core.data import IGNORE_INDEX, TokenDataset, tokenize_dataset
from align_core.errors import UsageError
from align_core.reference import (
    MismatchedRows,
    ScoredCollator,
    ScoredRows,
    compute_reference_logps,
    mismatched_sequence,
    read_reference_logps,
    reference_dir,
)

MAX_LENGTH = 96


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_model, preference_data, unpaired_data):
    root = tmp_path_factory.mktemp("token-cache")
    return {
        "preference": tokenize_dataset(preference_data[1], tiny_model, MAX_LENGTH, cache_root=root),
        "unpaired": tokenize_dataset(unpaired_data[1], tiny_model, MAX_LENGTH, cache_root=root),
    }


@pytest.fixture(scope="module")
def model(tiny_model):
    from align_core.models.registry import load_causal_lm

    return load_causal_lm(tiny_model).eval()


def slow_sum_logps(model, input_ids, labels) -> float:
    """One unpadded row, token by token, in float64: the sum of log p(label_t | tokens before t)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(input_ids)], dtype=torch.long)).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return sum(log_probs[t - 1, int(labels[t])].item() for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX)


# ----- scoring -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_scorer_projects_response_positions_only_and_equals_the_full_forward(tmp_path, arch):
    from align_core.losses import sequence_logps
    from align_core.models.registry import load_causal_lm
    from align_core.models.tiny import build_tiny_model
    from align_core.reference import ResponseScorer

    causal_lm = load_causal_lm(build_tiny_model(tmp_path / arch, arch=arch, vocab_size=320, hidden_size=64, num_layers=1, num_heads=4))
    scorer = ResponseScorer(causal_lm)
    assert scorer.plain_head
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 300, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[:, :5] = IGNORE_INDEX  # the prompt
    labels[2, :] = IGNORE_INDEX  # a row with no response token: sum and mean 0
    weights = (causal_lm.get_output_embeddings().weight, causal_lm.get_input_embeddings().weight)

    def logps_and_grads(score):
        causal_lm.zero_grad()
        result = score()
        result[0].sum().backward()  # gradients reach the head and the body through the scored positions
        return [value.detach() for value in result], [weight.grad.clone() for weight in weights]

    def fast():
        scores = scorer(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return scores.sum, scores.mean, scores.n_tokens

    (fast_sum, fast_mean, fast_n), fast_grads = logps_and_grads(fast)
    (full_sum, full_mean, full_n), full_grads = logps_and_grads(
        lambda: sequence_logps(causal_lm(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    )
    assert fast_n.tolist() == full_n.tolist() == [7, 4, 0]
    assert fast_sum.tolist() == pytest.approx(full_sum.tolist(), abs=1e-5)
    assert fast_mean.tolist() == pytest.approx(full_mean.tolist(), abs=1e-6)
    for fast_grad, full_grad in zip(fast_grads, full_grads):
        assert torch.allclose(fast_grad, full_grad, atol=1e-5)


# ----- mismatched pairs ----------------------------------------------------------------------------


def test_mismatched_sequence_keeps_one_prompt_and_the_other_response():
    prompt_ids, prompt_labels = np.array([1, 5, 6, 7, 8]), np.array([-100, -100, -100, 7, 8])
    other_ids, other_labels = np.array([1, 9, 10, 11]), np.array([-100, -100, 10, 11])
    input_ids, labels = mismatched_sequence(prompt_ids, prompt_labels, other_ids, other_labels, max_length=16)
    assert input_ids.tolist() == [1, 5, 6, 10, 11]
    assert labels.tolist() == [-100, -100, -100, 10, 11]


def test_mismatched_sequence_cuts_the_response_at_max_length():
    input_ids, labels = mismatched_sequence(
        np.array([1, 2, 3]), np.array([-100, -100, 3]), np.array([1, 4, 5, 6, 7]), np.array([-100, 4, 5, 6, 7]), max_length=4
    )
    assert input_ids.tolist() == [1, 2, 4, 5]
    assert labels.tolist() == [-100, -100, 4, 5]


def test_mismatched_rows_pair_each_row_with_the_next_and_wrap_around(caches):
    rows = TokenDataset(caches["preference"])
    pairs = MismatchedRows(rows)
    last = len(rows) - 1
    for index, partner in [(0, 1), (last, 0)]:
        pair = pairs[index]
        for prefix in ("chosen_", "rejected_"):
            expected = mismatched_sequence(
                rows[index][f"{prefix}input_ids"], rows[index][f"{prefix}labels"],
                rows[partner][f"{prefix}input_ids"], rows[partner][f"{prefix}labels"], MAX_LENGTH,
            )
            assert pair[f"{prefix}input_ids"].tolist() == expected[0].tolist()
            assert pair[f"{prefix}labels"].tolist() == expected[1].tolist()
        assert pair["id"] == rows[index]["id"]


def test_mismatched_rows_refuse_a_one_row_dataset(tmp_path, tiny_model):
    one_row = materialize_validated(unpaired_rows(2)[:1], "unpaired_preference", tmp_path, "one")
    with pytest.raises(UsageError, match=r"1 row; KTO's reference point pairs rows with each other and needs at least 2"):
        MismatchedRows(TokenDataset(tokenize_dataset(one_row, tiny_model, MAX_LENGTH, cache_root=tmp_path / "cache")))


# ----- the cached column ---------------------------------------------------------------------------


def test_column_holds_each_sequence_scored_alone(caches, tiny_model, model):
    rows = TokenDataset(caches["preference"])
    folder = compute_reference_logps(caches["preference"], tiny_model, batch_size=5)  # batches pad rows
    logps = read_reference_logps(folder, rows)
    assert logps.shape == (len(rows), 2) and logps.dtype == np.float32
    for index in (0, 7, len(rows) - 1):
        for column, prefix in enumerate(("chosen_", "rejected_")):
            expected = slow_sum_logps(model, rows[index][f"{prefix}input_ids"], rows[index][f"{prefix}labels"])
            assert logps[index, column] == pytest.approx(expected, abs=2e-4)


def test_mismatched_column_scores_each_pair_alone(caches, tiny_model, model):
    rows = TokenDataset(caches["unpaired"])
    logps = read_reference_logps(compute_reference_logps(caches["unpaired"], tiny_model, "mismatched"), rows)
    pairs = MismatchedRows(rows)
    assert logps.shape == (len(rows), 1)
    for index in (0, 3, len(rows) - 1):
        expected = slow_sum_logps(model, pairs[index]["input_ids"], pairs[index]["labels"])
        assert logps[index, 0] == pytest.approx(expected, abs=2e-4)


def test_second_compute_is_a_hit_that_loads_no_model(caches, tiny_model):
    folder = compute_reference_logps(caches["preference"], tiny_model)
    written = (folder / "logps.arrow").stat().st_mtime_ns
    # a device that does not exist here: the hit returns before any model would be placed on it
    again = compute_reference_logps(caches["preference"], tiny_model, device="cuda:7")
    assert again == folder and (folder / "logps.arrow").stat().st_mtime_ns == written


def test_key_changes_with_weights_dtype_and_pairing_not_with_the_path(caches, tiny_model, tmp_path):
    from align_core.models.registry import load_causal_lm

    cache = caches["preference"]
    base = reference_dir(cache, tiny_model, "matched", torch.float32)
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert reference_dir(cache, copy, "matched", torch.float32) == base  # content, not location
    trained = load_causal_lm(copy)
    with torch.no_grad():
        trained.lm_head.weight.mul_(1.01)
    trained.save_pretrained(tmp_path / "trained")
    shutil.copy(tiny_model / "tokenizer.json", tmp_path / "trained")
    others = {
        reference_dir(cache, tmp_path / "trained", "matched", torch.float32),
        reference_dir(cache, tiny_model, "matched", torch.bfloat16),
        reference_dir(cache, tiny_model, "mismatched", torch.float32),
    }
    assert base not in others and len(others) == 3


def test_reference_model_with_the_same_tokenizer_saved_differently_is_accepted(caches, tiny_model, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "resaved")
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps(config, indent=4, sort_keys=True))  # other bytes, same tokens
    folder = compute_reference_logps(caches["unpaired"], copy, "mismatched")
    assert folder == reference_dir(caches["unpaired"], tiny_model, "mismatched", torch.float32)


def test_reference_model_with_another_tokenizer_is_refused(caches, tmp_path):
    from align_core.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", vocab_size=320, hidden_size=64, num_layers=1, num_heads=4)
    with pytest.raises(UsageError, match=r"its tokenizer differs from the one token cache .* was built with"):
        compute_reference_logps(caches["preference"], other)


def test_unknown_pairing_and_a_folder_without_weights_are_refused(caches, tiny_model, tmp_path):
    with pytest.raises(UsageError, match=r"pairing must be one of matched, mismatched, got 'shuffled'"):
        compute_reference_logps(caches["preference"], tiny_model, "shuffled")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match=r"no weight files"):
        compute_reference_logps(caches["preference"], tmp_path / "empty")


def test_a_column_read_against_other_rows_is_refused(caches, tiny_model):
    folder = compute_reference_logps(caches["unpaired"], tiny_model)
    with pytest.raises(UsageError, match=r"not row-aligned with token cache"):
        read_reference_logps(folder, TokenDataset(caches["preference"]))


def test_a_compute_waits_for_another_one_of_the_same_column(caches, tiny_model):
    import fcntl
    import threading

    cache = caches["unpaired"]
    folder = reference_dir(cache, tiny_model, "matched", torch.float64)
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as held:  # another job is scoring this column
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=compute_reference_logps, args=(cache, tiny_model), kwargs={"dtype": torch.float64})
        waiting.start()
        waiting.join(timeout=2.0)
        assert waiting.is_alive() and not (folder / "manifest.json").exists()
    waiting.join(timeout=120)
    assert not waiting.is_alive()
    assert read_reference_logps(folder, TokenDataset(cache)).shape == (len(TokenDataset(cache)), 1)
    assert not list(folder.parent.glob(".staging-*"))


# ----- batching ------------------------------------------------------------------------------------


def test_collator_orders_reference_logps_like_the_sequences(caches, tiny_model):
    rows = TokenDataset(caches["preference"])
    logps = read_reference_logps(compute_reference_logps(caches["preference"], tiny_model), rows)
    scored = ScoredRows(rows, logps, MismatchedRows(rows), logps[::-1].copy())
    picked = [4, 0, 9]
    batch = ScoredCollator(rows.collator())([scored[i] for i in picked])
    assert batch.input_ids.shape[0] == 6  # chosen rows, then rejected rows
    assert batch.values["ref_logps"].tolist() == [*logps[picked, 0].tolist(), *logps[picked, 1].tolist()]
    reversed_logps = logps[::-1]
    assert batch.companions["mismatched"].values["ref_logps"].tolist() == [*reversed_logps[picked, 0].tolist(), *reversed_logps[picked, 1].tolist()]
    pairs = MismatchedRows(rows)
    first_rejected_pair = pairs[picked[0]]["rejected_input_ids"]
    assert batch.companions["mismatched"].input_ids[3, : len(first_rejected_pair)].tolist() == first_rejected_pair.tolist()
    assert batch.companions["mismatched"].attention_mask[3].sum().item() == len(first_rejected_pair)


# ----- the Prefect task ----------------------------------------------------------------------------


def test_reference_task_caches_on_its_column_and_recomputes_a_deleted_one(prefect_harness, caches, tiny_model):
    from align_core.reference import ReferenceSpec
    from tasks.reference import reference_logps

    spec = ReferenceSpec(token_cache_dir=str(caches["preference"]), reference_model=str(tiny_model), pairing="mismatched")
    arguments = {"spec": spec}
    folder = reference_dir(caches["preference"], tiny_model, "mismatched", torch.float32)
    shutil.rmtree(folder, ignore_errors=True)
    first = reference_logps(**arguments, return_state=True)
    assert first.is_completed() and first.name != "Cached" and first.result() == str(folder)
    reference_logps(**arguments)  # the folder exists now: this run stores the cache entry
    assert reference_logps(**arguments, return_state=True).name == "Cached"
    shutil.rmtree(folder)
    rebuilt = reference_logps(**arguments, return_state=True)
    assert rebuilt.name != "Cached" and rebuilt.result() == str(folder) and (folder / "manifest.json").is_file()


@pytest.mark.parametrize(
    "algorithm, reference, pairings",
    [("dpo", "cached", ["matched"]), ("kto", "cached", ["matched", "mismatched"]), ("simpo", None, []), ("dpo", "live", []),
     ("sft", None, [])],
)
def test_reference_steps_submit_what_the_trainer_reads(prefect_harness, caches, tiny_model, algorithm, reference, pairings):
    from prefect import flow

    from align_core.config import build_config
    from tasks.reference import reference_steps

    config = build_config(
        {
            "train_cfgs": {"algorithm": algorithm, "precision": "fp32", **({"reference": reference} if reference else {})},
            "data_cfgs": {"train_datasets": ["unused"]},
            "model_cfgs": {"model_name_or_path": str(tiny_model)},
            "logger_cfgs": {"output_dir": "unused"},
        }
    )

    @flow(name="reference-steps-test")
    def submit(cache: str) -> list[str]:
        return [future.result() for future in reference_steps(config, {cache: None})]

    folders = submit(str(caches["unpaired"]))
    assert folders == [str(reference_dir(caches["unpaired"], tiny_model, pairing, torch.float32)) for pairing in pairings]


# ----- the pipeline step ---------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_computes_reference_columns_once_before_dpo_and_kto_train(prefect_harness, tmp_path):
    import yaml
    from test_pipeline import pipeline_yaml, step_states

    from flows.pipeline import pipeline

    config = pipeline_yaml(tmp_path)
    spec = yaml.safe_load(config.read_text())
    del spec["datasets"]["alpaca"]  # no job reads it: materialising and validating it was time spent on nothing
    settings = {"train_cfgs": {"max_steps": 2, "save_interval": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3},
                "data_cfgs": {"max_length": 128}}
    spec["jobs"] = {
        "dpo": {"algorithm": "dpo", "model": "tiny", "train": ["hh"], "eval": ["hh"], "config": settings},
        "kto": {"algorithm": "kto", "model": "tiny", "train": ["hh"], "config": settings},
        "simpo": {"algorithm": "simpo", "model": "tiny", "train": ["hh"], "config": settings},
    }
    config.write_text(yaml.safe_dump(spec))
    state = pipeline(config=str(config), return_state=True)
    summary = state.result()
    assert {name: job["steps"] for name, job in summary["jobs"].items()} == {"dpo": 2, "kto": 2, "simpo": 2}
    manifests = sorted((tmp_path / "out" / "token_cache").glob("*/reference/*/manifest.json"))
    # one token cache (hh); dpo and kto share the matched column, kto adds the mismatched one
    assert sorted(json.loads(path.read_text())["pairing"] for path in manifests) == ["matched", "mismatched"]
    written = [path.stat().st_mtime_ns for path in manifests]
    references = {step: state for step, state in step_states(state.state_details.flow_run_id, config).items()
                  if step.startswith("reference-logps")}
    assert sorted(references) == ["reference-logps[dpo/hh]", "reference-logps[kto/hh]"] and "Failed" not in references.values()
    rerun = pipeline(config=str(config), return_state=True)
    assert rerun.result()["jobs"]["dpo"]["model_dir"] == summary["jobs"]["dpo"]["model_dir"]
    rerun_states = step_states(rerun.state_details.flow_run_id, config)
    assert {rerun_states[step] for step in references} == {"Cached"}
    assert [path.stat().st_mtime_ns for path in manifests] == written  # nothing scored again
