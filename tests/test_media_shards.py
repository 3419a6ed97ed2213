"""Shards with media: round trips with real PNG/WAV/MP4/WebM bytes, every accepted media form, each bad-media
class quarantined with its reason while the good rows arrive, one stored copy per distinct item, stable digests."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media_files import png_bytes, video_bytes, wav_bytes

from align_core.errors import (
    MEDIA_COUNT_MISMATCH,
    MEDIA_MISSING,
    MEDIA_OUTSIDE_ROOT,
    MEDIA_UNDECODABLE,
    UsageError,
)
from align_core.materialize import materialize_dataset
from align_core.shards.dataset import ShardDataset
from align_core.shards.media_store import MEDIA_STORE_NAME
from align_core.templates import Template, register_template


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pair_row(media_field: str, value, question: str = "What is shown?", better: int = 1) -> dict:
    return {"prompt": question, media_field: value, "response_1": "a red square", "response_2": "a blue circle", "overall_response": better}


@pytest.fixture()
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "images").mkdir(parents=True)
    (root / "images" / "red.png").write_bytes(png_bytes((255, 0, 0)))
    (root / "images" / "blue.png").write_bytes(png_bytes((0, 0, 255)))
    (root / "tone.wav").write_bytes(wav_bytes(440.0, 16_000))
    (root / "dot.mp4").write_bytes(video_bytes(container="mp4"))
    (root / "dot.webm").write_bytes(video_bytes(container="webm"))
    return root


def materialize(tmp_path: Path, rows: list[dict], template: str, kind: str, media_root: Path | None, **kw) -> ShardDataset:
    source = write_jsonl(tmp_path / f"{template}-{kind}.jsonl", rows)
    return ShardDataset(materialize_dataset(source, template, kind, tmp_path / "out", media_root=media_root, **kw))


def rows_of(dataset: ShardDataset) -> list[dict]:
    return dataset.read_table().to_pylist()


def test_image_preference_round_trip_stores_the_png_bytes_and_a_placeholder(tmp_path, media_root):
    rows = [pair_row("image", "images/red.png"), pair_row("image", "images/blue.png", better=2)]
    dataset = materialize(tmp_path, [{**r, "question": r.pop("prompt")} for r in rows], "AA_TI2T", "preference", media_root)
    first, second = rows_of(dataset)
    assert first["prompt"][0]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "What is shown?"}]
    assert first["images"] == [{"sha256": hashlib.sha256(png_bytes((255, 0, 0))).hexdigest(), "path": "images/red.png"}]
    assert dataset.row_media(first) == {"images": [png_bytes((255, 0, 0))]}
    assert dataset.row_media(second) == {"images": [png_bytes((0, 0, 255))]}
    assert second["chosen"][0]["content"][0]["text"] == "a blue circle"
    assert dataset.manifest.media == ["image"] and dataset.manifest.media_store.rows == 2
    assert dataset.verify() == []


def test_audio_round_trip_records_the_sampling_rate(tmp_path, media_root):
    dataset = materialize(tmp_path, [pair_row("audio_path", "tone.wav")], "AA_TA2T", "preference", media_root)
    (row,) = rows_of(dataset)
    assert row["prompt"][0]["content"][0] == {"type": "audio", "text": None}
    assert dataset.row_media(row) == {"audios": [wav_bytes(440.0, 16_000)]}
    assert dataset.media_store().sampling_rate(row["audios"][0]["sha256"]) == 16_000


@pytest.mark.parametrize("clip", ["dot.mp4", "dot.webm"])
def test_video_round_trip_keeps_the_container_bytes(tmp_path, media_root, clip):
    dataset = materialize(tmp_path, [pair_row("video_path", clip)], "AA_TV2T", "preference", media_root)
    (row,) = rows_of(dataset)
    assert row["prompt"][0]["content"][0] == {"type": "video", "text": None}
    assert dataset.row_media(row) == {"videos": [(media_root / clip).read_bytes()]}


def test_media_given_as_bytes_base64_and_image_struct_from_parquet_are_the_same_item(tmp_path):
    red = png_bytes((255, 0, 0))
    data_uri = "data:image/png;base64," + base64.b64encode(red).decode()
    table = pa.table(
        {
            "question": ["q1", "q2", "q3"],
            "image": pa.array(
                [{"bytes": red, "path": "red.png"}, {"bytes": None, "path": None}, {"bytes": red, "path": None}],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "chosen": ["yes", "yes", "yes"],
            "rejected": ["no", "no", "no"],
        }
    )
    pq.write_table(table, tmp_path / "rlaif.parquet")
    dataset = ShardDataset(materialize_dataset(tmp_path / "rlaif.parquet", "RLAIF-V", "preference", tmp_path / "out"))
    assert [row["images"][0]["path"] for row in rows_of(dataset)] == ["red.png", None]
    assert dataset.read_quarantine().column("reason").to_pylist() == [MEDIA_MISSING]
    assert json.loads(dataset.read_quarantine().column("raw")[0].as_py())["image"] == {"bytes": None, "path": None}
    rows = [{"question": "q", "image": data_uri, "chosen": "yes", "rejected": "no"}]
    from_base64 = materialize(tmp_path, rows, "RLAIF-V", "preference", None)
    assert from_base64.row_media(rows_of(from_base64)[0]) == {"images": [red]}


def test_media_given_as_raw_bytes_from_an_arrow_source(tmp_path):
    table = pa.table({"question": ["q"], "image": pa.array([png_bytes()], pa.binary()), "chosen": ["y"], "rejected": ["n"]})
    with pa.ipc.new_file(tmp_path / "rows.arrow", table.schema) as writer:
        writer.write_table(table)
    dataset = ShardDataset(materialize_dataset(tmp_path / "rows.arrow", "RLAIF-V", "preference", tmp_path / "out"))
    (row,) = rows_of(dataset)
    assert row["images"][0]["path"] is None and dataset.row_media(row) == {"images": [png_bytes()]}


@pytest.mark.parametrize("path", ["a\x00b.png", "x" * 5000 + ".png", "loop.png", "unreadable.png"])
def test_paths_that_cannot_be_opened_are_media_missing(tmp_path, media_root, path):
    if path == "unreadable.png" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    os.symlink("loop.png", media_root / "loop.png")
    (media_root / "unreadable.png").write_bytes(png_bytes())
    (media_root / "unreadable.png").chmod(0)
    dataset = materialize(tmp_path, [pair_row("image", path), pair_row("image", "images/red.png")], "AA_TI2T", "preference", media_root)
    assert dataset.read_quarantine().column("reason").to_pylist() == [MEDIA_MISSING]
    assert [row["source_index"] for row in rows_of(dataset)] == [1]


def test_image_struct_from_a_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"question": datasets.Value("string"), "image": datasets.Image(),
                                  "chosen": datasets.Value("string"), "rejected": datasets.Value("string")})
    red = png_bytes((255, 0, 0))
    rows = {"question": ["q"], "image": [{"bytes": red, "path": "red.png"}], "chosen": ["yes"], "rejected": ["no"]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    dataset = ShardDataset(materialize_dataset(tmp_path / "hf", "RLAIF-V", "preference", tmp_path / "out"))
    assert dataset.row_media(rows_of(dataset)[0]) == {"images": [red]}


@register_template("TestPILImages")
class PILImages(Template):
    """Returns a PIL image it draws itself: stored as PNG."""

    media = ("image",)

    def format_supervised_sample(self, raw):
        from PIL import Image

        image = Image.new("RGB", (4, 4), tuple(raw["rgb"]))
        return [{"role": "user", "content": [{"type": "image", "image": image}, "colour?"]},
                {"role": "assistant", "content": "this one"}], None


def test_a_pil_image_returned_by_a_template_is_stored_as_png(tmp_path):
    dataset = materialize(tmp_path, [{"rgb": [0, 255, 0]}], "TestPILImages", "supervised", None)
    (stored,) = dataset.row_media(rows_of(dataset)[0])["images"]
    import io

    from PIL import Image

    assert stored.startswith(b"\x89PNG") and Image.open(io.BytesIO(stored)).getpixel((0, 0)) == (0, 255, 0)


def test_each_bad_media_class_is_quarantined_with_its_reason_and_the_good_rows_arrive(tmp_path, media_root):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    os.symlink(outside, media_root / "link-out.png")
    (media_root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (media_root / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (media_root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    good = "images/red.png"
    cases = [
        (good, None), ("../secret.png", MEDIA_OUTSIDE_ROOT), (str(outside), MEDIA_OUTSIDE_ROOT),
        ("link-out.png", MEDIA_OUTSIDE_ROOT), (good, None), ("images/nope.png", MEDIA_MISSING),
        ("broken.png", MEDIA_UNDECODABLE), ("broken.wav", MEDIA_UNDECODABLE), (good, None),
    ]
    dataset = materialize(tmp_path, [pair_row("image", path) for path, _ in cases], "AA_TI2T", "preference", media_root)
    quarantine = dataset.read_quarantine().to_pylist()
    expected = [(index, reason) for index, (_, reason) in enumerate(cases) if reason]
    assert [(row["source_index"], row["reason"]) for row in quarantine] == expected
    assert [row["source_index"] for row in rows_of(dataset)] == [0, 4, 8]
    audio = materialize(tmp_path, [pair_row("audio_path", "broken.wav"), pair_row("audio_path", "tone.wav")], "AA_TA2T", "preference", media_root)
    video = materialize(tmp_path, [pair_row("video_path", "broken.mp4"), pair_row("video_path", "dot.mp4")], "AA_TV2T", "preference", media_root)
    for media_dataset in (audio, video):
        assert media_dataset.read_quarantine().column("reason").to_pylist() == [MEDIA_UNDECODABLE]
        assert [row["source_index"] for row in rows_of(media_dataset)] == [1]


def test_placeholders_and_media_that_do_not_match_are_a_count_mismatch(tmp_path, media_root):
    def llava(value: str, image) -> dict:
        return {"image": image, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A square."}]}

    rows = [llava("<image>\nWhat?", "images/red.png"), llava("<image> and <image>?", "images/red.png"),
            llava("What?", "images/red.png"), llava("<image>\nWhat?", "images/blue.png")]
    dataset = materialize(tmp_path, rows, "LLaVA-Instruct", "supervised", media_root)
    assert dataset.read_quarantine().column("reason").to_pylist() == [MEDIA_COUNT_MISMATCH] * 2
    assert [row["source_index"] for row in rows_of(dataset)] == [0, 3]


def test_an_image_used_by_many_rows_is_stored_once(tmp_path, media_root):
    rows = [pair_row("image", "images/red.png", question=f"Question {i}?") for i in range(200)]
    rows[7] = pair_row("image", "images/blue.png")
    dataset = materialize(tmp_path, [{**r, "question": r.pop("prompt")} for r in rows], "AA_TI2T", "preference", media_root)
    assert dataset.manifest.media_store.rows == 2
    assert len({row["images"][0]["sha256"] for row in rows_of(dataset)}) == 2
    stored = ShardDataset(dataset.path).media_store()
    assert len(stored) == 2
    assert sum(len(stored.get(sha)) for sha in stored) == len(png_bytes((255, 0, 0))) + len(png_bytes((0, 0, 255)))


def test_digests_and_bytes_are_stable_across_reruns_and_follow_the_media_files(tmp_path, media_root):
    rows = [pair_row("image", "images/red.png"), pair_row("image", "images/blue.png")]
    source = write_jsonl(tmp_path / "rows.jsonl", [{**r, "question": r.pop("prompt")} for r in rows])
    first = materialize_dataset(source, "AA_TI2T", "preference", tmp_path / "a", media_root=media_root)
    second = materialize_dataset(source, "AA_TI2T", "preference", tmp_path / "b", media_root=media_root, workers=2)
    assert first.name == second.name
    for name in ("shards/shard-00000.arrow", MEDIA_STORE_NAME, "quarantine.arrow"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    (media_root / "images" / "blue.png").write_bytes(png_bytes((0, 0, 254)))
    changed = materialize_dataset(source, "AA_TI2T", "preference", tmp_path / "a", media_root=media_root)
    assert changed.name != first.name


def test_a_damaged_media_store_is_refused_by_name(tmp_path, media_root):
    rows = [pair_row("image", "images/red.png")]
    dataset = materialize(tmp_path, [{**r, "question": r.pop("prompt")} for r in rows], "AA_TI2T", "preference", media_root)
    store = dataset.path / MEDIA_STORE_NAME
    store.chmod(0o644)
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data))
    assert any(MEDIA_STORE_NAME in problem for problem in ShardDataset(dataset.path).verify())
    with pytest.raises(UsageError, match=MEDIA_STORE_NAME):
        ShardDataset(dataset.path).row_media(rows_of(dataset)[0])


def test_a_media_root_that_is_not_a_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="media root"):
        materialize(tmp_path, [pair_row("image", "x.png")], "AA_TI2T", "supervised", tmp_path / "nowhere")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_cli_materialize_reads_media_under_media_root_and_validates(tmp_path, media_root):
    from typer.testing import CliRunner

    from alignflow.cli import app

    rows = [{"question": "What colour?", "image": "images/red.png", "chosen": "red", "rejected": "blue"},
            {"question": "What colour?", "image": "../escape.png", "chosen": "red", "rejected": "blue"}]
    source = write_jsonl(tmp_path / "rlaif.jsonl", rows)
    args = ["materialize", str(source), "-t", "RLAIF-V", "-k", "preference", "-o", str(tmp_path / "out"), "--media-root", str(media_root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    dataset = ShardDataset(result.stdout.strip().splitlines()[-1])
    assert dataset.manifest.rows == 1 and dataset.manifest.quarantine_reasons == {MEDIA_OUTSIDE_ROOT: 1}
    assert dataset.row_media(rows_of(dataset)[0]) == {"images": [png_bytes((255, 0, 0))]}
    verify = CliRunner().invoke(app, ["shards", "verify", str(dataset.path)])
    assert verify.exit_code == 0 and "ok: 3 file(s), 1 rows" in verify.output  # shard, quarantine, media.arrow


def test_a_parquet_source_of_large_media_rows_is_read_in_chunks_of_bounded_bytes(tmp_path, monkeypatch):
    from align_core import sources

    monkeypatch.setattr(sources, "ARROW_CHUNK_BYTES", 64 << 10)
    images = [png_bytes((i, 0, 0), size=64) + bytes(16 << 10) for i in range(12)]  # ~17 KB rows (PNG + padding)
    table = pa.table({"question": [f"q{i}" for i in range(12)], "image": pa.array(images, pa.binary()),
                      "chosen": ["y"] * 12, "rejected": ["n"] * 12})
    pq.write_table(table, tmp_path / "big.parquet")
    chunks = list(sources.iter_chunks(tmp_path / "big.parquet", "parquet"))
    assert [chunk.start_index for chunk in chunks] == list(range(0, 12, 3))
    dataset = ShardDataset(materialize_dataset(tmp_path / "big.parquet", "RLAIF-V", "preference", tmp_path / "out"))
    assert [row["source_index"] for row in rows_of(dataset)] == list(range(12))
    assert len(dataset.media_store()) == 12


def test_a_quarantined_row_keeps_its_media_bytes_by_size_and_digest_not_by_repr(tmp_path):
    garbage = b"\x00not an image" * 100
    table = pa.table({"question": ["q"], "image": pa.array([garbage], pa.binary()), "chosen": ["y"], "rejected": ["n"]})
    pq.write_table(table, tmp_path / "bad.parquet")
    dataset = ShardDataset(materialize_dataset(tmp_path / "bad.parquet", "RLAIF-V", "preference", tmp_path / "out"))
    (row,) = dataset.read_quarantine().to_pylist()
    assert row["reason"] == MEDIA_UNDECODABLE
    assert json.loads(row["raw"])["image"] == f"<{len(garbage)} bytes, sha256 {hashlib.sha256(garbage).hexdigest()}>"
