"""Media of a sample: resolve what a source row or template gives into bytes, check they decode, digest them.

A media value may be

- a path relative to the media root (``--media-root``): read from there; one that resolves outside
  it (``..``, absolute, a symlink out) is ``media_outside_root``, one that is not a file ``media_missing``;
- a ``data:<mime>;base64,<payload>`` string: the decoded payload;
- raw ``bytes``;
- a Hugging Face ``Image()``/``Audio()`` struct ``{"bytes": ..., "path": ...}`` (bytes win, else the path);
- a PIL image (what a template may return): stored as PNG.

Bytes are kept as they are (the original PNG/JPEG/WAV/MP4), never re-encoded, so a dataset's media
have the sha256 of the files they came from. Each item must decode with its modality's reader
(PIL, soundfile, PyAV) or the row is ``media_undecodable``; audio records its sampling rate.
``probe_media`` measures a stored item (sizes, durations, rates, frames) for the data contracts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align_core.errors import (
    MEDIA_COUNT_MISMATCH,
    MEDIA_MISSING,
    MEDIA_OUTSIDE_ROOT,
    MEDIA_UNDECODABLE,
    WRONG_TYPE,
    RowRejected,
)
from align_core.io import sha256_file_once
from align_core.shards.schema import MEDIA_COLUMNS, MEDIA_PART_TYPES


@dataclass(frozen=True)
class MediaBlob:
    """One stored media item: its encoded bytes, their sha256, and for audio the sampling rate (Hz)."""

    media_type: str
    sha256: str
    data: bytes
    sampling_rate: int | None = None


def media_root_digest(media_root: str | os.PathLike) -> str:
    """Digest of every file under the media root (relative path + sha256, each file hashed once per
    process): the dataset digest covers the media a row may point at, not just the source's text."""
    root = Path(media_root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            content = sha256_file_once(path)
        except OSError as error:  # an unreadable file fails only the rows that use it (media_missing)
            content = f"unreadable: {error.strerror}"
        digest.update(str(path.relative_to(root)).encode() + b"\0" + content.encode() + b"\0")
    return digest.hexdigest()


def resolve_media_path(path_text: str, media_root: str | os.PathLike | None, where: str) -> Path:
    """The file ``path_text`` names under ``media_root``, refusing anything that resolves outside it."""
    if media_root is None:
        raise RowRejected(MEDIA_MISSING, f"{where}: {path_text!r} is a path, and no media root was given (--media-root)")
    if os.path.isabs(path_text):
        raise RowRejected(MEDIA_OUTSIDE_ROOT, f"{where}: {path_text!r} is absolute; media paths are relative to the media root")
    root = Path(media_root).resolve()
    try:
        full = (root / path_text).resolve()  # follows symlinks, so a link pointing out is caught here
        if not full.is_relative_to(root):
            raise RowRejected(MEDIA_OUTSIDE_ROOT, f"{where}: {path_text!r} resolves outside the media root")
        if full.is_file():
            return full
    except (OSError, ValueError, RuntimeError) as error:  # a NUL byte, a name too long, a symlink loop
        raise RowRejected(MEDIA_MISSING, f"{where}: {path_text[:200]!r} cannot be opened ({error})") from None
    raise RowRejected(MEDIA_MISSING, f"{where}: {path_text!r} is not a file under the media root")


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:  # unreadable (permissions) or gone since it was resolved
        raise RowRejected(MEDIA_MISSING, f"{where}: {path.name!r} cannot be read ({error.strerror})") from None


def media_bytes(value: Any, media_root: str | os.PathLike | None, where: str) -> tuple[bytes, str | None]:
    """``(bytes, source path or None)`` of one media value in any of the accepted forms."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # a Hugging Face Image()/Audio() struct
        if value.get("bytes") is not None:
            return media_bytes(value["bytes"], media_root, where)[0], value.get("path")
        if value.get("path") is not None:
            return media_bytes(value["path"], media_root, where)
        raise RowRejected(MEDIA_MISSING, f"{where}: the media struct has neither bytes nor path")
    if isinstance(value, str):
        if value.startswith("data:"):
            _, _, payload = value.partition(";base64,")
            try:
                return base64.b64decode(payload, validate=True), None
            except (binascii.Error, ValueError) as error:
                raise RowRejected(MEDIA_UNDECODABLE, f"{where}: invalid base64 data URI ({error})") from None
        return _read(resolve_media_path(value, media_root, where), where), value
    if _is_pil_image(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue(), None
    raise RowRejected(WRONG_TYPE, f"{where}: a media item must be a path, bytes, base64 data URI, {{bytes, path}} or PIL image, got {type(value).__name__}")


def _is_pil_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(value, Image.Image)


def load_media(media_type: str, value: Any, media_root: str | os.PathLike | None, where: str) -> tuple[MediaBlob, str | None]:
    """Read, decode-check and digest one media item; ``RowRejected`` with its reason when it cannot be used."""
    data, path = media_bytes(value, media_root, where)
    sha256 = hashlib.sha256(data).hexdigest()
    key = (media_type, sha256)
    if key not in _decoded:  # an item many rows share is decoded once per process
        try:
            sampling_rate = DECODE_CHECKS[media_type](data)
        except Exception as error:  # noqa: BLE001  (each decoder raises its own family of errors)
            raise RowRejected(MEDIA_UNDECODABLE, f"{where}: not a decodable {media_type} ({type(error).__name__}: {error})") from None
        if len(_decoded) >= _DECODED_LIMIT:
            _decoded.clear()
        _decoded[key] = sampling_rate
    return MediaBlob(media_type, sha256, data, _decoded[key]), path


# (media type, sha256) -> sampling rate of items that decoded; bounded, it only saves repeated work.
_decoded: dict[tuple[str, str], int | None] = {}
_DECODED_LIMIT = 1 << 16


def _check_image(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes the pixels: a truncated file fails here, not at training time


def _check_audio(data: bytes) -> int:
    import soundfile

    return int(soundfile.info(io.BytesIO(data)).samplerate)


def _check_video(data: bytes) -> None:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        next(container.decode(video=0))  # one frame decodes: the codec and stream are usable


DECODE_CHECKS = {"image": _check_image, "audio": _check_audio, "video": _check_video}


@dataclass(frozen=True, slots=True)
class MediaProbe:
    """What one media item measures; ``error`` says why it does not decode (then nothing else is set)."""

    width: int | None = None  # image, video: px
    height: int | None = None
    seconds: float | None = None  # audio, video: duration
    sampling_rate: int | None = None  # audio: Hz
    frames: int | None = None  # video
    error: str | None = None

    @property
    def decodable(self) -> bool:
        return self.error is None


def probe_media(media_type: str, data: bytes) -> MediaProbe:
    """Measure one media item (``MediaBlob.data``) of ``media_type`` as cheaply as its format allows.

    Decodable means what it means at materialisation: an image's pixels load, audio opens with
    soundfile, a video's first frame decodes. Bad bytes give a probe with ``error``, never an exception.
    """
    probe = PROBES[media_type]  # an unknown media type is a caller's bug: raise
    try:
        return probe(data)
    except Exception as error:  # noqa: BLE001  (each decoder raises its own family of errors)
        return MediaProbe(error=f"{type(error).__name__}: {error}")


def _probe_image(data: bytes) -> MediaProbe:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size  # from the header
        image.load()
    return MediaProbe(width=width, height=height)


def _probe_audio(data: bytes) -> MediaProbe:
    import soundfile

    info = soundfile.info(io.BytesIO(data))  # the header; frames are clamped to the data a cut file holds
    return MediaProbe(seconds=info.frames / info.samplerate, sampling_rate=int(info.samplerate))


def _probe_video(data: bytes) -> MediaProbe:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        frames = container.decode(video=0)
        first = next(frames, None)
        if first is None:
            raise ValueError("no frame decodes")
        count = stream.frames or (1 + sum(1 for _ in frames))  # WebM records no frame count: decode to count
        if stream.duration and stream.time_base:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration:
            seconds = container.duration / av.time_base
        else:
            seconds = count / float(stream.average_rate) if stream.average_rate else None
        return MediaProbe(width=first.width, height=first.height, seconds=seconds, frames=count)


PROBES = {"image": _probe_image, "audio": _probe_audio, "video": _probe_video}


def resolve_sample_media(
    sample: dict[str, Any], media: tuple[str, ...], media_root: str | os.PathLike | None, blobs: dict[str, MediaBlob]
) -> dict[str, Any]:
    """Replace the media values a formatted sample carries (``sample["media"]``: type -> values, in
    placeholder order) by ``{sha256, path}`` references in its media columns; the bytes go to ``blobs``
    (sha256 -> blob, so an image used by many rows is held once). Every placeholder of a media type the
    dataset carries must have exactly one item."""
    values = sample.pop("media", None) or {}
    for media_type in MEDIA_PART_TYPES:
        items = values.get(media_type, [])
        if media_type not in media:
            if items:
                raise RowRejected(MEDIA_COUNT_MISMATCH, f"{len(items)} {media_type} item(s), and this dataset carries no {media_type} media")
            continue
        placeholders = sample.pop(f"_{media_type}_placeholders", len(items))
        if placeholders != len(items):
            raise RowRejected(MEDIA_COUNT_MISMATCH, f"{placeholders} {media_type} placeholder(s) but {len(items)} {media_type} item(s)")
        references = []
        for index, value in enumerate(items):
            blob, path = load_media(media_type, value, media_root, f"{MEDIA_COLUMNS[media_type]}[{index}]")
            blobs.setdefault(blob.sha256, blob)
            references.append({"sha256": blob.sha256, "path": path})
        sample[MEDIA_COLUMNS[media_type]] = references
    return sample


def _media_code_version() -> str:
    """Digest of this module's source: how media are read and checked decides a media dataset's bytes."""
    import inspect
    import sys

    return hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()[:16]


MEDIA_CODE_VERSION = _media_code_version()
