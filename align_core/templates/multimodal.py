"""Built-in templates for public image/audio/video-to-text datasets, and align-anything's ``BaseFormatter``.

A media item enters a conversation as a part carrying its value, ``{"type": "image", "image": value}``
(Hugging Face's chat format); the materialiser reads the value (a path under ``--media-root``, bytes,
base64, an ``Image()`` struct or a PIL image), stores its bytes once per dataset and leaves a
placeholder in the text. So each template here only says where in the row the media sit.
"""

from __future__ import annotations

import inspect
import io
from typing import Any, ClassVar

from align_core.shards.conversation import Conversation, normalize_conversation
from align_core.shards.schema import MEDIA_PART_TYPES, TEXT_PART, Kind, parse_kind
from align_core.templates.base import FORMAT_METHODS, attach_media, field, text_field
from align_core.templates.registry import register_template
from align_core.templates.text import AA_T2T, ChatTemplate, ShareGPT


def media_part(media_type: str, value: Any) -> dict[str, Any]:
    return {"type": media_type, media_type: value}


def with_leading_media(conversation: Conversation, media_type: str, values: list) -> Conversation:
    """``conversation`` with ``values`` as media parts opening its first user turn (align-anything and
    LLaVA put the image before the question)."""
    first_user = next(index for index, message in enumerate(conversation) if message["role"] == "user")
    message = conversation[first_user]
    content = [media_part(media_type, value) for value in values] + list(message["content"])
    return [*conversation[:first_user], {**message, "content": content}, *conversation[first_user + 1 :]]


def media_values(raw: dict, name: str) -> list:
    """The media item(s) of field ``name``: one value, or a list of them (several images per row)."""
    value = field(raw, name)
    return list(value) if isinstance(value, list) else [value]


class MediaResponsePair(AA_T2T):
    """align-anything's ``AA_T?2T`` datasets: AA_T2T's rows plus one media field, shown before the prompt."""

    media_field: ClassVar[str] = ""

    def _with_media(self, raw: dict, conversation: Conversation) -> Conversation:
        return with_leading_media(conversation, self.media[0], media_values(raw, self.media_field))

    def format_supervised_sample(self, raw: dict):
        messages, meta = super().format_supervised_sample(raw)
        return self._with_media(raw, messages), meta

    def format_prompt_only_sample(self, raw: dict):
        prompt, meta = super().format_prompt_only_sample(raw)
        return self._with_media(raw, prompt), meta

    def format_preference_sample(self, raw: dict):
        prompt, chosen, rejected, meta = super().format_preference_sample(raw)
        return self._with_media(raw, prompt), chosen, rejected, meta


@register_template("AA_TI2T")
class AA_TI2T(MediaResponsePair):
    """PKU-Alignment/align-anything text-image-to-text: preference ``question``, ``image``, ``response_1``,
    ``response_2``, ``overall_response`` (+ ratings to meta); supervised ``prompt``, ``image``, ``response``."""

    media = ("image",)
    media_field = "image"


@register_template("AA_TA2T")
class AA_TA2T(MediaResponsePair):
    """align-anything text-audio-to-text: ``prompt``, ``audio_path``, ``response_1/2``, ``overall_response``."""

    media = ("audio",)
    media_field = "audio_path"


@register_template("AA_TV2T")
class AA_TV2T(MediaResponsePair):
    """align-anything text-video-to-text: ``prompt``, ``video_path``, ``response_1/2``, ``overall_response``."""

    media = ("video",)
    media_field = "video_path"


@register_template("RLAIF-V")
class RLAIFV(AA_T2T):
    """openbmb/RLAIF-V-Dataset: ``question``, ``image`` (an ``Image()`` struct), ``chosen``, ``rejected``;
    ``ds_name``, ``origin_dataset``, ``origin_split``, ``idx`` go to meta."""

    media = ("image",)
    META_FIELDS = ("ds_name", "origin_dataset", "origin_split", "idx")

    def _prompt(self, raw: dict) -> Conversation:
        prompt = [{"role": "user", "content": [{"type": TEXT_PART, "text": text_field(raw, "question")}]}]
        return with_leading_media(prompt, "image", media_values(raw, "image"))

    def format_preference_sample(self, raw: dict):
        chosen = [{"role": "assistant", "content": text_field(raw, "chosen")}]
        rejected = [{"role": "assistant", "content": text_field(raw, "rejected")}]
        return self._prompt(raw), chosen, rejected, self._present(raw, list(self.META_FIELDS)) or None

    def format_supervised_sample(self, raw: dict):
        answer = {"role": "assistant", "content": text_field(raw, "chosen")}
        return [*self._prompt(raw), answer], self._present(raw, list(self.META_FIELDS)) or None

    def format_prompt_only_sample(self, raw: dict):
        return self._prompt(raw), self._present(raw, list(self.META_FIELDS)) or None


