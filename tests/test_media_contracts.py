"""Data contracts for media: datasets materialised from real PNG/WAV/FLAC/MP4/WebM bytes, each media
check failing exactly the rows whose item breaks it (named by id), bounds overridden like any check,
each distinct item probed once, and thumbnails of failing images in the HTML report."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from media_files import video_bytes, wav_bytes
from PIL import Image
from typer.testing import CliRunner

import align_core.media
from align_core.materialize import materialize_dataset
from align_core.media import MediaBlob, probe_media
from align_core.shards.dataset import ShardDataset
from align_core.shards.media_store import MediaStore, MediaStoreWriter
from align_core.shards.schema import MEDIA_ITEM
from alignflow.cli import app
from data_contracts import media_checks
from data_contracts.media_checks import MediaProber, media_columns
from data_contracts.runner import validate_dataset

TEMPLATES = {  # media type -> (template, the source field holding the media path)
    "image": ("AA_TI2T", "image"),
    "audio": ("AA_TA2T", "audio_path"),
    "video": ("AA_TV2T", "video_path"),
}
MEDIA_CHECKS = {
    "image": ["image_decodable", "image_min_side", "image_max_side", "image_max_aspect"],
    "audio": [
        "audio_decodable",
        "audio_min_duration",
        "audio_max_duration",
        "audio_sampling_rate_known[audio_min_sampling_rate]",
        "audio_sampling_rate_known[audio_max_sampling_rate]",
    ],
    "video": ["video_decodable", "video_min_frames", "video_max_duration"],
}
GOOD = {
    "image": lambda: png(32, 32),
    "audio": lambda: wav_bytes(seconds=0.2, sampling_rate=16_000),
    "video": lambda: video_bytes(frames=10, fps=10),
}


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def flac_silence(seconds: float, sampling_rate: int = 8_000) -> bytes:
    """Silence compresses to almost nothing in FLAC: a 10-minute clip in ~14 KB."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(seconds * sampling_rate), np.int16), sampling_rate, format="FLAC")
    return buffer.getvalue()


def empty_wav() -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, np.float32), 16_000, format="WAV")
    return buffer.getvalue()


def materialize_media(tmp_path: Path, media_type: str, items: list[bytes]) -> ShardDataset:
    """One preference row per item (row i shows ``items[i]``), from files under a media root."""
    template, field = TEMPLATES[media_type]
    root = tmp_path / "media"
    root.mkdir(exist_ok=True)
    rows = []
    for index, data in enumerate(items):
        (root / f"item-{index}").write_bytes(data)
        question = {"question" if media_type == "image" else "prompt": f"What is in item {index}?"}
        rows.append({**question, field: f"item-{index}", "response_1": f"a thing {index}", "response_2": f"nothing {index}", "overall_response": 1})  # same lengths: no length bias
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = ShardDataset(materialize_dataset(source, template, "preference", tmp_path / "out", media_root=root, rows_per_shard=4))
    assert dataset.manifest.rows == len(items) and dataset.manifest.quarantined == 0
    return dataset


def accept_any(monkeypatch, media_type: str) -> None:
    """Let bytes that do not decode through materialisation, as a more lenient decoder (or another
    machine's codecs) would have, so that the contract is what catches them."""
    monkeypatch.setitem(align_core.media.DECODE_CHECKS, media_type, lambda data: None)
    monkeypatch.setattr(align_core.media, "_decoded", {})  # nothing accepted here outlives the test


def ids_at(dataset: ShardDataset, *source_indices: int) -> list[str]:
    by_index = {row["source_index"]: row["id"] for row in dataset.read_table(["id", "source_index"]).to_pylist()}
    return [by_index[index] for index in source_indices]


def failures(result) -> dict[str, list[str]]:
    return {r.name: r.sample_ids for r in result.results if not r.success}


def test_probe_media_measures_each_modality_and_reports_what_does_not_decode():
    assert probe_media("image", png(30, 10)) == align_core.media.MediaProbe(width=30, height=10)
    audio = probe_media("audio", wav_bytes(seconds=0.5, sampling_rate=22_050))
    assert (audio.seconds, audio.sampling_rate) == (0.5, 22_050)
    for container in ("mp4", "webm"):  # WebM records no frame count: the probe decodes to count
        video = probe_media("video", video_bytes(frames=7, fps=10, container=container))
        assert (video.frames, video.seconds, video.width, video.height) == (7, 0.7, 32, 32)
    broken = probe_media("image", png(30, 10)[:-40])
    assert not broken.decodable and broken.width is None
    assert probe_media("audio", b"RIFF, but no wave").error.startswith("LibsndfileError")


