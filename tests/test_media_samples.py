"""The bundled image, audio and video sample datasets: they materialise with their align-anything templates,
quarantining exactly the planted bad media; same seed, same bytes; and the answer is in the media alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_samples import bag_of_words_accuracy
from typer.testing import CliRunner

from align_core.errors import MEDIA_MISSING, MEDIA_UNDECODABLE
from align_core.materialize import materialize_dataset
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import MEDIA_COLUMNS
from alignflow.samples import (
    MEDIA_ROOT_NAME,
    MEDIA_SAMPLE_SETS,
    MOTIONS,
    PITCHES,
    SAMPLE_SETS,
    SAMPLING_RATE,
    SHAPE_COLOURS,
    WrittenMediaSet,
    planted_positions,
    write_media_samples,
)

ROWS = 120
PREFERENCE_SETS = [name for name, spec in MEDIA_SAMPLE_SETS.items() if spec.kind == "preference"]
# The answer each set's responses name, by the word for it.
ANSWER_CLASSES = {
    "image_colours": sorted(SHAPE_COLOURS),
    "image_colours_sft": sorted(SHAPE_COLOURS),
    "audio_pitch": sorted(PITCHES),
    "video_motion": sorted(MOTIONS),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_media_samples(tmp_path_factory.mktemp("media_samples"), rows=ROWS, seed=0)


def materialised(media_set: WrittenMediaSet, out_root: Path) -> ShardDataset:
    spec = (media_set.source, media_set.template, media_set.kind)
    return ShardDataset(materialize_dataset(*spec, out_root, media_root=media_set.media_root))


@pytest.fixture(scope="module")
def datasets(written, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("media_datasets")
    return {name: materialised(media_set, out_root) for name, media_set in written.items()}


def raw_rows(written, name: str) -> list[dict]:
    """The good rows of a set as written, the planted ones left out."""
    planted = set(planted_positions(ROWS, len(MEDIA_SAMPLE_SETS[name].planted)))
    rows = [json.loads(line) for line in written[name].source.read_text().splitlines()]
    return [row for index, row in enumerate(rows) if index not in planted]


def answer_of(text: str, name: str) -> str:
    (answer,) = set(re.findall(r"[a-z]+", text.lower())) & set(ANSWER_CLASSES[name])
    return answer


def chosen_and_rejected(row: dict) -> tuple[str, str]:
    chosen = row["overall_response"]
    return row[f"response_{chosen}"], row[f"response_{3 - chosen}"]


def correct_answers(written, name: str) -> list[tuple[dict, str]]:
    """``(row, answer word)`` of every good row: the chosen response of a pair, or the supervised response."""
    rows = raw_rows(written, name)
    texts = [chosen_and_rejected(row)[0] if "overall_response" in row else row["response"] for row in rows]
    return [(row, answer_of(text, name)) for row, text in zip(rows, texts)]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- Materialisation: exactly the planted media rows are quarantined ------------------------------


@pytest.mark.parametrize("name", list(MEDIA_SAMPLE_SETS))
def test_media_set_materialises_quarantining_exactly_the_planted_rows(datasets, name):
    dataset, planted = datasets[name], planted_positions(ROWS, 2)
    quarantine = dataset.read_quarantine().to_pylist()
    assert [row["source_index"] for row in quarantine] == planted
    assert [row["reason"] for row in quarantine] == MEDIA_SAMPLE_SETS[name].planted_reasons == [MEDIA_MISSING, MEDIA_UNDECODABLE]
    assert [row["source_index"] for row in dataset.read_table().to_pylist()] == [i for i in range(ROWS) if i not in planted]
    assert dataset.verify() == []


@pytest.mark.parametrize("name", list(MEDIA_SAMPLE_SETS))
def test_every_good_row_arrives_with_the_bytes_of_its_media_file(datasets, written, name):
    dataset, media_root = datasets[name], written[name].media_root
    (column,) = [MEDIA_COLUMNS[media_type] for media_type in dataset.manifest.media]
    for row in dataset.read_table().to_pylist():
        (item,) = row[column]
        assert item["path"].startswith(f"{written[name].source.stem}/")
        assert dataset.row_media(row) == {column: [(media_root / item["path"]).read_bytes()]}


def test_each_set_is_written_as_its_sample_set_says_with_one_media_root_beside_the_sources(written):
    assert list(written) == list(MEDIA_SAMPLE_SETS)
    for name, spec in MEDIA_SAMPLE_SETS.items():
        media_set = written[name]
        assert (media_set.source.name, media_set.template, media_set.kind) == (spec.filename, spec.template, spec.kind)
        assert media_set.media_root == media_set.source.parent / MEDIA_ROOT_NAME


# --- Determinism and rewrites ---------------------------------------------------------------------


def test_same_seed_writes_byte_identical_files_and_another_seed_different_ones(tmp_path):
    first, again, other = (tmp_path / "a", tmp_path / "b", tmp_path / "c")
    write_media_samples(first, rows=20, seed=7)
    write_media_samples(again, rows=20, seed=7)
    write_media_samples(other, rows=20, seed=8)
    assert tree_bytes(first) == tree_bytes(again)
    assert len(tree_bytes(first)) == len(MEDIA_SAMPLE_SETS) * (1 + 20 - 1)  # each source and its files, one missing
    differing = {name for name, data in tree_bytes(first).items() if tree_bytes(other).get(name) != data}
    assert {spec.filename for spec in MEDIA_SAMPLE_SETS.values()} <= differing


def test_files_do_not_depend_on_the_process_hash_seed(tmp_path):
    write_media_samples(tmp_path / "here", rows=10, seed=1)
    script = f"from alignflow.samples import write_media_samples; write_media_samples({str(tmp_path / 'there')!r}, rows=10, seed=1)"
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert tree_bytes(tmp_path / "here") == tree_bytes(tmp_path / "there")


def test_writing_the_same_media_samples_again_leaves_every_file_untouched(tmp_path):
    write_media_samples(tmp_path, rows=12, seed=0)
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    for path in files:
        os.utime(path, ns=(1, 1))  # an old mtime, which a rewrite would replace
    write_media_samples(tmp_path, rows=12, seed=0)
    assert {path.stat().st_mtime_ns for path in files} == {1}


def test_a_shorter_write_removes_the_media_files_it_no_longer_names(tmp_path):
    """Row 6 is a good image in a 30-row write and the planted missing one in a 20-row write: it must go."""
    write_media_samples(tmp_path, rows=30, seed=0)
    (image_colours, *_) = write_media_samples(tmp_path, rows=20, seed=0).values()
    assert planted_positions(20, 2)[0] == 6 and 6 not in planted_positions(30, 2)
    folder = image_colours.media_root / image_colours.source.stem
    named = {json.loads(line)["image"] for line in image_colours.source.read_text().splitlines()}
    assert {f"{folder.name}/{path.name}" for path in folder.iterdir()} == named - {f"{folder.name}/00006.png"}
    quarantine = materialised(image_colours, tmp_path / "out").read_quarantine().to_pylist()
    assert [(row["source_index"], row["reason"]) for row in quarantine] == [(6, MEDIA_MISSING), (13, MEDIA_UNDECODABLE)]


# --- The answer is in the media alone -------------------------------------------------------------


@pytest.mark.parametrize("name", PREFERENCE_SETS)
def test_the_correct_answer_is_response_1_in_about_half_the_rows(written, name):
    first = [row["overall_response"] == 1 for row in raw_rows(written, name)]
    assert 0.4 < sum(first) / len(first) < 0.6


@pytest.mark.parametrize("name", list(MEDIA_SAMPLE_SETS))
def test_each_answer_is_the_correct_one_about_equally_often(written, name):
    counts = Counter(answer for _, answer in correct_answers(written, name))
    classes = ANSWER_CLASSES[name]
    assert set(counts) == set(classes)
    assert all(abs(count / (ROWS - 2) - 1 / len(classes)) < 0.1 for count in counts.values()), counts


@pytest.mark.parametrize("name", PREFERENCE_SETS)
def test_chosen_and_rejected_are_said_alike_and_only_the_answer_differs(written, name):
    pairs = [chosen_and_rejected(row) for row in raw_rows(written, name)]
    for chosen, rejected in pairs:
        assert chosen.replace(answer_of(chosen, name), "<answer>") == rejected.replace(answer_of(rejected, name), "<answer>")
    assert {answer_of(chosen, name) for chosen, _ in pairs} == {answer_of(rejected, name) for _, rejected in pairs}
    assert {chosen for chosen, _ in pairs} & {rejected for _, rejected in pairs}  # the same strings on both sides
    # Without the media, a bag of words fitted on half the pairs does no better than chance on the rest.
    assert 0.3 < bag_of_words_accuracy(pairs) < 0.7


def shape_fill(mask: np.ndarray) -> float:
    """Share of the mask's bounding box it covers: 1 for a square, ~0.79 for a circle, ~0.5 for a triangle."""
    rows, columns = np.nonzero(mask)
    return mask.sum() / ((rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1))