@register_template("LLaVA-Instruct")
class LLaVAInstruct(ShareGPT):
    """liuhaotian/LLaVA-Instruct-150K (and the v1.5 mix): ``image`` (a path under the media root; absent
    for text-only rows) and ShareGPT ``conversations`` whose human turns mark the image with ``<image>``.
    Each marker becomes an image part at its place; markers and images must match one to one."""

    media = ("image",)
    MARKER = "<image>"

    def _turns(self, raw: dict) -> Conversation:
        conversation = [{**message, "content": self._split_markers(message["content"])} for message in super()._turns(raw)]
        images = media_values(raw, "image") if raw.get("image") is not None else []
        return attach_media(conversation, "image", images, "conversations")

    def _split_markers(self, content: list[dict]) -> list[dict]:
        parts = []
        for part in content:
            pieces = part["text"].split(self.MARKER) if part["type"] == TEXT_PART else [None]
            for index, piece in enumerate(pieces):
                if index:
                    parts.append({"type": "image"})
                if piece is None:
                    parts.append(part)
                elif piece.strip():
                    parts.append({"type": TEXT_PART, "text": piece.strip("\n")})
        return parts


# align-anything compatibility: its custom dataset templates subclass BaseFormatter and return whole
# conversations, with the media in ``meta`` under these keys.
META_MEDIA_KEYS = {"image": "image", "images": "image", "audio_path": "audio", "audio": "audio", "video_path": "video", "video": "video"}


class BaseFormatter(ChatTemplate):
    """align-anything's template interface, accepted unchanged:

    - ``format_supervised_sample(raw) -> (conversation, meta)``
    - ``format_preference_sample(raw) -> (better_conversation, worse_conversation, meta)``: whole
      conversations sharing all but the final assistant turn
    - ``format_prompt_only_sample(raw) -> (prompt_conversation, meta)``

    Media placeholders ``{"type": "image"}`` in the conversation are filled, in order, from ``meta``'s
    ``image``/``images`` (PIL images), ``audio_path`` and ``video_path``; the rest of ``meta`` is kept.
    Image structs in the row reach the template as PIL images, as with a Hugging Face dataset; an image
    handed back unchanged is stored with its original bytes, any other as PNG. The media types come
    from option ``media`` (``image,audio``) or, by default, from the meta keys the class's source names.
    """

    options = {"media": ""}

    def media_types(self) -> tuple[str, ...]:
        if "_media_types" not in self.__dict__:  # asked per row: read the option or the source once
            if self.settings["media"]:
                wanted = {name.strip() for name in str(self.settings["media"]).split(",")}
            else:
                source = _class_source(type(self))
                wanted = {kind for key, kind in META_MEDIA_KEYS.items() if f"'{key}'" in source or f'"{key}"' in source}
            self._media_types = tuple(media_type for media_type in MEDIA_PART_TYPES if media_type in wanted) or ("image",)
        return self._media_types

    def format(self, kind: Kind | str, raw: dict) -> dict[str, Any]:
        kind = parse_kind(kind)
        originals: dict[int, Any] = {}
        raw = {key: _as_pil(value, originals) for key, value in raw.items()}
        method = getattr(self, FORMAT_METHODS[kind], None)
        if method is None:
            return super().format(kind, raw)  # the usual "cannot produce" error
        *conversations, meta = method(raw)
        meta = dict(meta or {})
        media = {key: meta.pop(key) for key in list(meta) if key in META_MEDIA_KEYS and meta[key] is not None}
        if kind is Kind.PREFERENCE:
            whole = [self._conversation(conversation, column) for conversation, column in zip(conversations, ("chosen", "rejected"))]
            conversations = list(self._split_final_answers(*whole))
        values = self._attach_meta_media(conversations, media, originals)
        return self.sample(kind, values, meta or None)

    def _attach_meta_media(self, conversations: list, media: dict[str, Any], originals: dict[int, Any]) -> list:
        """The media from ``meta`` attached to the placeholders of the first conversation (the prompt)."""
        first = normalize_conversation(conversations[0], "conversation")
        for key, value in media.items():
            items = value if isinstance(value, list) else [value]
            first = attach_media(first, META_MEDIA_KEYS[key], [originals.get(id(item), item) for item in items], f"meta[{key!r}]")
        return [first, *conversations[1:]]


def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


def _as_pil(value: Any, originals: dict[int, Any]) -> Any:
    """A Hugging Face image struct ``{bytes, path}`` decoded to a PIL image (what align-anything templates
    receive); other values unchanged. The struct is remembered so an image handed back keeps its bytes."""
    if not (isinstance(value, dict) and set(value) == {"bytes", "path"} and value["bytes"] is not None):
        return value
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(value["bytes"]))
    except (UnidentifiedImageError, OSError):
        return value  # not an image (an audio struct): left as the struct
    originals[id(image)] = value
    return image

