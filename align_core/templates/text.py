"""Built-in templates for public text datasets, each shaped like the real dataset's rows.

Shared formatting logic lives in methods of two base classes (``ResponsePair`` for a prompt with
numbered responses, ``ChatTemplate`` for rows carrying whole conversations) rather than in free
functions: a template's ``code_version`` digests the source of its class and its bases, so a change
to the shared logic invalidates exactly the datasets built with it.
"""

from __future__ import annotations

import re
from typing import Any

from align_core.errors import (
    BAD_ROLES,
    INVALID_PREFERENCE,
    MISSING_FIELD,
    UNSPLITTABLE_TRANSCRIPT,
    WRONG_TYPE,
    RowRejected,
    UsageError,
)
from align_core.shards.conversation import (
    Conversation,
    FixedTurns,
    conversation_text,
    normalize_conversation,
    text_message,
)
from align_core.shards.schema import MEDIA_COLUMNS, Kind
from align_core.templates.base import (
    FormattedBatch,
    Template,
    attach_media,
    bool_field,
    field,
    int_field,
    list_field,
    number_field,
    optional_text_field,
    require_last_role,
    require_nonempty_text,
    text_field,
)
from align_core.templates.registry import register_template


@register_template("Alpaca")
class Alpaca(Template):
    """tatsu-lab/alpaca and its clones: ``instruction``, optional ``input``, ``output``."""

    def _prompt(self, raw: dict) -> list:
        instruction = text_field(raw, "instruction")
        extra_input = optional_text_field(raw, "input")
        text = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
        return [text_message("user", text)]

    def format_supervised_sample(self, raw: dict):
        return [*self._prompt(raw), text_message("assistant", text_field(raw, "output"))], None

    def format_prompt_only_sample(self, raw: dict):
        return self._prompt(raw), None

    def _prompt_texts(self, rows: list[dict], also: str | None = None) -> tuple[list[int], list[str], list[str]]:
        """``(positions, prompts, also_texts)`` of the rows ``_prompt`` (and ``text_field(also)``) accept:
        the row methods' checks, in one loop over the rows."""
        positions, prompts, others = [], [], []
        for position, raw in enumerate(rows):
            instruction, extra_input = raw.get("instruction"), raw.get("input")
            other = raw.get(also) if also else "-"
            if not (
                type(instruction) is str
                and instruction.strip()
                and (extra_input is None or type(extra_input) is str)
                and type(other) is str
                and other.strip()
            ):
                continue  # the row method gives the reason
            positions.append(position)
            prompts.append(f"{instruction}\n\n{extra_input}" if extra_input and extra_input.strip() else instruction)
            others.append(other)
        return positions, prompts, others

    def format_supervised_batch(self, rows: list[dict]) -> FormattedBatch:
        positions, prompts, outputs = self._prompt_texts(rows, also="output")
        messages = FixedTurns(("user", "assistant"), (prompts, outputs))
        return FormattedBatch(positions, {"messages": messages}, [None] * len(positions))

    def format_prompt_only_batch(self, rows: list[dict]) -> FormattedBatch:
        positions, prompts, _ = self._prompt_texts(rows)
        return FormattedBatch(positions, {"prompt": FixedTurns(("user",), (prompts,))}, [None] * len(positions))


class ResponsePair(Template):
    """Rows with one prompt and two numbered responses ``response_<id>``, one chosen by an id field."""

    def _choose(self, raw: dict, id_field: str, response_ids: tuple[int, int]) -> tuple[int, int]:
        """``(chosen_id, rejected_id)`` from ``raw[id_field]``, which must be one of ``response_ids``."""
        chosen_id = int_field(raw, id_field)
        if chosen_id not in response_ids:
            raise RowRejected(
                INVALID_PREFERENCE, f"field {id_field!r} must be one of {list(response_ids)}, got {chosen_id}"
            )
        rejected_id = response_ids[1] if chosen_id == response_ids[0] else response_ids[0]
        return chosen_id, rejected_id

    def _single_turn_pair(self, raw: dict, prompt: str, chosen_id: int, rejected_id: int):
        """``(prompt, chosen, rejected)`` conversations: the user's prompt and one assistant answer each."""
        return (
            [text_message("user", prompt)],
            [text_message("assistant", text_field(raw, f"response_{chosen_id}"))],
            [text_message("assistant", text_field(raw, f"response_{rejected_id}"))],
        )

    @staticmethod
    def _present(raw: dict, names: list[str]) -> dict[str, Any]:
        """The non-null ``raw`` fields among ``names``: annotations some releases of a dataset lack."""
        return {name: raw[name] for name in names if raw.get(name) is not None}


