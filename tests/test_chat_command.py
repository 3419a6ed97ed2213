"""``alignflow chat``: a scripted chat through stdin streams the answers, keeps the history in the prompt the
model reads, and /reset, /system, /image and /exit do what they say, on a text model and on a tiny LLaVA."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from train_data import tiny_model  # noqa: F401
from typer.testing import CliRunner

from align_core.generation import ChatSession, SamplingSettings
from alignflow.cli import app
from alignflow.commands.chat import run_chat

SETTINGS = SamplingSettings(max_new_tokens=12, seed=3)


def chat(model: Path, script: str):
    result = CliRunner().invoke(app, ["chat", str(model), "--max-new-tokens", "12", "--seed", "3"], input=script)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def media_models(tmp_path_factory) -> dict[str, Path]:
    from align_core.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("media-models")
    sizes = {"vocab_size": 384, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 512}
    return {media_type: build_tiny_model(root / arch, arch=arch, **sizes)
            for media_type, arch in (("image", "llava"), ("audio", "qwen2_audio"))}


@pytest.fixture(scope="module")
def media_files(tmp_path_factory) -> dict[str, Path]:
    from media_files import png_bytes, wav_bytes

    root = tmp_path_factory.mktemp("media")
    (root / "red.png").write_bytes(png_bytes((230, 30, 30), 16))
    (root / "tone.wav").write_bytes(wav_bytes(440.0, seconds=0.5))
    return {"image": root / "red.png", "audio": root / "tone.wav"}


def test_a_scripted_chat_prints_each_answer_as_the_library_gives_it_and_stops_at_exit(tiny_model):
    result = chat(tiny_model, "Hello there.\nWhat did I say?\n/exit\nNever answered.\n")
    session = ChatSession.load(tiny_model, SETTINGS)
    answers = [session.reply("Hello there."), session.reply("What did I say?")]
    assert result.stdout == "".join(answer + "\n" for answer in answers)
    assert all(answers) and result.stderr == ""


def test_the_second_prompt_the_model_reads_holds_the_first_exchange(tiny_model):
    session = ChatSession.load(tiny_model, SETTINGS)
    run_chat(session, ["Hello there.", "What did I say?"])
    first_answer = session.history[1]["content"][0]["text"]
    conversation = [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": first_answer},
                    {"role": "user", "content": "What did I say?"}]
    rendered = session.formatter.render(conversation, add_generation_prompt=True)
    prompt = session.last_prompt
    assert prompt == session.tokenizer.decode(session.tokenizer(rendered, add_special_tokens=False).input_ids)
    assert prompt.index("Hello there.") < prompt.index(first_answer) < prompt.index("What did I say?")


def test_reset_clears_the_history(tiny_model):
    session = ChatSession.load(tiny_model, SETTINGS)
    run_chat(session, ["Hello there.", "/reset", "What did I say?"])
    assert "Hello there." not in session.last_prompt
    assert [message["role"] for message in session.history] == ["user", "assistant"]


def test_system_sets_the_system_prompt_and_clears_the_history(tiny_model):
    session = ChatSession.load(tiny_model, SETTINGS)
    run_chat(session, ["Hello there.", "/system You answer in one word.", "What did I say?"])
    assert session.last_prompt.startswith(
        "<|bos|><|im_start|>system\nYou answer in one word.<|im_end|>\n<|im_start|>user\nWhat did I say?"
    )
    assert chat(tiny_model, "/system Be brief.\n").stderr == "(system prompt set; history cleared)\n"


def test_a_lora_adapter_folder_chats_as_its_merged_model(tmp_path, tiny_model):
    from test_generate import lora_adapter

    adapter = lora_adapter(tiny_model, tmp_path / "adapter")
    base_answer = ChatSession.load(tiny_model, SETTINGS).reply("Hello there.")
    assert chat(adapter, "Hello there.\n").stdout == base_answer + "\n"


def test_the_answer_streams_piece_by_piece(tiny_model):
    session = ChatSession.load(tiny_model, SamplingSettings(max_new_tokens=40, seed=3))
    pieces: list[str] = []
    answer = session.reply("Tell me a story.", on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == answer


def test_an_image_on_a_text_model_is_a_one_line_refusal_and_the_chat_goes_on(tiny_model, media_files):
    result = chat(tiny_model, f"/image {media_files['image']}\nHello there.\n")
    assert result.stderr == "error: this model takes no image input: it has no processor (a text-only model)\n"
    assert result.stdout.strip()


@pytest.mark.parametrize("media_type", ["image", "audio"])
def test_an_attached_file_reaches_a_media_model_as_its_expanded_placeholder(media_models, media_files, media_type):
    from align_core.data.media_inputs import MediaRef

    model, path = media_models[media_type], media_files[media_type]
    session = ChatSession.load(model, SETTINGS)
    run_chat(session, [f"/{media_type} {path}", "What is in it?"])
    assert session.history[0]["content"][0] == {"type": media_type, "text": None}
    placeholder = session.media.placeholders[media_type]
    tokens = session.media.token_count(MediaRef(media_type, hashlib.sha256(path.read_bytes()).hexdigest()))
    assert session.last_prompt.count(placeholder) == tokens > 1
    result = chat(model, f"/{media_type} {path}\nWhat is in it?\n")
    assert result.stderr == f"({media_type} attached to your next message)\n" and result.stdout.strip()


def test_an_unreadable_file_or_a_media_type_the_model_does_not_take_is_refused(media_models, media_files, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    result = chat(media_models["image"], f"/image {text_file}\n/image {tmp_path / 'missing.png'}\n"
                                         f"/audio {media_files['audio']}\n")
    assert result.stderr.splitlines() == [
        f"error: {text_file} is not a readable image file (UnidentifiedImageError)",
        f"error: cannot read {tmp_path / 'missing.png'}: No such file or directory",
        "error: this model takes no audio (it takes: image)",
    ]
