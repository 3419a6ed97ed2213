"""Media through a model's processor: the tokens each placeholder expands to, and a batch's model inputs.

Tokenisation renders a conversation with one placeholder per media item (``<image>``, ``<|AUDIO|>``)
and labels it by character spans (``align_core.data.encode``). ``MediaProcessor.expand`` then
repeats each placeholder token as many times as the model's processor would, with label -100 on
every copy, so the label mask is exact after expansion (align-anything measured the prompt before
expansion, and so trained on the wrong tokens). The count comes from running the processor on that
one item, memoised per item, so any family's rule (a fixed patch count, an audio length) is its own.

Features (``pixel_values``, ``input_features`` + ``feature_attention_mask``, ...) are computed at
collation, by the same processor on the batch's items, from the datasets' media stores: every
tensor it returns becomes a packed ``ModelInput`` (dim 0 = the items, counted per sequence), so the
trainers pass it through without knowing its name.

A video reaches a model that takes images as ``VIDEO_FRAMES`` frames decoded with PyAV and sampled
evenly: its part is rendered as that many image parts, each frame one image item (``MediaRef.frame``).
transformers' video processors need torchvision, which does not load beside the CPU torch wheel.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_core.data.batch import Layout, ModelInput
from align_core.data.truncation import IGNORE_INDEX, EncodedSequence
from align_core.errors import UsageError
from align_core.shards.schema import CONVERSATION_COLUMNS, MEDIA_COLUMNS, TEXT_PART, Kind

# The processor's keyword for a list of items of each media type it takes.
PROCESSOR_ARGUMENT = {"image": "images", "audio": "audio"}
VIDEO_FRAMES = 4  # frames a video becomes for a model that sees images


@dataclass(frozen=True)
class MediaRef:
    """One media item a sequence uses: its type as the model takes it, its sha256 in the dataset's media
    store, and for a video seen as images, which of its sampled frames."""

    media_type: str
    sha256: str
    frame: int | None = None

    def key(self) -> str:
        return f"{self.media_type}:{self.sha256}" + ("" if self.frame is None else f":{self.frame}")

    @classmethod
    def parse(cls, key: str) -> MediaRef:
        media_type, sha256, *frame = key.split(":")
        return cls(media_type, sha256, int(frame[0]) if frame else None)


def part_refs(content: Any, items: dict[str, list[str]], video_as_frames: bool) -> tuple[Any, list[MediaRef]]:
    """One message's content with each media part taking the next item of its type from ``items``
    (type -> sha256s, consumed in place), and the refs in order. With ``video_as_frames`` a video part
    becomes ``VIDEO_FRAMES`` image parts."""
    if isinstance(content, str):
        return content, []
    parts, refs = [], []
    for part in content:
        if part["type"] == TEXT_PART:
            parts.append(part)
            continue
        queue = items.get(part["type"]) or []
        if not queue:
            raise UsageError(f"a {part['type']} placeholder has no {part['type']} item left in its row")
        sha256 = queue.pop(0)
        if part["type"] == "video" and video_as_frames:
            parts += [{"type": "image"}] * VIDEO_FRAMES
            refs += [MediaRef("image", sha256, frame) for frame in range(VIDEO_FRAMES)]
        else:
            parts.append({"type": part["type"]})
            refs.append(MediaRef(part["type"], sha256))
    return parts, refs


def row_items(row: dict) -> dict[str, list[str]]:
    """A shard row's media sha256s per type, in placeholder order."""
    return {media_type: [item["sha256"] for item in row.get(column) or []] for media_type, column in MEDIA_COLUMNS.items()}