@register_template("AA_T2T")
class AA_T2T(ResponsePair):
    """PKU-Alignment/align-anything text-to-text.

    Supervised rows carry ``prompt`` and ``response``. The preference release carries ``question``,
    ``response_1``, ``response_2`` and ``overall_response`` (1 or 2, the better one) plus per-response
    fine-grained ratings (``safety_rate_1`` ...), which go to meta.
    """

    batch_kinds = (Kind.SUPERVISED, Kind.PROMPT_ONLY, Kind.PREFERENCE)

    RATINGS = (
        "prompt_following_rate",
        "objective_rules_rate",
        "clarity_rate",
        "information_richness_rate",
        "safety_rate",
    )

    def _prompt_text(self, raw: dict) -> str:
        # Supervised rows name the prompt "prompt", preference rows "question".
        return text_field(raw, "prompt" if raw.get("prompt") is not None else "question")

    def format_supervised_sample(self, raw: dict):
        prompt = text_message("user", self._prompt_text(raw))
        return [prompt, text_message("assistant", text_field(raw, "response"))], None

    def format_prompt_only_sample(self, raw: dict):
        return [text_message("user", self._prompt_text(raw))], None

    def format_preference_sample(self, raw: dict):
        chosen_id, rejected_id = self._choose(raw, "overall_response", (1, 2))
        conversations = self._single_turn_pair(raw, self._prompt_text(raw), chosen_id, rejected_id)
        ratings = [f"{rating}_{k}" for rating in self.RATINGS for k in (1, 2)]
        meta = {"chosen_response_id": chosen_id, **{name: int_field(raw, name) for name in self._present(raw, ratings)}}
        return *conversations, meta


@register_template("PKUSafeRLHF")
class PKUSafeRLHF(ResponsePair):
    """PKU-Alignment/PKU-SafeRLHF: ``prompt``, ``response_0``/``response_1`` and two preferences.

    Option ``preference``: ``"better"`` (default) picks the chosen response by ``better_response_id``
    (helpfulness), ``"safer"`` by ``safer_response_id`` (harmlessness). Meta keeps both ids, the
    criterion used, and the safety labels a safe-RLHF cost model trains on, per response and relative
    to the chosen/rejected pair; severity levels, harm categories and sources when the release has them.
    """

    batch_kinds = (Kind.PREFERENCE, Kind.PROMPT_ONLY)

    options = {"preference": "better"}
    CRITERIA = {"better": "better_response_id", "safer": "safer_response_id"}
    ANNOTATIONS = [
        f"response_{k}_{label}" for k in (0, 1) for label in ("severity_level", "harm_category", "source", "sha256")
    ] + ["prompt_source"]

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.settings["preference"] not in self.CRITERIA:
            raise UsageError(
                f"template 'PKUSafeRLHF': option preference={self.settings['preference']!r}; "
                f"expected one of {sorted(self.CRITERIA)}"
            )

    def format_preference_sample(self, raw: dict):
        criterion = self.CRITERIA[self.settings["preference"]]
        chosen_id, rejected_id = self._choose(raw, criterion, (0, 1))
        conversations = self._single_turn_pair(raw, text_field(raw, "prompt"), chosen_id, rejected_id)
        # The other criterion's id is kept too, so a trainer sees where helpfulness and safety disagree.
        ids = {name: self._choose(raw, name, (0, 1))[0] for name in self._present(raw, list(self.CRITERIA.values()))}
        meta = {"chosen_by": criterion, "chosen_response_id": chosen_id, **ids, **self._annotations(raw)}
        safe_labels = self._present(raw, ["is_response_0_safe", "is_response_1_safe"])
        if len(safe_labels) == 2:
            is_safe = [bool_field(raw, "is_response_0_safe"), bool_field(raw, "is_response_1_safe")]
            meta.update(is_response_0_safe=is_safe[0], is_response_1_safe=is_safe[1])
            meta.update(is_chosen_safe=is_safe[chosen_id], is_rejected_safe=is_safe[rejected_id])
        return *conversations, meta

    def _annotations(self, raw: dict) -> dict[str, Any]:
        annotations = self._present(raw, self.ANNOTATIONS)
        for name, value in annotations.items():
            if name.endswith("severity_level"):
                annotations[name] = int_field(raw, name)
            elif name.endswith("harm_category") and not isinstance(value, dict):
                raise RowRejected(WRONG_TYPE, f"field {name!r} must be a mapping of category to bool, got {value!r}")
        return annotations

    def format_prompt_only_sample(self, raw: dict):
        return [text_message("user", text_field(raw, "prompt"))], None