FILL_RANGES = {"square": (0.99, 1.0), "circle": (0.7, 0.86), "triangle": (0.4, 0.65)}


@pytest.mark.parametrize("name", ["image_colours", "image_colours_sft"])
def test_images_show_the_asked_shape_in_the_answered_colour(written, name):
    from PIL import Image

    for row, colour in correct_answers(written, name):
        (shape,) = set(re.findall(r"[a-z]+", (row.get("question") or row["prompt"]).lower())) & set(FILL_RANGES)
        pixels = np.asarray(Image.open(written[name].media_root / row["image"]))
        assert pixels.shape == (64, 64, 3)
        low, high = FILL_RANGES[shape]
        assert low <= shape_fill((pixels == SHAPE_COLOURS[colour]).all(axis=-1)) <= high, (row, colour)
        if "overall_response" in row:  # the wrong colour is nowhere in the image
            wrong = answer_of(chosen_and_rejected(row)[1], name)
            assert (pixels == SHAPE_COLOURS[wrong]).all(axis=-1).sum() == 0


def test_tones_sound_at_the_answered_pitch(written):
    import soundfile

    for row, pitch in correct_answers(written, "audio_pitch"):
        signal, rate = soundfile.read(written["audio_pitch"].media_root / row["audio_path"])
        assert rate == SAMPLING_RATE and signal.ndim == 1 and 0.8 <= len(signal) / rate <= 1.2
        peak = np.argmax(np.abs(np.fft.rfft(signal))) * rate / len(signal)
        low, high = PITCHES[pitch]
        assert low - 5 <= peak <= high + 5, (row, pitch, peak)


