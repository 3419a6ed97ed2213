"""``TokenDataset(cache_dir)``: a token cache folder as a map-style torch Dataset over memory-mapped Arrow.

``dataset[i]`` is a dict of the row's columns (see ``align_core.data.schema``): token lists as
read-only int32 numpy views into the mapped files (no copy until the collator pads them), ``id``
as str, ``desirable`` as bool. ``dataset.lengths`` (n,) feeds length-grouped sampling;
``dataset.collator()`` pads batches of it for the trainer. Each token file is checked against its
manifest sha256 before it is mapped (hashed once per process): a flipped bit in a token id fails here
instead of changing the loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch.utils.data import Dataset

from align_core.data.media_inputs import MediaProcessor, MediaSource
from align_core.data.schema import TOKEN_LIST
from align_core.data.token_cache import DAMAGED, read_token_manifest
from align_core.io import require_sha256
from align_core.shards.schema import Kind


class _MappedBatch:
    """One record batch's columns as numpy views: (offsets, values) for token lists, arrays otherwise."""

    def __init__(self, batch: pa.RecordBatch):
        self.token_lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.scalars: dict[str, Any] = {}
        for name, column in zip(batch.schema.names, batch.columns):
            if column.type == TOKEN_LIST:
                self.token_lists[name] = (column.offsets.to_numpy(), column.values.to_numpy())
            else:
                self.scalars[name] = column.to_numpy(zero_copy_only=False)

    def row(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            name: values[offsets[index] : offsets[index + 1]] for name, (offsets, values) in self.token_lists.items()
        }
        for name, values in self.scalars.items():
            value = values[index]
            item[name] = value.item() if isinstance(value, np.generic) else value
        return item


class TokenDataset(Dataset):
    def __init__(self, cache_dir: str | Path, *, verify: bool = True):
        self.path = Path(cache_dir)
        self.manifest = read_token_manifest(self.path)
        self.kind = Kind(self.manifest["kind"])
        self.pad_token_id: int = self.manifest["pad_token_id"]
        self._maps = []  # keep the memory maps open for the views' lifetime
        self._batches: list[_MappedBatch] = []
        starts = [0]
        for entry in self.manifest["shards"]:
            if verify:
                require_sha256(self.path / entry["path"], entry["sha256"], DAMAGED)
            source = pa.memory_map(str(self.path / entry["path"]))
            self._maps.append(source)
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                self._batches.append(_MappedBatch(batch))
                starts.append(starts[-1] + batch.num_rows)
        self._starts = np.asarray(starts)
        self.lengths = np.concatenate(
            [batch.scalars["length"] for batch in self._batches] or [np.zeros(0, dtype=np.int32)]
        )

    def ids(self) -> list[str]:
        """Every row's sample id, in row order (from the mapped ``id`` columns; no token is read)."""
        return [str(row_id) for batch in self._batches for row_id in batch.scalars["id"]]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for a token dataset of {len(self)} rows")
        index %= len(self)
        batch_number = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._batches[batch_number].row(index - int(self._starts[batch_number]))

    # Memory maps do not pickle: a worker process (spawn) reopens the folder instead, without hashing
    # the files again (the process that pickled it verified them).
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], verify=False)

    def collator(self, pad_to_multiple_of: int | None = None, media: MediaProcessor | None = None):
        """The collator for this dataset's kind and pad token; with media, the model's processor over
        ``media`` (default: this cache's own dataset's media store)."""
        from align_core.data.collate import Collator

        return Collator(self.kind, self.pad_token_id, pad_to_multiple_of, media or media_processor_for([self]))


def media_processor_for(parts: list[TokenDataset], trust_remote_code: bool = False) -> MediaProcessor | None:
    """The processor of the model the caches were tokenised for, over the media stores of all their
    datasets; None when none of them has media."""
    with_media = [part for part in parts if part.manifest.get("media")]
    if not with_media:
        return None
    from align_core.models.registry import load_processor

    processor = load_processor(with_media[0].manifest["tokenizer_path"], trust_remote_code)
    return MediaProcessor(processor, MediaSource([part.manifest["dataset"]["path"] for part in with_media]))