@register_template("GSM8K")
class GSM8K(Template):
    """openai/gsm8k: ``question`` and ``answer``, whose last line ``#### 42`` is the final answer.

    The assistant learns the whole worked answer; meta ``final_answer`` (the number after ``####``,
    thousands separators removed) is what a GRPO-style reward compares a generation against.
    """

    batch_kinds = (Kind.SUPERVISED, Kind.PROMPT_ONLY)

    FINAL_ANSWER = re.compile(r"####\s*(.*?)\s*$", re.DOTALL)
    NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)")

    def _final_answer(self, raw: dict) -> str:
        match = self.FINAL_ANSWER.search(text_field(raw, "answer"))
        if match is None:
            raise RowRejected(MISSING_FIELD, "field 'answer' has no final '#### <number>' line")
        final = match.group(1).replace(",", "")
        if not self.NUMBER.fullmatch(final):
            raise RowRejected(WRONG_TYPE, f"field 'answer': the final answer after '####' is {final!r}, not a number")
        return final

    def format_supervised_sample(self, raw: dict):
        final = self._final_answer(raw)
        messages = [text_message("user", text_field(raw, "question")), text_message("assistant", raw["answer"])]
        return messages, {"final_answer": final}

    def format_prompt_only_sample(self, raw: dict):
        return [text_message("user", text_field(raw, "question"))], {"final_answer": self._final_answer(raw)}


class ChatTemplate(Template):
    """Rows carrying whole conversations; every conversation here has an optional leading system
    message, then user and assistant turns alternating from the user."""

    def _conversation(self, messages: Any, column: str) -> Conversation:
        """Normalised ``messages`` with non-empty text and turns in order; errors name ``column``."""
        conversation = normalize_conversation(messages, column)
        require_nonempty_text(conversation, column)
        expected = "user"
        for index, message in enumerate(conversation):
            if index == 0 and message["role"] == "system":
                continue
            if message["role"] != expected:
                role = message["role"]
                raise RowRejected(BAD_ROLES, f"{column}[{index}] is a {role!r} turn where a {expected!r} turn belongs")
            expected = "assistant" if expected == "user" else "user"
        return conversation

    def _supervised(self, conversation: Conversation, column: str) -> Conversation:
        require_last_role(conversation, "assistant", column)
        return conversation

    def _until_last_user(self, conversation: Conversation, column: str) -> Conversation:
        """The conversation up to its last user turn: the prompt a policy answers."""
        users = [index for index, message in enumerate(conversation) if message["role"] == "user"]
        if not users:
            raise RowRejected(BAD_ROLES, f"{column} has no user turn")
        return conversation[: users[-1] + 1]

    def _split_final_answers(self, chosen: Conversation, rejected: Conversation):
        """``(prompt, chosen answer, rejected answer)`` from two conversations that differ in the last turn."""
        require_last_role(chosen, "assistant", "chosen")
        require_last_role(rejected, "assistant", "rejected")
        if conversation_text(chosen[:-1]) != conversation_text(rejected[:-1]):
            detail = "chosen and rejected differ before their final assistant turns: no shared prompt"
            raise RowRejected(UNSPLITTABLE_TRANSCRIPT, detail)
        return chosen[:-1], chosen[-1:], rejected[-1:]


