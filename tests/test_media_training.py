"""Media into the shared trainers: tiny LLaVA (image) and Qwen2-Audio (audio) models built offline, token
ids after placeholder expansion equal to what the family's own processor produces, exact label masks,
media inputs reaching the model through the collator, SFT/RM/DPO lowering their losses, exact resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from media_files import png_bytes, wav_bytes
from safetensors.torch import load_file
from train_data import launch, read_jsonl, write_config

from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError
from align_core.launch import run as run_in_process

COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30), "yellow": (230, 220, 30)}
PITCHES = {"high": 2000.0, "low": 220.0}
MODALITIES = {
    # arch, template, media column in the raw rows, answers and how to make the media item of each answer
    "image": ("llava", "AA_TI2T", "image", "What colour is the picture?", list(COLOURS),
              lambda answer, index: png_bytes(COLOURS[answer], 16 + index % 3)),
    "audio": ("qwen2_audio", "AA_TA2T", "audio_path", "Is this tone high or low?", list(PITCHES),
              lambda answer, index: wav_bytes(PITCHES[answer] * (1 + 0.01 * (index % 5)), seconds=0.5 + 0.1 * (index % 3))),
}


def media_rows(modality: str, root: Path, count: int, kind: str) -> Path:
    """Raw rows whose right answer is only in the media item; the items are files under ``root/media``."""
    _, _, column, question, answers, make = MODALITIES[modality]
    (root / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        answer, other = answers[index % len(answers)], answers[(index + 1 + index // len(answers)) % len(answers)]
        if other == answer:
            other = answers[(index + 1) % len(answers)]
        name = f"{modality}-{index}.{'png' if modality == 'image' else 'wav'}"
        (root / "media" / name).write_bytes(make(answer, index))
        prompt_key = "question" if modality == "image" and kind == "preference" else "prompt"
        if kind == "preference":
            first_is_right = index % 2 == 0
            rows.append({prompt_key: question, column: name, "response_1": answer if first_is_right else other,
                         "response_2": other if first_is_right else answer, "overall_response": 1 if first_is_right else 2})
        else:
            rows.append({"prompt": question, column: name, "response": f"It is {answer}."})
    source = root / f"{modality}-{kind}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return source


@pytest.fixture(scope="module")
def media_models(tmp_path_factory) -> dict[str, Path]:
    from align_core.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("media-models")
    return {
        modality: build_tiny_model(root / arch, arch=arch, vocab_size=384, hidden_size=64, num_layers=2, num_heads=4,
                                   max_position_embeddings=512)
        for modality, (arch, *_) in MODALITIES.items()
    }


@pytest.fixture(scope="module")
def media_datasets(tmp_path_factory) -> dict[tuple[str, str], Path]:
    from align_core.materialize import materialize_dataset

    root = tmp_path_factory.mktemp("media-data")
    datasets = {}
    for modality, (_, template, *_) in MODALITIES.items():
        for kind, count in (("supervised", 24), ("preference", 24)):
            source = media_rows(modality, root / modality, count, kind)
            datasets[modality, kind] = Path(materialize_dataset(source, template, kind, root / "datasets", media_root=root / modality / "media"))
    return datasets


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_a_tiny_media_model_reloads_with_its_processor_and_family_class(media_models, modality):
    from transformers import AutoProcessor

    from align_core.models.registry import load_causal_lm, load_processor

    processor = load_processor(media_models[modality])
    assert type(processor) is type(AutoProcessor.from_pretrained(media_models[modality], local_files_only=True))
    model = load_causal_lm(media_models[modality])
    assert type(model).__name__ == {"image": "LlavaForConditionalGeneration", "audio": "Qwen2AudioForConditionalGeneration"}[modality]
    token = processor.image_token if modality == "image" else processor.audio_token
    assert processor.tokenizer.convert_tokens_to_ids(token) == (
        model.config.image_token_index if modality == "image" else model.config.audio_token_index
    )


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_tokens_after_expansion_equal_the_processors_and_labels_cover_exactly_the_answer(tmp_path, media_models, media_datasets, modality):
    from align_core.chat import ModelFormatter
    from align_core.data.media_inputs import decode_audio, decode_image
    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.models.registry import load_processor
    from align_core.shards.dataset import ShardDataset

    model, dataset = media_models[modality], media_datasets[modality, "preference"]
    cache = TokenDataset(tokenize_dataset(dataset, model, 256, cache_root=tmp_path))
    processor = load_processor(model)
    formatter = ModelFormatter.from_pretrained(model, processor=processor)
    placeholder = processor.tokenizer.convert_tokens_to_ids(processor.image_token if modality == "image" else processor.audio_token)
    shards = ShardDataset(dataset)
    rows = [row for batch in shards.iter_batches() for row in batch.to_pylist()]
    assert len(cache) == len(rows) == 24
    for index, row in enumerate(rows):
        cached = cache[index]
        assert cached["id"] == row["id"]
        media = shards.row_media(row)
        if modality == "image":
            items = {"images": [decode_image(data) for data in media["images"]]}
        else:
            items = {"audio": [decode_audio(data, 16000) for data in media["audios"]], "sampling_rate": 16000}
        for side in ("chosen", "rejected"):
            text = formatter.render(row["prompt"] + row[side])
            expected = processor(text=[text], add_special_tokens=False, **items)["input_ids"][0]
            ids, labels = [int(t) for t in cached[f"{side}_input_ids"]], [int(t) for t in cached[f"{side}_labels"]]
            assert ids == list(expected), (row["id"], side)  # token for token, media tokens expanded as the processor does
            trained = [token for token, label in zip(ids, labels) if label != IGNORE_INDEX]
            assert processor.tokenizer.decode(trained) == row[side][0]["content"][0]["text"] + "<|im_end|>"
            assert all(label == IGNORE_INDEX for token, label in zip(ids, labels) if token == placeholder)
            if modality == "image":
                assert ids.count(placeholder) == 16  # (32 / 8)^2 patches; CLIP's class token is dropped
            assert list(cached[f"{side}_media"]) == [f"{modality}:{item['sha256']}" for item in row[MEDIA_COLUMN[modality]]]


MEDIA_COLUMN = {"image": "images", "audio": "audios"}


def test_the_collator_gives_each_sequence_its_own_media_and_the_model_takes_them(tmp_path, media_models, media_datasets):
    from align_core.data.batch import Layout, forward
    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.models.registry import load_causal_lm

    cache = TokenDataset(tokenize_dataset(media_datasets["image", "preference"], media_models["image"], 256, cache_root=tmp_path))
    batch = cache.collator()([cache[0], cache[1], cache[2]])
    pixels = batch.model_inputs["pixel_values"]
    assert pixels.layout is Layout.PACKED and pixels.value.shape == (6, 3, 32, 32) and pixels.counts.tolist() == [1] * 6
    assert torch.equal(pixels.value[:3], pixels.value[3:])  # chosen and rejected share their row's image
    assert not torch.equal(pixels.value[0], pixels.value[1])  # rows 0 and 1 show different colours
    rejected = batch.sequence_group(1)
    assert torch.equal(rejected.model_inputs["pixel_values"].value, pixels.value[3:])
    logits = forward(load_causal_lm(media_models["image"]), batch).logits
    assert logits.shape[:2] == batch.input_ids.shape


def test_truncating_the_prompt_drops_the_media_of_the_messages_it_cuts(tmp_path, media_models):
    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.materialize import materialize_dataset
    from align_core.models.registry import load_processor

    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "red.png").write_bytes(png_bytes(COLOURS["red"]))
    long_answer = " ".join(["the picture shows a red square"] * 3)
    row = {"messages": [
        {"role": "user", "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": long_answer},
        {"role": "user", "content": "And the colour?"},
        {"role": "assistant", "content": "Red."},
    ]}
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps(row) + "\n")
    dataset = materialize_dataset(source, "Messages", "supervised", tmp_path / "datasets", template_options={"media": "image"},
                                  media_root=tmp_path / "media")
    whole = TokenDataset(tokenize_dataset(dataset, media_models["image"], 512, cache_root=tmp_path / "whole"))[0]
    assert len(whole["media"]) == 1 and len(whole["input_ids"]) > 40
    cut = TokenDataset(tokenize_dataset(dataset, media_models["image"], 40, "truncate_prompt_left", cache_root=tmp_path / "cut"))
    assert len(cut) == 1
    image_token = load_processor(media_models["image"]).tokenizer.convert_tokens_to_ids("<image>")
    assert image_token in [int(t) for t in whole["input_ids"]]
    assert list(cut[0]["media"]) == [] and image_token not in [int(t) for t in cut[0]["input_ids"]]
    assert len(cut[0]["input_ids"]) <= 40


def test_a_text_only_model_refuses_a_media_dataset_naming_both(tmp_path, media_datasets):
    from align_core.data.token_cache import tokenize_dataset
    from align_core.models.tiny import build_tiny_model

    text_model = build_tiny_model(tmp_path / "llama", vocab_size=384, hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(UsageError, match="carries image media, but .* has no processor"):
        tokenize_dataset(media_datasets["image", "supervised"], text_model, 256, cache_root=tmp_path)


# ----- training through the shared trainers --------------------------------------------------------------

ALGORITHMS = {
    "sft": ("supervised", {}, "loss"),
    "rm": ("preference", {"learning_rate": 1e-3}, "loss"),
    "dpo": ("preference", {"learning_rate": 1e-3}, "loss"),
}


@pytest.mark.slow
@pytest.mark.parametrize(("modality", "algorithm"), [("image", "sft"), ("image", "rm"), ("image", "dpo"), ("audio", "sft"), ("audio", "dpo")])
def test_each_algorithm_lowers_its_loss_on_media(tmp_path, media_models, media_datasets, modality, algorithm):
    kind, train_cfgs, metric = ALGORITHMS[algorithm]
    settings = {"train_cfgs": {"algorithm": algorithm, "max_steps": 12, "save_interval": 100, **train_cfgs},
                "data_cfgs": {"max_length": 256}}
    config = write_config(tmp_path / "run.yaml", media_models[modality], [media_datasets[modality, kind]], tmp_path / "out", settings)
    result = run_in_process(config)
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    first, last = sum(r[metric] for r in records[:3]) / 3, sum(r[metric] for r in records[-3:]) / 3
    assert last < first, [r[metric] for r in records]
    exported = Path(result["model_dirs"]["policy"])
    assert (exported / "processor_config.json").is_file()  # the export reloads with its processor


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.slow
def test_a_media_run_killed_mid_way_resumes_to_the_same_losses_and_weights(tmp_path, media_models, media_datasets):
    settings = {"train_cfgs": {"algorithm": "dpo", "max_steps": 6, "save_interval": 2, "learning_rate": 1e-3},
                "data_cfgs": {"max_length": 256}}
    data = [media_datasets["image", "preference"]]
    run_in_process(write_config(tmp_path / "whole.yaml", media_models["image"], data, tmp_path / "whole", settings))
    interrupted = write_config(tmp_path / "resumed.yaml", media_models["image"], data, tmp_path / "resumed", settings)
    crashed = launch(interrupted, "train_cfgs.debug_stop_after_steps=3")
    assert crashed.returncode == 17, crashed.stderr[-3000:]
    run_in_process(interrupted)  # only the crash needs a process of its own
    keys = ("step", "loss", "lr", "tokens")
    expected = [[record[key] for key in keys] for record in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]
    assert [[record[key] for key in keys] for record in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")] == expected
    before, after = weights(tmp_path / "whole" / "model"), weights(tmp_path / "resumed" / "model")
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


def test_a_video_reaches_an_image_model_as_evenly_sampled_frames(tmp_path, media_models):
    from media_files import video_bytes

    from align_core.data.media_inputs import VIDEO_FRAMES
    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.materialize import materialize_dataset

    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "dot.mp4").write_bytes(video_bytes(frames=10))
    row = {"prompt": "Which way does the dot move?", "video_path": "dot.mp4", "response_1": "Right.", "response_2": "Left.",
           "overall_response": 1}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    dataset = materialize_dataset(tmp_path / "rows.jsonl", "AA_TV2T", "preference", tmp_path / "datasets", media_root=tmp_path / "media")
    cache = TokenDataset(tokenize_dataset(dataset, media_models["image"], 256, cache_root=tmp_path))
    refs = list(cache[0]["chosen_media"])
    assert [ref.rsplit(":", 1)[1] for ref in refs] == [str(frame) for frame in range(VIDEO_FRAMES)]
    assert all(ref.startswith("image:") for ref in refs)
    image_token = cache.collator().media.placeholder_ids["image"]
    assert [int(t) for t in cache[0]["chosen_input_ids"]].count(image_token) == VIDEO_FRAMES * 16
    pixels = cache.collator()([cache[0]]).model_inputs["pixel_values"]
    assert pixels.value.shape == (2 * VIDEO_FRAMES, 3, 32, 32) and pixels.counts.tolist() == [VIDEO_FRAMES] * 2
    # the dot moves left to right: its brightest column moves right from the first frame to the last
    columns = [int(frame.mean(dim=(0, 1)).argmax()) for frame in pixels.value[:VIDEO_FRAMES]]
    assert columns == sorted(columns) and columns[0] < columns[-1]


@pytest.mark.slow
def test_freeze_switches_leave_the_vision_tower_and_projector_untrained(tmp_path, media_models, media_datasets):
    settings = {"train_cfgs": {"max_steps": 4, "save_interval": 100}, "data_cfgs": {"max_length": 256},
                "model_cfgs": {"freeze_vision_tower": True, "freeze_mm_proj": True}}
    config = write_config(tmp_path / "run.yaml", media_models["image"], [media_datasets["image", "supervised"]], tmp_path / "out", settings)
    run_in_process(config)
    before, after = weights(media_models["image"]), weights(tmp_path / "out" / "model")
    assert before.keys() == after.keys()
    frozen = [key for key in before if "vision_tower" in key or "multi_modal_projector" in key]
    trained = [key for key in before if "language_model" in key]
    assert len(frozen) > 10 and all(torch.equal(before[key], after[key]) for key in frozen)
    assert any(not torch.equal(before[key], after[key]) for key in trained)


def test_a_freeze_switch_for_a_part_the_model_lacks_is_a_configuration_error(media_models):
    from align_core.models.freeze import freeze_parts
    from align_core.models.registry import load_causal_lm

    model = load_causal_lm(media_models["image"])
    with pytest.raises(UsageError, match="model_cfgs.freeze_audio_tower: a llava model has no audio_tower module"):
        freeze_parts(model, ["freeze_audio_tower"])
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert freeze_parts(model, ["freeze_vision_tower"]) == vision
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


@pytest.mark.slow
def test_a_family_without_a_transformers_processor_registers_its_own_and_trains(tmp_path, media_models, media_datasets):
    from accustomed_model import accustomed_model

    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.models.registry import load_causal_lm

    model = accustomed_model(media_models["image"], tmp_path / "accustomed")
    assert not (model / "processor_config.json").exists() and not (model / "chat_template.jinja").exists()
    cache = TokenDataset(tokenize_dataset(media_datasets["image", "supervised"], model, 256, cache_root=tmp_path / "cache"))
    row = cache[0]
    text = cache.collator().media.processor.tokenizer.decode([int(t) for t in row["input_ids"]])
    assert text.startswith("USER: " + "<image>" * 16 + "\nWhat colour is the picture?\nASSISTANT: It is ")  # its own format
    settings = {"train_cfgs": {"max_steps": 6, "save_interval": 100}, "data_cfgs": {"max_length": 256}}
    config = write_config(tmp_path / "run.yaml", model, [media_datasets["image", "supervised"]], tmp_path / "out", settings)
    run_in_process(config)
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"]
    reloaded, saved = load_causal_lm(model).state_dict(), weights(media_models["image"])  # the family's class loads it whole
    assert torch.equal(reloaded["lm_head.weight"], saved[next(key for key in saved if key.endswith("lm_head.weight"))])


def blank_images(folder: Path) -> None:
    """Every picture under ``folder`` that decodes becomes the same grey one (planted broken files stay broken)."""
    from PIL import Image

    for path in folder.rglob("*.png"):
        try:
            with Image.open(path) as image:
                size = image.size
        except OSError:
            continue
        Image.new("RGB", size, (128, 128, 128)).save(path, format="PNG")


@pytest.mark.slow
def test_an_image_reward_model_learns_the_shapes_from_the_pixels_and_is_a_coin_toss_without_them(tmp_path, media_models):
    from align_core.evaluation.evaluate import EvalSpec, evaluate
    from align_core.materialize import materialize_dataset
    from alignflow.samples import write_media_samples

    datasets = {}
    for split, rows, seed in (("train", 400, 0), ("eval", 200, 1), ("blanked", 200, 1)):
        written = write_media_samples(tmp_path / split, rows=rows, seed=seed)["image_colours"]
        if split == "blanked":  # the eval rows again, every picture the same grey: only the text is left
            blank_images(written.media_root)
        datasets[split] = materialize_dataset(written.source, written.template, written.kind, tmp_path / "datasets",
                                              media_root=written.media_root)
    settings = {"train_cfgs": {"algorithm": "rm", "max_steps": 600, "save_interval": 1000, "learning_rate": 3e-3,
                               "per_device_train_batch_size": 8}, "data_cfgs": {"max_length": 256}}
    config = write_config(tmp_path / "rm.yaml", media_models["image"], [datasets["train"]], tmp_path / "out", settings,
                          eval_sets=[datasets["eval"]])
    assert run_in_process(config)["eval"]["eval/accuracy"] > 0.8  # 0.90 measured on 200 eval rows
    spec = EvalSpec(model_dir=str(tmp_path / "out" / "model"), datasets=(str(datasets["eval"]), str(datasets["blanked"])),
                    names=("pixels", "blanked"), max_length=256)
    accuracy = {name: metrics["accuracy"] for name, metrics in evaluate(spec, tmp_path / "evals").metrics.items()}
    assert accuracy["pixels"] > 0.8, accuracy  # the evaluation agrees with the run's own
    # the same model on the same rows with grey pictures: its ranking came from the pixels, not the text (0.49)
    assert 0.38 < accuracy["blanked"] < 0.62, accuracy