def test_clips_show_the_dot_moving_the_answered_way(written):
    import av

    for row, direction in correct_answers(written, "video_motion"):
        with av.open(str(written["video_motion"].media_root / row["video_path"])) as container:
            frames = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (32, 32)
        centres = [np.argwhere(frame > frame.max() / 2).mean(axis=0) for frame in (frames[0], frames[-1])]
        _, axis, sign = MOTIONS[direction]
        moved = (centres[1] - centres[0])[1 - axis]  # argwhere gives (y, x)
        assert sign * moved > 8, (row, direction, moved)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_with_media_writes_the_media_sets_and_prints_their_sources_and_media_root(tmp_path):
    from alignflow.cli import app

    out_dir = tmp_path / "samples"
    result = CliRunner().invoke(app, ["samples", str(out_dir), "--rows", "12", "--seed", "3", "--media"])
    assert result.exit_code == 0, result.output
    text_files = [str(out_dir / spec.filename) for spec in SAMPLE_SETS.values()]
    media_files = [str(out_dir / spec.filename) for spec in MEDIA_SAMPLE_SETS.values()]
    assert result.output.strip().splitlines() == [*text_files, *media_files, str(out_dir / MEDIA_ROOT_NAME), str(out_dir)]
    assert tree_bytes(out_dir / MEDIA_ROOT_NAME) == tree_bytes(
        write_media_samples(tmp_path / "again", rows=12, seed=3)["video_motion"].media_root
    )


def test_cli_without_media_writes_only_the_text_sets(tmp_path):
    from alignflow.cli import app

    result = CliRunner().invoke(app, ["samples", str(tmp_path), "--rows", "12"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(spec.filename for spec in SAMPLE_SETS.values())