@register_template("HH-RLHF")
class HHRLHF(ChatTemplate):
    """Anthropic/hh-rlhf: ``chosen`` and ``rejected`` are whole transcripts
    ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` that share all but the final assistant answer."""

    batch_kinds = (Kind.PREFERENCE, Kind.SUPERVISED, Kind.PROMPT_ONLY)

    SPEAKERS = {"Human": "user", "Assistant": "assistant"}
    TURN_MARKER = re.compile(r"(?:\A|\n\n)(Human|Assistant):")

    def _transcript(self, raw: dict, name: str) -> Conversation:
        pieces = self.TURN_MARKER.split(text_field(raw, name))
        preamble, speakers, texts = pieces[0], pieces[1::2], pieces[2::2]
        if preamble.strip() or "Assistant" not in speakers:
            raise RowRejected(
                UNSPLITTABLE_TRANSCRIPT,
                f"field {name!r} must be '\\n\\nHuman: ...\\n\\nAssistant: ...' turns with at least one Assistant turn",
            )
        messages = [{"role": self.SPEAKERS[speaker], "content": text.strip()} for speaker, text in zip(speakers, texts)]
        return self._conversation(messages, name)

    def format_preference_sample(self, raw: dict):
        return *self._split_final_answers(self._transcript(raw, "chosen"), self._transcript(raw, "rejected")), None

    def format_supervised_sample(self, raw: dict):
        return self._supervised(self._transcript(raw, "chosen"), "chosen"), None

    def format_prompt_only_sample(self, raw: dict):
        return self._until_last_user(self._transcript(raw, "chosen"), "chosen"), None


@register_template("UltraFeedback")
class UltraFeedback(ChatTemplate):
    """HuggingFaceH4/ultrafeedback_binarized: ``prompt``, ``prompt_id``, ``chosen``/``rejected`` message
    lists ending with the assistant's answer, ``score_chosen``/``score_rejected`` (kept in meta)."""

    batch_kinds = (Kind.PREFERENCE, Kind.SUPERVISED, Kind.PROMPT_ONLY)

    def _list(self, raw: dict, name: str) -> Conversation:
        return self._conversation(list_field(raw, name), name)

    @staticmethod
    def _meta(raw: dict) -> dict[str, Any]:
        prompt_id = optional_text_field(raw, "prompt_id")
        return {"prompt_id": prompt_id} if prompt_id else {}

    def format_preference_sample(self, raw: dict):
        prompt, chosen, rejected = self._split_final_answers(self._list(raw, "chosen"), self._list(raw, "rejected"))
        meta = self._meta(raw)
        for name in ("score_chosen", "score_rejected"):
            meta[name] = number_field(raw, name)
        return prompt, chosen, rejected, meta

    def format_supervised_sample(self, raw: dict):
        return self._supervised(self._list(raw, "chosen"), "chosen"), self._meta(raw)

    def format_prompt_only_sample(self, raw: dict):
        # The prompt text, not the message lists: the generation splits (train_gen) carry it too.
        return [text_message("user", text_field(raw, "prompt"))], self._meta(raw)


@register_template("ShareGPT")
class ShareGPT(ChatTemplate):
    """ShareGPT dumps: ``conversations`` = ``[{"from": "system"|"human"|"gpt", "value": str}, ...]``."""

    batch_kinds = (Kind.SUPERVISED, Kind.PROMPT_ONLY)

    ROLES = {"system": "system", "human": "user", "gpt": "assistant"}

    def _turns(self, raw: dict) -> Conversation:
        messages = []
        for index, turn in enumerate(list_field(raw, "conversations")):
            if not isinstance(turn, dict):
                kind = type(turn).__name__
                raise RowRejected(WRONG_TYPE, f"conversations[{index}] must be a {{from, value}} dict, got {kind}")
            where = f"conversations[{index}]: "
            speaker = field(turn, "from", where=where)
            if not isinstance(speaker, str):  # before the lookup: an unhashable value would raise TypeError
                raise RowRejected(WRONG_TYPE, f"{where}field 'from' must be a string, got {type(speaker).__name__}")
            if speaker not in self.ROLES:
                expected = list(self.ROLES)
                raise RowRejected(BAD_ROLES, f"conversations[{index}].from is {speaker[:60]!r}; expected one of {expected}")
            messages.append({"role": self.ROLES[speaker], "content": text_field(turn, "value", where=where)})
        return self._conversation(messages, "conversations")

    def format_supervised_sample(self, raw: dict):
        return self._supervised(self._turns(raw), "conversations"), None

    def format_prompt_only_sample(self, raw: dict):
        return self._until_last_user(self._turns(raw), "conversations"), None


