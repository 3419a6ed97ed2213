"""``manifest.json``: what a dataset folder holds and the digests that prove it.

The manifest is written last, so a folder with a readable manifest is complete.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align_core.errors import UsageError
from align_core.io import atomic_write_json
from align_core.shards.schema import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.arrow"
SHARDS_SUBDIR = "shards"


@dataclass
class FileEntry:
    path: str  # relative to the dataset folder
    rows: int
    sha256: str


@dataclass
class Manifest:
    dataset_digest: str
    kind: str
    template: str
    template_code_version: str
    template_options: dict[str, Any]
    source: dict[str, Any]  # {"path", "format", "sha256", "bytes"}
    source_sha256: str
    rows: int
    quarantined: int
    shards: list[FileEntry]
    quarantine: FileEntry
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    media: list[str] = field(default_factory=list)
    media_store: FileEntry | None = None  # media.arrow, when the dataset carries media
    created: str = ""
    alignflow_version: str = ""
    schema_version: int = SCHEMA_VERSION
    shard_format: str = "arrow-ipc-file"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["shards"] = [FileEntry(**entry) for entry in data["shards"]]
        data["quarantine"] = FileEntry(**data["quarantine"])
        if data.get("media_store"):
            data["media_store"] = FileEntry(**data["media_store"])
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    def write(self, dataset_dir: Path) -> None:
        atomic_write_json(Path(dataset_dir) / MANIFEST_NAME, self.to_dict())


def read_manifest(dataset_dir: str | Path) -> Manifest:
    """The manifest of a dataset folder; a clear error if it is missing, unreadable or too new."""
    path = Path(dataset_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UsageError(f"{dataset_dir}: no {MANIFEST_NAME}; not a complete alignflow dataset folder")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: unreadable manifest ({error})") from error
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UsageError(f"{path}: shard schema version {version}, this alignflow reads version {SCHEMA_VERSION}")
    return Manifest.from_dict(data)