@pytest.mark.parametrize("media_type", ["image", "audio", "video"])
def test_a_clean_media_dataset_passes_every_media_check(tmp_path, media_type):
    dataset = materialize_media(tmp_path, media_type, [GOOD[media_type]() for _ in range(5)])

    result = validate_dataset(dataset.path)

    assert result.passed and failures(result) == {}
    judged = {r.name: (r.element_count, r.unexpected_count) for r in result.results}
    assert {name: judged[name] for name in MEDIA_CHECKS[media_type]} == dict.fromkeys(MEDIA_CHECKS[media_type], (5, 0))


BAD_ITEMS = {  # case -> (media type, bad item, overrides, failed expectations)
    "image_max_side": ("image", lambda: png(8200, 420), {}, ["image_max_side"]),  # aspect 19.5: only the side fails
    "image_max_aspect": ("image", lambda: png(5, 120), {}, ["image_max_aspect"]),  # 24:1
    "image_min_side": ("image", lambda: png(8, 8), {"image_min_side.min_value": 16}, ["image_min_side"]),
    "audio_min_duration": ("audio", empty_wav, {}, ["audio_min_duration"]),
    "audio_max_duration": ("audio", lambda: flac_silence(601), {}, ["audio_max_duration"]),
    "audio_sampling_rate_known": (
        "audio",
        lambda: wav_bytes(seconds=0.2, sampling_rate=11_025),
        {},
        ["audio_sampling_rate_known[audio_min_sampling_rate]", "audio_sampling_rate_known[audio_max_sampling_rate]"],
    ),
    "video_min_frames": ("video", lambda: video_bytes(frames=3), {"video_min_frames.min_value": 5}, ["video_min_frames"]),
    "video_max_duration": ("video", lambda: video_bytes(frames=602, fps=1, size=16), {}, ["video_max_duration"]),  # 602 s
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_a_bad_item_fails_exactly_its_check_naming_the_rows_that_show_it(tmp_path, case):
    media_type, bad_item, overrides, failed = BAD_ITEMS[case]
    good, bad = GOOD[media_type](), bad_item()
    dataset = materialize_media(tmp_path, media_type, [good, bad, good, good, bad])

    result = validate_dataset(dataset.path, overrides=overrides)

    assert failures(result) == dict.fromkeys(failed, ids_at(dataset, 1, 4))
    assert all(r.unexpected_count == 2 and r.element_count == 5 for r in result.results if r.name in failed)
    assert not result.passed


@pytest.mark.parametrize("media_type", ["image", "audio", "video"])
def test_media_that_do_not_decode_fail_the_decodable_check_only(tmp_path, monkeypatch, media_type):
    accept_any(monkeypatch, media_type)
    junk = f"not a {media_type}: test_media_contracts".encode()
    dataset = materialize_media(tmp_path, media_type, [GOOD[media_type](), junk, GOOD[media_type]()])

    result = validate_dataset(dataset.path)

    # Its measurements are null, so no bound check judges the row a second time.
    assert failures(result) == {f"{media_type}_decodable": ids_at(dataset, 1)}


def test_an_override_moves_a_bound_and_changes_the_suite_version(tmp_path):
    dataset = materialize_media(tmp_path, "image", [png(16, 16), png(64, 48), png(16, 16)])
    default = validate_dataset(dataset.path)

    tighter = validate_dataset(dataset.path, overrides={"image_max_side": {"max_value": 32}})

    assert default.passed and failures(tighter) == {"image_max_side": ids_at(dataset, 1)}
    assert tighter.overrides == {"image_max_side": {"max_value": 32}}
    assert tighter.suite_version != default.suite_version


def test_a_suite_file_and_the_cli_override_media_checks_like_any_other(tmp_path):
    dataset = materialize_media(tmp_path, "image", [png(16, 16), png(5, 120)])
    suite = tmp_path / "lenient.yaml"
    suite.write_text("kind: preference\nversion: 1\ninclude: [common, conversation]\noverrides:\n  image_max_aspect: {max_value: 30}\n")

    assert validate_dataset(dataset.path, suite=str(suite)).passed
    outcome = CliRunner().invoke(app, ["validate", str(dataset.path), "--set", "image_max_aspect.severity=warning"])
    assert outcome.exit_code == 0, outcome.output
    row = next(line for line in outcome.output.splitlines() if line.startswith("WARN"))
    assert row.split()[:4] == ["WARN", "image_max_aspect", "warning", "1"] and row.endswith(ids_at(dataset, 1)[0])


def test_each_distinct_item_is_probed_once_however_many_rows_show_it(tmp_path, monkeypatch):
    red, blue = png(16, 16, (255, 0, 0)), png(16, 16, (0, 0, 255))
    dataset = materialize_media(tmp_path, "image", [red if i % 3 else blue for i in range(30)])  # 8 shards
    probed = []
    monkeypatch.setattr(media_checks, "probe_media", lambda media_type, data: probed.append(data) or probe_media(media_type, data))

    assert validate_dataset(dataset.path, workers=4).passed
    assert sorted(probed) == sorted([red, blue])


def test_a_row_with_several_items_is_judged_by_its_extremes(tmp_path):
    images = {"small": png(8, 8), "wide": png(40, 10), "square": png(20, 20), "junk": b"no image here"}
    writer = MediaStoreWriter(tmp_path)
    writer.add(MediaBlob("image", hashlib.sha256(data).hexdigest(), data) for data in images.values())
    writer.close()
    prober = MediaProber(MediaStore(writer.path))
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in images.items()}
    rows = [["small", "wide"], [], ["junk", "square"], ["junk"]]
    items = pa.array([[{"sha256": sha[name], "path": None} for name in row] for row in rows], pa.list_(MEDIA_ITEM))

    columns = {name: pa.array(values).to_pylist() for name, values in media_columns(items, "image", prober).items()}

    assert columns == {
        "image_undecodable": [0, 0, 1, 1],
        "image_min_side": [8.0, None, 20.0, None],
        "image_max_side": [40.0, None, 20.0, None],
        "image_max_aspect": [4.0, None, 1.0, None],
    }