@register_template("Messages")
class Messages(ChatTemplate):
    """OpenAI-style ``messages`` = ``[{"role", "content"}]``, content a string or a list of parts.

    Preference rows follow TRL: ``chosen``/``rejected`` message lists, either whole conversations
    sharing an implicit prompt, or the continuations of an explicit ``prompt`` message list.

    Option ``media`` (``image``, ``image,audio`` ...) makes the dataset carry those media: parts
    ``{"type": "image", "image": value}`` carry their own item, or bare ``{"type": "image"}`` parts of
    ``messages``/``prompt`` take the row's ``images``/``audios``/``videos`` list in order (TRL's vision rows).
    """

    batch_kinds = (Kind.SUPERVISED, Kind.PROMPT_ONLY, Kind.PREFERENCE, Kind.UNPAIRED_PREFERENCE)

    options = {"media": ""}

    def media_types(self) -> tuple[str, ...]:
        if "_media_types" not in self.__dict__:  # asked per row: parse the option once
            wanted = {name.strip() for name in str(self.settings["media"] or "").split(",") if name.strip()}
            unknown = sorted(wanted - set(MEDIA_COLUMNS))
            if unknown:
                raise UsageError(f"template {self.name!r}: option media names {unknown}; expected some of {list(MEDIA_COLUMNS)}")
            self._media_types = tuple(media_type for media_type in MEDIA_COLUMNS if media_type in wanted)
        return self._media_types

    def _messages(self, raw: dict, name: str) -> list:
        """The message list ``name``, its bare media placeholders given the row's media lists."""
        messages = list_field(raw, name)
        for media_type in self.media_types():
            if raw.get(MEDIA_COLUMNS[media_type]) is not None:
                messages = attach_media(messages, media_type, list_field(raw, MEDIA_COLUMNS[media_type]), name)
        return messages

    def format_supervised_sample(self, raw: dict):
        return self._supervised(self._conversation(self._messages(raw, "messages"), "messages"), "messages"), None

    def format_prompt_only_sample(self, raw: dict):
        name = "messages" if raw.get("messages") is not None else "prompt"
        return self._until_last_user(self._conversation(self._messages(raw, name), name), name), None

    def format_preference_sample(self, raw: dict):
        chosen, rejected = list_field(raw, "chosen"), list_field(raw, "rejected")
        if raw.get("prompt") is None:
            whole = self._conversation(chosen, "chosen"), self._conversation(rejected, "rejected")
            return *self._split_final_answers(*whole), None
        prompt = self._messages(raw, "prompt")
        # Checked as whole conversations so turn order holds across the prompt/continuation boundary.
        whole_chosen = self._supervised(self._conversation(prompt + chosen, "prompt+chosen"), "chosen")
        whole_rejected = self._supervised(self._conversation(prompt + rejected, "prompt+rejected"), "rejected")
        require_last_role(whole_chosen[: len(prompt)], "user", "prompt")
        return whole_chosen[: len(prompt)], whole_chosen[len(prompt) :], whole_rejected[len(prompt) :], None

    def format_unpaired_preference_sample(self, raw: dict):
        """TRL's unpaired preference rows (KTO): ``prompt`` and ``completion`` message lists, ``label`` bool."""
        prompt, completion = self._messages(raw, "prompt"), list_field(raw, "completion")
        whole = self._supervised(self._conversation(prompt + completion, "prompt+completion"), "completion")
        require_last_role(whole[: len(prompt)], "user", "prompt")
        return whole[: len(prompt)], whole[len(prompt) :], bool_field(raw, "label"), None
