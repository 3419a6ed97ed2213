"""Token-level checks: each planted defect fails its check alone, with the exact count, and stops a training
run before any model loads, naming rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from train_data import materialize_validated, sft_data, supervised_rows, tiny_model, write_config  # noqa: F401

from align_core.data.token_cache import TokenizeSpec
from align_core.data.token_checks import check_token_cache, require_token_checks
from align_core.errors import UsageError

CLEAN = ("{{- bos_token -}}{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' -}}"
         "{%- if message['role'] == 'assistant' -%}{%- generation -%}{{- message['content'] + '<|im_end|>' -}}"
         "{%- endgeneration -%}{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}{{- '\\n' -}}"
         "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def model_with_template(tmp_path: Path, tiny_model: Path, template: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


def failed(cache: Path) -> dict[str, int]:
    return {f.name: f.count for f in check_token_cache(cache) if f.failed}


def cache_of(dataset: Path, model: Path, root: Path, max_length: int = 96) -> Path:
    return TokenizeSpec(dataset_dir=str(dataset), tokenizer_path=str(model), max_length=max_length,
                        cache_root=str(root / "token_cache")).build()


def test_a_clean_cache_passes_every_check_and_the_template_mask_is_compared(tmp_path, tiny_model, sft_data):
    findings = check_token_cache(cache_of(sft_data, tiny_model, tmp_path))
    assert not any(f.failed for f in findings)
    template = next(f for f in findings if f.name == "template_mask_disagrees")
    assert template.checked == 32  # the sample was rendered by the template and compared token for token


def test_a_template_that_adds_a_second_bos_fails_double_bos_alone(tmp_path, tiny_model, sft_data):
    model = model_with_template(tmp_path, tiny_model, "{{- bos_token -}}" + CLEAN)
    assert failed(cache_of(sft_data, model, tmp_path)) == {"double_bos": 48}


def test_labels_that_end_without_a_stop_token_fail_alone(tmp_path, tiny_model, sft_data):
    no_end = CLEAN.replace("{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}",
                           "{{- message['content'] -}}{%- endgeneration -%}")
    assert failed(cache_of(sft_data, model_with_template(tmp_path, tiny_model, no_end), tmp_path)) == {
        "labels_end_without_stop": 48}


def test_a_generation_block_that_leaves_out_the_end_of_turn_is_caught_as_labels_without_a_stop(tmp_path, tiny_model, sft_data):
    # the labels follow the template's {% generation %} blocks: with the end of turn outside, the model would never
    # learn to emit it; the template mask still agrees with the labels (both come from the same blocks)
    outside = CLEAN.replace("{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}",
                            "{%- generation -%}{{- message['content'] -}}{%- endgeneration -%}{{- '<|im_end|>' -}}")
    assert failed(cache_of(sft_data, model_with_template(tmp_path, tiny_model, outside), tmp_path)) == {
        "labels_end_without_stop": 48}


def test_short_answers_to_long_prompts_and_heavy_truncation_are_warnings(tmp_path, tiny_model):
    rows = supervised_rows(20)
    for index, row in enumerate(rows[:5]):  # 5 rows: a long question, a one-token answer
        row["messages"][0]["content"] = "please " * 50 + str(index)
        row["messages"][1]["content"] = "ok"
    dataset = materialize_validated(rows, "supervised", tmp_path, "short")
    cache = cache_of(dataset, tiny_model, tmp_path, max_length=256)
    assert failed(cache) == {"few_trained_tokens": 5}
    warnings = []
    require_token_checks(cache, warn=warnings.append)  # warnings only: no error
    assert len(warnings) == 1 and "few_trained_tokens: 5 of 20" in warnings[0]
    assert failed(cache_of(dataset, tiny_model, tmp_path, max_length=64)) == {"truncation_rate": 5}  # the long rows dropped


def test_a_failed_token_check_stops_training_before_any_model_loads(tmp_path, tiny_model, sft_data):
    from align_core.launch import run as run_in_process

    model = model_with_template(tmp_path, tiny_model, "{{- bos_token -}}" + CLEAN)
    config = write_config(tmp_path / "c.yaml", model, [sft_data], tmp_path / "out")
    with pytest.raises(UsageError, match=r"double_bos: 48 of 48 \(e\.g\. [0-9a-f]+-0, "):
        run_in_process(config)
    assert not (tmp_path / "out" / "checkpoints").exists()
