"""``alignflow generate``: completions for a prompt_only dataset as a content-addressed supervised dataset that
passes its contract, the same folder for the same request, the same completions for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_data import materialize_validated, sft_data, tiny_model  # noqa: F401
from typer.testing import CliRunner

from align_core.shards.dataset import ShardDataset
from alignflow.cli import app

PROMPTS = 6


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Write a few words about the number {index}."}]}
            for index in range(PROMPTS)]
    return materialize_validated(rows, "prompt_only", tmp_path_factory.mktemp("prompts"), "prompts")


def generate(model: Path, prompts: Path, out: Path, *options: str):
    """Run ``alignflow generate``; the result and the dataset folder it printed last."""
    result = CliRunner().invoke(app, ["generate", str(model), str(prompts), "--out", str(out), "--max-new-tokens", "8",
                                      *options])
    assert result.exit_code == 0, result.output
    return result, Path(result.stdout.strip().splitlines()[-1])


def completions(dataset_dir: Path) -> list[str]:
    rows = ShardDataset(dataset_dir).read_table(["messages"]).column("messages").to_pylist()
    return [messages[-1]["content"][0]["text"] for messages in rows]


def test_the_same_request_reuses_its_folder_and_a_changed_temperature_or_seed_gets_a_new_one(
    tmp_path, tiny_model, prompts
):
    _, first = generate(tiny_model, prompts, tmp_path)
    created = ShardDataset(first).manifest.created
    again, same = generate(tiny_model, prompts, tmp_path)
    assert same == first and ShardDataset(same).manifest.created == created  # found, not written again
    assert again.stderr.startswith("exists")
    _, cooler = generate(tiny_model, prompts, tmp_path, "--temperature", "0.7")
    _, reseeded = generate(tiny_model, prompts, tmp_path, "--seed", "1")
    assert len({first, cooler, reseeded}) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in (first, cooler, reseeded))


def test_each_prompt_gets_num_generations_rows_that_keep_its_id_and_the_settings(tmp_path, tiny_model, prompts):
    _, out = generate(tiny_model, prompts, tmp_path, "--num-generations", "3", "--batch-size", "4")
    dataset = ShardDataset(out)
    assert (dataset.kind.value, dataset.num_rows, dataset.manifest.quarantined) == ("supervised", PROMPTS * 3, 0)
    source = ShardDataset(prompts).read_table().to_pylist()
    rows = dataset.read_table().to_pylist()
    metas = [json.loads(row["meta"]) for row in rows]
    assert [(meta["source_id"], meta["generation"]) for meta in metas] == [
        (prompt["id"], generation) for prompt in source for generation in range(3)
    ]
    assert metas[0]["sampling"] == {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                    "num_generations": 3, "seed": 0, "batch_size": 4}
    for row, meta in zip(rows, metas):
        prompt = next(p for p in source if p["id"] == meta["source_id"])["prompt"]
        assert row["messages"][:-1] == prompt and row["messages"][-1]["role"] == "assistant"


def test_generated_samples_pass_the_supervised_contract(tmp_path, tiny_model, prompts):
    from data_contracts.runner import validate_dataset

    _, once = generate(tiny_model, prompts, tmp_path)
    assert validate_dataset(once).passed
    # several completions per prompt repeat the prompt by design: the command names the override
    result, twice = generate(tiny_model, prompts, tmp_path, "--num-generations", "2")
    assert "--set duplicate_prompts.mostly=0" in result.stderr
    assert validate_dataset(twice, overrides={"duplicate_prompts": {"mostly": 0}}).passed


def test_the_same_seed_samples_the_same_completions_in_a_fresh_folder(tmp_path, tiny_model, prompts):
    options = ("--num-generations", "2", "--batch-size", "4")
    _, first = generate(tiny_model, prompts, tmp_path / "a", *options)
    _, second = generate(tiny_model, prompts, tmp_path / "b", *options)
    assert first.name == second.name
    assert ShardDataset(first).shard_digests == ShardDataset(second).shard_digests
    _, other_seed = generate(tiny_model, prompts, tmp_path / "a", *options, "--seed", "5")
    assert completions(other_seed) != completions(first)


def test_a_prompt_too_long_for_the_model_is_quarantined_and_the_rest_generated(tmp_path, tiny_model):
    rows = [{"prompt": [{"role": "user", "content": text}]} for text in ("Say hello.", "Say bye.", "seven " * 400)]
    long_prompts = materialize_validated(rows, "prompt_only", tmp_path, "long")
    _, out = generate(tiny_model, long_prompts, tmp_path / "out", "--num-generations", "2")
    manifest = ShardDataset(out).manifest
    assert (manifest.rows, manifest.quarantined, manifest.quarantine_reasons) == (4, 1, {"dropped_too_long": 1})


def one_line_error(*args: str) -> str:
    result = CliRunner().invoke(app, ["generate", *args])
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1
    return result.stderr.strip()


def test_a_dataset_that_is_not_prompt_only_is_a_one_line_error(tmp_path, tiny_model, sft_data):
    message = one_line_error(str(tiny_model), str(sft_data), "--out", str(tmp_path))
    assert message == f"error: {sft_data} is a supervised dataset; generate reads prompt_only datasets"
    assert list(tmp_path.iterdir()) == []


def test_a_missing_prompt_folder_or_an_unreadable_model_is_a_one_line_error(tmp_path, tiny_model, prompts):
    assert one_line_error(str(tiny_model), str(tmp_path / "nowhere"), "--out", str(tmp_path)) == (
        f"error: prompt dataset {tmp_path / 'nowhere'} is not a folder"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (broken / name).write_bytes((tiny_model / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert one_line_error(str(broken), str(prompts), "--out", str(tmp_path / "out")).startswith(
        f"error: {broken}: cannot load the model ("
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_line_error(str(empty), str(prompts), "--out", str(tmp_path / "out")).startswith(
        f"error: {empty}: cannot load the tokenizer ("
    )


def test_image_prompts_generate_through_the_models_processor(tmp_path):
    from media_files import png_bytes

    from align_core.materialize import materialize_dataset
    from align_core.models.tiny import build_tiny_model
    from data_contracts.runner import validate_dataset

    model = build_tiny_model(tmp_path / "llava", arch="llava", vocab_size=384, hidden_size=64, num_layers=2,
                             num_heads=4, max_position_embeddings=512)
    (tmp_path / "media").mkdir()
    rows = []
    for index, colour in enumerate([(230, 30, 30), (30, 30, 230), (30, 200, 30)]):
        (tmp_path / "media" / f"{index}.png").write_bytes(png_bytes(colour, 16))
        rows.append({"question": f"What colour is picture {index}?", "image": f"{index}.png", "response_1": "red",
                     "response_2": "blue", "overall_response": 1})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    image_prompts = materialize_dataset(tmp_path / "rows.jsonl", "AA_TI2T", "prompt_only", tmp_path / "datasets",
                                        media_root=tmp_path / "media")
    _, out = generate(model, Path(image_prompts), tmp_path / "out", "--batch-size", "2")
    dataset = ShardDataset(out)
    assert (dataset.num_rows, dataset.manifest.media) == (3, ["image"])
    source_images = ShardDataset(image_prompts).read_table(["images"]).column("images").to_pylist()
    assert dataset.read_table(["images"]).column("images").to_pylist() == source_images
    assert validate_dataset(out).passed


def test_the_generated_dataset_tokenises_for_training_with_labels_on_the_generated_turn(tmp_path, tiny_model, prompts):
    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.data.truncation import IGNORE_INDEX
    from align_core.models.registry import load_tokenizer

    _, out = generate(tiny_model, prompts, tmp_path / "out")
    cache = TokenDataset(tokenize_dataset(out, tiny_model, 256, cache_root=tmp_path / "tokens"))
    tokenizer = load_tokenizer(tiny_model)
    assert len(cache) == PROMPTS
    for index, completion in enumerate(completions(out)):
        labels = cache[index]["labels"]
        assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == completion + "<|im_end|>"


def lora_adapter(model: Path, folder: Path) -> Path:
    """A LoRA run's export as it is right after initialisation (B = 0): its merged model is the base."""
    from align_core.config import LoraCfgs
    from align_core.models.lora import apply_lora
    from align_core.models.registry import load_causal_lm, load_tokenizer

    apply_lora(load_causal_lm(model), LoraCfgs(r=4)).save_pretrained(folder)
    load_tokenizer(model).save_pretrained(folder)
    return folder


def test_a_lora_adapter_folder_generates_at_its_own_address_from_its_merged_base(tmp_path, tiny_model, prompts):
    adapter = lora_adapter(tiny_model, tmp_path / "adapter")
    _, base_out = generate(tiny_model, prompts, tmp_path / "out")
    _, adapter_out = generate(adapter, prompts, tmp_path / "out")
    assert adapter_out != base_out and completions(adapter_out) == completions(base_out)