def test_the_html_report_shows_thumbnails_of_the_failing_images(tmp_path, monkeypatch):
    accept_any(monkeypatch, "image")
    banner = png(300, 10, (10, 120, 200))  # 30:1
    dataset = materialize_media(tmp_path, "image", [png(16, 16), banner, b"not an image: thumbnail test", *[banner] * 6])

    result = validate_dataset(dataset.path)

    html = result.report_path.read_text()
    aspect_row = html[html.index("<code>image_max_aspect</code>") :].split("</tr>")[0]
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', aspect_row)
    assert len(uris) == 5  # a handful, not all seven failing rows
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as shown:
        assert shown.size == (96, 3) and shown.getpixel((50, 1))[:3] == (10, 120, 200)
    assert f"<figcaption>{ids_at(dataset, 1)[0]}</figcaption>" in aspect_row
    decodable_row = html[html.index("<code>image_decodable</code>") :].split("</tr>")[0]
    assert "does not decode" in decodable_row and f"<figcaption>{ids_at(dataset, 2)[0]}</figcaption>" in decodable_row
    assert html.count("data:image/png;base64,") == 5  # passing checks show no images


def test_the_same_question_about_another_image_is_not_a_repeat_but_about_the_same_image_it_is(tmp_path):
    from data_contracts.derive import RowDeriver

    root = tmp_path / "media"
    root.mkdir()
    (root / "red.png").write_bytes(png(8, 8, (200, 30, 30)))
    (root / "blue.png").write_bytes(png(8, 8, (30, 30, 200)))
    rows = [{"question": "What colour is it?", "image": image, "response_1": "Red.", "response_2": "Blue.", "overall_response": 1}
            for image in ("red.png", "blue.png", "red.png")]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = ShardDataset(materialize_dataset(source, "AA_TI2T", "preference", tmp_path / "out", media_root=root))
    frame = RowDeriver(dataset.kind, tuple(dataset.manifest.media)).frame(dataset.read_table().to_batches()[0])
    assert frame["prompt_repeat"].tolist() == [False, False, True]  # text alone would say [False, True, True]
    assert frame["sample_repeat"].tolist() == [False, False, True]