def decode_image(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decode_audio(data: bytes, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples at ``sampling_rate`` (resampled polyphase when the file's rate differs)."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    if rate != sampling_rate:
        from math import gcd

        from scipy.signal import resample_poly

        divisor = gcd(rate, sampling_rate)
        samples = resample_poly(samples, sampling_rate // divisor, rate // divisor).astype(np.float32)
    return samples


def decode_video_frames(data: bytes, frames: int = VIDEO_FRAMES) -> list:
    """``frames`` RGB frames sampled evenly over the clip (first and last included), decoded with PyAV."""
    import av

    with av.open(io.BytesIO(data)) as container:
        decoded = [frame.to_image() for frame in container.decode(video=0)]
    if not decoded:
        raise UsageError("a video has no frames")
    picks = np.linspace(0, len(decoded) - 1, frames).round().astype(int)
    return [decoded[index].convert("RGB") for index in picks]


def surviving_media(refs: Sequence[MediaRef], input_ids: Sequence[int], media: MediaProcessor) -> tuple[MediaRef, ...]:
    """The refs whose placeholder tokens are still in ``input_ids`` after truncation cut whole messages off
    the front: per media type, the leading refs whose tokens are gone are dropped."""
    dropped = {}
    for media_type, token in media.placeholder_ids.items():
        of_type = [ref for ref in refs if ref.media_type == media_type]
        remaining = sum(1 for token_id in input_ids if token_id == token)
        cut = 0
        while cut < len(of_type) and sum(media.token_count(ref) for ref in of_type[cut:]) > remaining:
            cut += 1
        dropped[media_type] = cut
    kept = []
    for ref in refs:
        if dropped.get(ref.media_type):
            dropped[ref.media_type] -= 1
        else:
            kept.append(ref)
    return tuple(kept)


class MediaProcessor:
    """A model's processor applied to media items of one or more datasets' media stores.

    ``media_bytes(sha256) -> bytes`` reads (and checks) an item; pass it when features or counts are
    needed. ``placeholder_ids``: the token each media type the model takes is written as.
    """

    def __init__(self, processor: Any, media_bytes: Callable[[str], bytes] | None = None):
        self.processor = processor
        self.media_bytes = media_bytes
        tokenizer = processor.tokenizer
        self.placeholders: dict[str, str] = {}
        for media_type in PROCESSOR_ARGUMENT:
            token = getattr(processor, f"{media_type}_token", None)
            if isinstance(token, str) and token:
                self.placeholders[media_type] = token
        if not self.placeholders:
            raise UsageError(f"{type(processor).__name__} defines no image or audio placeholder token")
        self.placeholder_ids = {kind: tokenizer.convert_tokens_to_ids(token) for kind, token in self.placeholders.items()}
        self.video_as_frames = "image" in self.placeholders
        self.sampling_rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", None)
        self._counts: dict[MediaRef, int] = {}
        self._frames: dict[str, list] = {}  # video sha256 -> decoded frames, while counting their tokens

    # ----- rendering ----------------------------------------------------------------------------------

    def takes(self, media_type: str) -> bool:
        return media_type in self.placeholders or (media_type == "video" and self.video_as_frames)

    def with_refs(self, conversation: list[dict], items: dict[str, list[str]]) -> tuple[list[dict], list[MediaRef]]:
        """``conversation`` as the model's template should see it, and the media refs of its parts in order."""
        messages, refs = [], []
        for message in conversation:
            content, message_refs = part_refs(message["content"], items, self.video_as_frames)
            for ref in message_refs:
                if ref.media_type not in self.placeholders:
                    raise UsageError(f"this model takes no {ref.media_type} (it takes: {', '.join(self.placeholders)})")
            messages.append({**message, "content": content})
            refs += message_refs
        return messages, refs

    def prepare_row(self, kind: Kind, row: dict) -> tuple[dict, dict[str, list[MediaRef]]]:
        """A shard row with its conversations as the model sees them, and each conversation column's media
        refs: media parts take the row's items in column, then placeholder order, as materialise stored them."""
        items = row_items(row)
        prepared, refs = dict(row), {}
        for column in CONVERSATION_COLUMNS[kind]:
            prepared[column], refs[column] = self.with_refs(row[column], items)
        return prepared, refs

    # ----- decoding -----------------------------------------------------------------------------------

    def decode(self, ref: MediaRef, cache: dict | None = None) -> Any:
        """The item as the processor takes it (a PIL image, or mono samples at its sampling rate)."""
        cache = {} if cache is None else cache
        if ref.frame is not None:
            if ref.sha256 not in cache:
                cache[ref.sha256] = decode_video_frames(self.media_bytes(ref.sha256))
            return cache[ref.sha256][ref.frame]
        data = self.media_bytes(ref.sha256)
        return decode_image(data) if ref.media_type == "image" else decode_audio(data, self.sampling_rate)

    def _call(self, media_type: str, texts: list[str], items: list) -> dict[str, torch.Tensor]:
        extra = {"sampling_rate": self.sampling_rate} if media_type == "audio" else {}
        return self.processor(
            text=texts, **{PROCESSOR_ARGUMENT[media_type]: items}, return_tensors="pt", padding=True, **extra
        )

    # ----- expansion ----------------------------------------------------------------------------------

    def token_count(self, ref: MediaRef) -> int:
        """How many tokens the processor expands ``ref``'s placeholder into (memoised per item)."""
        if ref not in self._counts:
            if len(self._frames) > 8:  # the frames of the last few videos: each frame's count decodes them once
                self._frames.clear()
            output = self._call(ref.media_type, [self.placeholders[ref.media_type]], [self.decode(ref, self._frames)])
            self._counts[ref] = int((output["input_ids"] == self.placeholder_ids[ref.media_type]).sum())
        return self._counts[ref]

    def expand(self, sequence: EncodedSequence, refs: Sequence[MediaRef], row_id: str) -> EncodedSequence:
        """``sequence`` with each placeholder repeated to its item's token count (labels -100 on every copy),
        and its truncation cut points moved with the tokens they point at."""
        ids_to_type = {token: media_type for media_type, token in self.placeholder_ids.items()}
        positions = [index for index, token in enumerate(sequence.input_ids) if token in ids_to_type]
        found = [ids_to_type[sequence.input_ids[index]] for index in positions]
        if found != [ref.media_type for ref in refs]:
            raise UsageError(
                f"row {row_id!r}: the rendered text holds placeholders {found} for media {[r.media_type for r in refs]}; "
                "does its text contain a literal placeholder token?"
            )
        counts = {position: self.token_count(ref) for position, ref in zip(positions, refs)}
        labels_in = sequence.labels if sequence.labels is not None else [IGNORE_INDEX] * len(sequence.input_ids)
        input_ids: list[int] = []
        labels: list[int] = []
        moved: list[int] = []  # moved[i]: where original token i starts now (one past the end last)
        for position, (token, label) in enumerate(zip(sequence.input_ids, labels_in)):
            moved.append(len(input_ids))
            repeat = counts.get(position, 1)
            input_ids += [token] * repeat
            labels += [IGNORE_INDEX] * repeat if position in counts else [label]
        moved.append(len(input_ids))
        cuts = sequence.cuts
        if cuts is not None:
            cuts = replace(cuts, ends=tuple(moved[end] for end in cuts.ends), response_start=moved[cuts.response_start])
        return EncodedSequence(input_ids, labels if sequence.labels is not None else None, cuts)

    # ----- features -----------------------------------------------------------------------------------

    def model_inputs(self, refs_per_sequence: Sequence[Sequence[MediaRef]]) -> dict[str, ModelInput]:
        """The processor's media tensors for a batch's sequences, each packed: dim 0 holds the items of
        sequence 0, then of sequence 1, ... (``counts`` per sequence)."""
        inputs: dict[str, ModelInput] = {}
        frames: dict[str, list] = {}
        for media_type in self.placeholders:
            per_sequence = [[ref for ref in refs if ref.media_type == media_type] for refs in refs_per_sequence]
            items = [self.decode(ref, frames) for refs in per_sequence for ref in refs]
            if not items:
                continue
            texts = [self.placeholders[media_type] * len(refs) for refs in per_sequence]
            output = self._call(media_type, texts, items)
            counts = torch.tensor([len(refs) for refs in per_sequence])
            for name, value in output.items():
                if name in ("input_ids", "attention_mask"):
                    continue
                if not isinstance(value, torch.Tensor) or len(value) != len(items):
                    raise UsageError(
                        f"{type(self.processor).__name__} returned {name!r} not laid out one entry per "
                        f"{media_type}; register a processor for this model family (align_core.models.register_model)"
                    )
                inputs[name] = ModelInput(value, Layout.PACKED, counts)
        return inputs

    def fingerprint(self) -> dict[str, Any]:
        return {"placeholders": self.placeholders, "video_frames": VIDEO_FRAMES if self.video_as_frames else None}


class MediaSource:
    """``sha256 -> bytes`` over the media stores of several datasets (opened on first use, checked
    against their manifests); picklable, so data-loader workers reopen it."""

    def __init__(self, dataset_dirs: Sequence[str | Path]):
        self.dataset_dirs = [str(folder) for folder in dataset_dirs]
        self._stores: list | None = None

    def __call__(self, sha256: str) -> bytes:
        from align_core.errors import IntegrityError
        from align_core.shards.dataset import ShardDataset

        if self._stores is None:
            datasets = [ShardDataset(folder) for folder in self.dataset_dirs]
            self._stores = [dataset.media_store() for dataset in datasets if dataset.manifest.media_store]
        for store in self._stores:
            if sha256 in store:
                return store.get(sha256)
        raise IntegrityError(f"media item {sha256[:16]} is in none of the media stores of {self.dataset_dirs}")

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset_dirs": self.dataset_dirs, "_stores": None}
