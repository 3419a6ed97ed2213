"""Helpers for the data-contract tests (this module holds no tests): clean samples of every kind,
and a writer that turns samples into a real dataset folder (Arrow shards, quarantine, manifest),
several shards of several record batches each so that checks must span batches."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from align_core.io import sha256_json
from align_core.shards.manifest import Manifest
from align_core.shards.schema import Kind
from align_core.shards.writer import QuarantineWriter, SampleBatch, ShardWriter

IMAGE = "<image>"


def msg(role: str, *parts: str) -> dict[str, Any]:
    """A message; a part written "<image>" is an image placeholder, any other string is text."""
    content = [{"type": "image", "text": None} if part == IMAGE else {"type": "text", "text": part} for part in parts]
    return {"role": role, "content": content}


def image_item(index: int) -> dict[str, Any]:
    data = f"fake png {index}".encode()
    return {"bytes": data, "path": f"img-{index}.png", "sha256": hashlib.sha256(data).hexdigest()}


def clean_samples(kind: Kind, rows: int = 40, media: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``rows`` samples of ``kind`` that meet every expectation of the kind's suite."""
    samples = []
    for i in range(rows):
        system = [msg("system", "You are a careful assistant.")] if i % 5 == 0 else []
        question = msg("user", *([IMAGE] if media else []), f"question {i}: how do I sort a list?")
        sample: dict[str, Any] = {"id": f"s-{i:03d}", "source_index": i}
        if kind is Kind.SUPERVISED:
            follow_up = [msg("assistant", f"first answer {i}"), msg("user", f"follow-up {i}")] if i % 4 == 1 else []
            sample["messages"] = [*system, question, *follow_up, msg("assistant", f"answer {i}: use sorted().")]
        elif kind is Kind.PREFERENCE:
            sample["prompt"] = [*system, question]
            sample["chosen"] = [msg("assistant", f"good answer {i}: use sorted().")]
            # the longer answer is the chosen one in half the pairs: no length bias
            sample["rejected"] = [msg("assistant", f"bad answer {i}: you cannot{', lists stay as they are' if i % 2 else ''}.")]
        elif kind is Kind.PROMPT_ONLY:
            sample["prompt"] = [*system, question]
        else:  # unpaired preference: KTO pairs each prompt with a desirable and an undesirable completion
            sample["prompt"] = [msg("user", f"question {i // 2}: how do I sort a list?")]
            sample["completion"] = [msg("assistant", f"answer {i}: {'use sorted()' if i % 2 == 0 else 'you cannot'}.")]
            sample["label"] = i % 2 == 0
        for media_type in media:
            sample[f"{media_type}s"] = [image_item(i)]
        samples.append(sample)
    return samples


def write_dataset(
    root: Path,
    kind: Kind,
    samples: list[dict[str, Any]],
    media: tuple[str, ...] = (),
    rows_per_shard: int = 15,
    batch_rows: int = 7,
) -> Path:
    """A complete dataset folder under ``root`` holding ``samples`` (their own ids, even null or repeated)."""
    digest = sha256_json({"kind": kind.value, "media": media, "samples": repr(samples), "shard": rows_per_shard})[:32]
    dataset_dir = Path(root) / digest
    writer = ShardWriter(dataset_dir, kind, "0" * 64, media, rows_per_shard=rows_per_shard)
    for start in range(0, len(samples), batch_rows):
        batch = SampleBatch(kind, media)
        for sample in samples[start : start + batch_rows]:
            batch.add(sample["id"], sample["source_index"], sample)
        writer.write_batch(batch.to_record_batch(writer.schema))
    shards = writer.close()
    Manifest(
        dataset_digest=digest,
        kind=kind.value,
        template="test",
        template_code_version="0",
        template_options={},
        source={"path": "memory", "format": "test", "sha256": "0" * 64, "bytes": 0},
        source_sha256="0" * 64,
        rows=sum(entry.rows for entry in shards),
        quarantined=0,
        shards=shards,
        quarantine=QuarantineWriter(dataset_dir).close(),
        media=list(media),
    ).write(dataset_dir)
    return dataset_dir
