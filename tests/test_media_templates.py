"""The multimodal templates on rows shaped like the real public datasets, and align-anything's BaseFormatter
materialising to the same shard bytes as the native template."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media_files import png_bytes, wav_bytes

from align_core.errors import MEDIA_COUNT_MISMATCH, MISSING_FIELD, RowRejected, UsageError
from align_core.materialize import materialize_dataset
from align_core.shards.dataset import ShardDataset
from align_core.templates import BaseFormatter, get_template, register_template

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def user(*parts) -> dict:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


PLACEHOLDER = {"type": "image", "text": None}


def test_aa_ti2t_preference_row_puts_the_image_before_the_question_and_ratings_in_meta():
    row = {"question": "What is unusual here?", "image": "coco/0001.jpg", "response_1": "A cat.", "response_2": "A dog.",
           "overall_response": 2, "safety_rate_1": 3, "safety_rate_2": 3, "p_response": "ignored"}
    sample = get_template("AA_TI2T").format("preference", row)
    assert sample["prompt"] == [user(PLACEHOLDER, text("What is unusual here?"))]
    assert sample["chosen"][0]["content"] == [text("A dog.")]
    assert sample["media"] == {"image": ["coco/0001.jpg"]}
    assert json.loads(sample["meta"]) == {"chosen_response_id": 2, "safety_rate_1": 3, "safety_rate_2": 3}


def test_aa_ti2t_supervised_row():
    sample = get_template("AA_TI2T").format("supervised", {"prompt": "Describe.", "image": "a.png", "response": "A square."})
    assert [m["role"] for m in sample["messages"]] == ["user", "assistant"]
    assert sample["messages"][0]["content"] == [PLACEHOLDER, text("Describe.")]


def test_aa_ta2t_and_aa_tv2t_take_audio_path_and_video_path():
    base = {"prompt": "Is this high or low?", "response_1": "High.", "response_2": "Low.", "overall_response": 1}
    audio = get_template("AA_TA2T").format("preference", {**base, "audio_path": "tones/1.wav"})
    video = get_template("AA_TV2T").format("preference", {**base, "video_path": "clips/1.mp4"})
    assert audio["prompt"][0]["content"][0] == {"type": "audio", "text": None} and audio["media"] == {"audio": ["tones/1.wav"]}
    assert video["prompt"][0]["content"][0] == {"type": "video", "text": None} and video["media"] == {"video": ["clips/1.mp4"]}
    with pytest.raises(RowRejected) as missing:
        get_template("AA_TA2T").format("preference", base)
    assert missing.value.reason == MISSING_FIELD


def test_rlaif_v_row_with_an_image_struct():
    struct = {"bytes": b"png", "path": "0.png"}
    row = {"ds_name": "RLAIF-V", "image": struct, "question": "Who is it?", "chosen": "A man.", "rejected": "A cat.",
           "origin_dataset": "VQAv2", "origin_split": "train", "idx": 7, "image_path": "0.png"}
    sample = get_template("RLAIF-V").format("preference", row)
    assert sample["prompt"] == [user(PLACEHOLDER, text("Who is it?"))]
    assert sample["media"] == {"image": [struct]}
    assert json.loads(sample["meta"]) == {"ds_name": "RLAIF-V", "idx": 7, "origin_dataset": "VQAv2", "origin_split": "train"}


def test_llava_instruct_turns_each_image_marker_into_a_part_in_place():
    row = {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."}]}
    sample = get_template("LLaVA-Instruct").format("supervised", row)
    assert sample["messages"][0]["content"] == [PLACEHOLDER, text("What are the colors of the bus in the image?")]
    assert [m["role"] for m in sample["messages"]] == ["user", "assistant", "user", "assistant"]
    assert sample["media"] == {"image": ["000000033471.jpg"]}
    text_only = get_template("LLaVA-Instruct").format("supervised", {"conversations": row["conversations"][2:]})
    assert text_only["media"] == {}
    with pytest.raises(RowRejected) as mismatch:
        get_template("LLaVA-Instruct").format("supervised", {**row, "image": None})
    assert mismatch.value.reason == MEDIA_COUNT_MISMATCH


def test_messages_with_media_option_fills_bare_placeholders_from_the_row_lists_or_keeps_inline_values():
    template = get_template("Messages", media="image,audio")
    assert template.media_types() == ("image", "audio")
    trl_row = {"images": ["a.png", "b.png"], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which differs?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The second."}]}]}
    assert template.format("supervised", trl_row)["media"] == {"image": ["a.png", "b.png"]}
    inline = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "t.wav"}, "Pitch?"]},
                           {"role": "assistant", "content": "High."}]}
    assert template.format("supervised", inline)["media"] == {"audio": ["t.wav"]}
    with pytest.raises(RowRejected) as mismatch:
        template.format("supervised", {**trl_row, "images": ["a.png"]})
    assert mismatch.value.reason == MEDIA_COUNT_MISMATCH
    assert get_template("Messages").media_types() == ()
    with pytest.raises(UsageError, match="option media"):
        get_template("Messages", media="smell").media_types()


def test_messages_media_dataset_round_trip(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "t.wav").write_bytes(wav_bytes())
    row = {"audios": ["t.wav"], "messages": [{"role": "user", "content": [{"type": "audio"}, "Pitch?"]},
                                             {"role": "assistant", "content": "High."}]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    path = materialize_dataset(tmp_path / "m.jsonl", "Messages", "supervised", tmp_path / "out",
                               template_options={"media": "audio"}, media_root=tmp_path / "media")
    dataset = ShardDataset(path)
    assert dataset.row_media(dataset.read_table().to_pylist()[0]) == {"audios": [wav_bytes()]}


# align-anything's own AA_TI2T, as its documentation writes a custom template (only the meta keys differ:
# they mirror the native template's meta so the shards can be compared byte for byte).
@register_template("TestAlignAnythingTI2T")
class AlignAnythingTI2T(BaseFormatter):
    system_prompt: str = ""

    def format_preference_sample(self, raw_sample: dict):
        better_id = int(raw_sample["overall_response"])
        worse_id = 2 if better_id == 1 else 1
        prompt = raw_sample["question"]
        image = raw_sample["image"]

        def conversation(response_id: int) -> list:
            return [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                {"role": "assistant", "content": [{"type": "text", "text": raw_sample[f"response_{response_id}"]}]},
            ]

        return conversation(better_id), conversation(worse_id), {"image": image, "chosen_response_id": better_id}

    def format_supervised_sample(self, raw_sample: dict):
        return [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": raw_sample["prompt"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": raw_sample["response"]}]},
        ], {"image": raw_sample["image"]}


def write_image_parquet(path: Path, rows: list[dict]) -> Path:
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    columns["image"] = pa.array(columns["image"], IMAGE_STRUCT)
    pq.write_table(pa.table(columns), path)
    return path


def dataset_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.arrow"))}


@pytest.mark.parametrize("kind", ["preference", "supervised"])
def test_a_base_formatter_subclass_materialises_the_same_shard_bytes_as_the_native_template(tmp_path, kind):
    images = [{"bytes": png_bytes((255, 0, 0)), "path": "red.png"}, {"bytes": png_bytes((0, 0, 255)), "path": "blue.png"}]
    if kind == "preference":
        rows = [{"question": f"Colour {i}?", "image": images[i % 2], "response_1": "red", "response_2": "blue",
                 "overall_response": 1 + i % 2} for i in range(4)]
    else:
        rows = [{"prompt": f"Colour {i}?", "image": images[i % 2], "response": "red"} for i in range(4)]
    source = write_image_parquet(tmp_path / "rows.parquet", rows)
    native = Path(materialize_dataset(source, "AA_TI2T", kind, tmp_path / "native"))
    custom = Path(materialize_dataset(source, "TestAlignAnythingTI2T", kind, tmp_path / "custom"))
    assert ShardDataset(custom).manifest.media == ["image"] and ShardDataset(custom).manifest.rows == 4
    assert dataset_files(custom) == dataset_files(native)


def test_a_base_formatter_gets_pil_images_and_a_changed_image_is_stored_as_png(tmp_path):
    from PIL import Image

    seen = []

    @register_template("TestRGBAFormatter")
    class RGBA(BaseFormatter):
        def format_supervised_sample(self, raw_sample):
            seen.append(type(raw_sample["image"]))
            image = raw_sample["image"].convert("RGBA")
            return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]}], {"image": image}

    source = write_image_parquet(tmp_path / "rows.parquet", [{"image": {"bytes": png_bytes(), "path": "r.png"}}])
    dataset = ShardDataset(materialize_dataset(source, "TestRGBAFormatter", "supervised", tmp_path / "out"))
    (stored,) = dataset.row_media(dataset.read_table().to_pylist()[0])["images"]
    assert seen == [Image.Image] or issubclass(seen[0], Image.Image)
    import io

    assert Image.open(io.BytesIO(stored)).mode == "RGBA"


@register_template("TestAlignAnythingTA2T")
class AlignAnythingTA2T(BaseFormatter):
    def format_preference_sample(self, raw_sample: dict):
        better_id = int(raw_sample["overall_response"])
        worse_id = 2 if better_id == 1 else 1

        def conversation(response_id: int) -> list:
            return [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": raw_sample["prompt"]}]},
                    {"role": "assistant", "content": [{"type": "text", "text": raw_sample[f"response_{response_id}"]}]}]

        meta = {"audio_path": raw_sample["audio_path"], "chosen_response_id": better_id}
        return conversation(better_id), conversation(worse_id), meta


def test_an_audio_base_formatter_infers_its_media_and_matches_the_native_template(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "low.wav").write_bytes(wav_bytes(220.0))
    (tmp_path / "media" / "high.wav").write_bytes(wav_bytes(880.0))
    rows = [{"prompt": "High or low?", "audio_path": f"{pitch}.wav", "response_1": "High.", "response_2": "Low.",
             "overall_response": 1 if pitch == "high" else 2} for pitch in ("low", "high", "low")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert get_template("TestAlignAnythingTA2T").media_types() == ("audio",)
    native, custom = (Path(materialize_dataset(tmp_path / "rows.jsonl", name, "preference", tmp_path / name,
                                               media_root=tmp_path / "media")) for name in ("AA_TA2T", "TestAlignAnythingTA2T"))
    assert ShardDataset(custom).manifest.media_store.rows == 2
    assert dataset_files(custom) == dataset_files(native)
