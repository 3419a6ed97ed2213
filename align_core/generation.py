"""Sampling completions from a causal LM: over a ``prompt_only`` dataset into a ``supervised`` one, or one
chat turn at a time with streaming.

    prompt_only rows --(ModelFormatter, ConversationEncoder, Collator: left padded + media inputs)-->
        model.generate, seeded per batch --> prompt + assistant turn --> shards + quarantine --> manifest

``generate_dataset`` writes ``OUT_ROOT/<digest>/`` where the digest covers the model (config, weights,
generation defaults; an adapter's base too), the tokenizer and chat formatting, the prompt dataset's
digest, the sampling settings with the seed and the batch size (each batch draws from its own seeded
generator, and its padding is the longest prompt's), and this code's version: the same request is a
cache hit that loads no model, any changed setting a new folder. Rows are prompt-major (a prompt's
``num_generations`` completions side by side; ``source_index`` is the place in that prompts x generations
grid, so ids stay put when a row is quarantined); meta keeps the prompt row's meta, its ``source_id``,
``generation`` and the ``sampling`` settings. What cannot become a supervised sample goes to the
quarantine: a prompt longer than the model's positions leave for the prompt (``dropped_too_long``),
a completion with no text (``empty_text``).

``ChatSession`` keeps a conversation's history, system prompt and media attached to the next turn;
``reply`` streams the answer's text as it is generated (``transformers.TextStreamer``). When the
history outgrows the model, whole early messages are dropped (``truncate_prompt_left``).

No Prefect here: ``alignflow generate`` and ``alignflow chat`` call this module directly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import TextStreamer

import align_core
from align_core.chat import ModelFormatter
from align_core.data.batch import Batch
from align_core.data.collate import Collator
from align_core.data.encode import ConversationEncoder
from align_core.data.media_inputs import MediaProcessor, decode_audio, decode_image
from align_core.data.token_cache import CODE_VERSION as ENCODING_CODE_VERSION
from align_core.data.token_cache import formatting_for, tokenizer_files_digest
from align_core.data.truncation import DROPPED_TOO_LONG, Truncation
from align_core.errors import EMPTY_TEXT, UsageError
from align_core.io import publish_dir, remove_stale_staging, sha256_json, sha256_tree, staging_dir
from align_core.materialize import find_existing
from align_core.models.lora import adapter_base
from align_core.models.registry import load_causal_lm, load_processor, require_local_dir
from align_core.reference.cache import WEIGHT_FILE_PATTERNS
from align_core.shards.conversation import text_message
from align_core.shards.dataset import ShardDataset
from align_core.shards.manifest import FileEntry, Manifest, read_manifest
from align_core.shards.schema import MEDIA_COLUMNS, SCHEMA_VERSION, TEXT_PART, Kind
from align_core.shards.writer import QuarantineWriter, ShardWriter
from align_core.trainers.grpo import completion_tokens_mask

CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes() + ENCODING_CODE_VERSION.encode()).hexdigest()[:16]
TEMPLATE_NAME = "generate"  # the manifest's ``template``: these rows were written by sampling, not formatted
# Files of a model folder that decide its samples, beside its weights; an adapter's base is digested too.
SAMPLING_FILES = (*WEIGHT_FILE_PATTERNS, "generation_config.json", "adapter_config.json")
# What loading a damaged or foreign model folder raises (transformers, tokenizers, safetensors).
UNREADABLE_MODEL = (OSError, ValueError, SafetensorError)


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 filter nothing."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_generations: int = 1
    seed: int = 0
    batch_size: int = 8  # prompts per generate() call

    def checked(self) -> SamplingSettings:
        for name, low in (("max_new_tokens", 1), ("num_generations", 1), ("batch_size", 1), ("top_k", 0)):
            if getattr(self, name) < low:
                raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if self.temperature < 0:
            raise UsageError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and self.num_generations > 1:
            raise UsageError("--temperature 0 (greedy) gives one completion per prompt; leave --num-generations at 1")
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None,
                "max_new_tokens": self.max_new_tokens}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def seeded(seed: int, index: int) -> Iterator[None]:
    """Random draws inside come from a generator seeded by (seed, index); the global RNG is left as it was."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(sha256_json([seed, index])[:15], 16))
        yield


def model_digest(model_dir: str | Path) -> str:
    """sha256 of what decides a model folder's samples: config, weights, generation defaults; for a LoRA
    adapter folder (a LoRA run's export) its adapter files and its base model's digest."""
    folder = require_local_dir(model_dir)
    files = sorted({path for pattern in SAMPLING_FILES for path in folder.glob(pattern) if path.is_file()})
    if not any(path.suffix in (".safetensors", ".bin") for path in files):
        raise UsageError(f"{folder}: no weight files (*.safetensors or *.bin); not a saved model")
    try:
        base = adapter_base(folder)
    except (ValueError, KeyError) as error:
        raise UsageError(f"{folder}: unreadable adapter_config.json ({_first_line(error)})") from None
    digest = sha256_tree(folder, files)
    return digest if base is None else sha256_json([digest, model_digest(base)])


def max_prompt_tokens(model: Any, settings: SamplingSettings) -> int:
    """Tokens a prompt may have so that it and ``max_new_tokens`` fit the model's positions."""
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions is None:
        return 1 << 30
    if settings.max_new_tokens >= positions:
        raise UsageError(f"--max-new-tokens {settings.max_new_tokens} leaves no room for a prompt: "
                         f"the model reads {positions} positions")
    return positions - settings.max_new_tokens


def load_model(model_dir: str | Path, trust_remote_code: bool = False) -> Any:
    """The causal LM in eval mode, on the GPU when there is one; an unreadable folder is a ``UsageError``."""
    try:
        model = load_causal_lm(model_dir, trust_remote_code=trust_remote_code)
    except UNREADABLE_MODEL as error:
        raise UsageError(f"{model_dir}: cannot load the model ({_first_line(error)})") from None
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PromptEncoder:
    """Prompt conversations (shard rows with a ``prompt`` column and their media columns) -> a left-padded
    ``Batch`` for ``generate``, with the model's media inputs; rows longer than ``max_length`` are fitted
    by ``truncation`` (``drop``: left out, ``truncate_prompt_left``: early messages removed)."""

    def __init__(
        self, formatter: ModelFormatter, media: MediaProcessor | None, max_length: int, truncation: Truncation
    ):
        self.encoder = ConversationEncoder(formatter, max_length, truncation, media=media)
        self.collate = Collator(Kind.PROMPT_ONLY, formatter.tokenizer.pad_token_id, media=media)

    def encode(self, rows: list[dict]) -> tuple[Batch | None, list[str]]:
        """The batch of the rows that fit, and their ids (in order); None when none fits."""
        tokenized = self.encoder.encode_rows(Kind.PROMPT_ONLY, rows, Counter())
        if not tokenized:
            return None, []
        items = [{"input_ids": row.sequences[0].input_ids,
                  "media": [ref.key() for ref in (row.media[0] if row.media else ())]} for row in tokenized]
        return self.collate(items), [row.id for row in tokenized]


def sample(
    model: Any, tokenizer: Any, batch: Batch, settings: SamplingSettings, streamer: Any = None
) -> tuple[list[str], int]:
    """Each sequence's completion text (up to its first EOS, special tokens dropped) and the tokens generated."""
    batch = batch.to(model.device)
    output = model.generate(**batch.model_kwargs(), **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, use_cache=True, streamer=streamer)
    completion = output[:, batch.input_ids.shape[1]:]
    mask = completion_tokens_mask(completion, tokenizer.eos_token_id).bool()
    texts = tokenizer.batch_decode(torch.where(mask, completion, tokenizer.pad_token_id), skip_special_tokens=True)
    return texts, int(mask.sum())


# ----- a prompt dataset -> a supervised dataset ----------------------------------------------------------


@dataclass
class GenerateResult:
    path: Path
    manifest: Manifest
    cache_hit: bool
    generated_tokens: int = 0
    seconds: float = 0.0


def prompt_dataset(prompts_dir: str | Path) -> ShardDataset:
    """The prompt dataset, intact and of kind ``prompt_only``."""
    if not Path(prompts_dir).is_dir():
        raise UsageError(f"prompt dataset {prompts_dir} is not a folder")
    dataset = ShardDataset(prompts_dir)
    if dataset.kind is not Kind.PROMPT_ONLY:
        raise UsageError(f"{prompts_dir} is a {dataset.kind.value} dataset; generate reads prompt_only datasets")
    dataset.require_intact()
    return dataset


def generation_digest(model_dir: str | Path, prompts: ShardDataset, formatter: ModelFormatter,
                      media: MediaProcessor | None, settings: SamplingSettings) -> str:
    return sha256_json(
        {
            "code_version": CODE_VERSION,
            "schema_version": SCHEMA_VERSION,
            "model": model_digest(model_dir),
            "tokenizer": tokenizer_files_digest(model_dir),
            "chat_format": formatter.fingerprint,
            "media": media.fingerprint() if media is not None else None,
            "prompts": prompts.digest,
            "sampling": settings.to_dict(),
        }
    )[:32]


def generate_dataset(
    model_dir: str | Path,
    prompts_dir: str | Path,
    out_root: str | Path,
    settings: SamplingSettings,
    trust_remote_code: bool = False,
) -> GenerateResult:
    """Sample ``num_generations`` completions per prompt into ``out_root/<digest>/`` (or find it there)."""
    settings = settings.checked()
    prompts = prompt_dataset(prompts_dir)
    try:
        formatter, media = formatting_for(prompts, model_dir, trust_remote_code)
    except UNREADABLE_MODEL as error:
        raise UsageError(f"{model_dir}: cannot load the tokenizer ({_first_line(error)})") from None
    digest = generation_digest(model_dir, prompts, formatter, media, settings)
    out_root = Path(out_root)
    final = out_root / digest
    existing = find_existing(out_root, digest)
    if existing is not None:
        return GenerateResult(final, existing, cache_hit=True)
    model = load_model(model_dir, trust_remote_code)
    encoder = PromptEncoder(formatter, media, max_prompt_tokens(model, settings), Truncation.DROP)
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_root)
    staging = staging_dir(final)
    started = time.perf_counter()
    try:
        shards = ShardWriter(staging, Kind.SUPERVISED, digest, tuple(prompts.manifest.media))
        quarantine = QuarantineWriter(staging)
        tokens = _write_samples(model, formatter.tokenizer, encoder, prompts, settings, shards, quarantine)
        media_store = _copy_media_store(prompts, staging)
        manifest = _generated_manifest(digest, model_dir, prompts, settings, shards.close(), quarantine, media_store)
        manifest.write(staging)  # last: a folder with a manifest is complete
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    if not publish_dir(staging, final):
        return GenerateResult(final, read_manifest(final), cache_hit=True)
    return GenerateResult(final, manifest, cache_hit=False, generated_tokens=tokens, seconds=seconds)


def _generated_manifest(
    digest: str, model_dir: str | Path, prompts: ShardDataset, settings: SamplingSettings,
    shards: list[FileEntry], quarantine: QuarantineWriter, media_store: FileEntry | None,
) -> Manifest:
    """The manifest of a generated dataset: the prompt dataset is its source, sampling its template."""
    quarantine_entry = quarantine.close()
    return Manifest(
        dataset_digest=digest, kind=Kind.SUPERVISED.value, template=TEMPLATE_NAME, template_code_version=CODE_VERSION,
        template_options={"model": str(Path(model_dir).absolute()), **settings.to_dict()},
        source={"path": str(prompts.path.absolute()), "format": "alignflow-dataset", "sha256": prompts.digest,
                "bytes": sum(path.stat().st_size for path in prompts.shard_paths)},
        source_sha256=prompts.digest, rows=sum(entry.rows for entry in shards), quarantined=quarantine_entry.rows,
        shards=shards, quarantine=quarantine_entry, quarantine_reasons=dict(quarantine.reasons.most_common()),
        media=list(prompts.manifest.media), media_store=media_store,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), alignflow_version=align_core.__version__,
    )


def _prompt_batches(prompts: ShardDataset, size: int) -> Iterator[list[dict]]:
    rows: list[dict] = []
    for record_batch in prompts.iter_batches():
        for row in record_batch.to_pylist():
            rows.append(row)
            if len(rows) == size:
                yield rows
                rows = []
    if rows:
        yield rows


def _write_samples(model, tokenizer, encoder: PromptEncoder, prompts: ShardDataset, settings: SamplingSettings,
                   shards: ShardWriter, quarantine: QuarantineWriter) -> int:
    """Generate batch by batch, each from its own seeded generator; returns the tokens generated."""
    generations, tokens, position = settings.num_generations, 0, 0
    for batch_index, rows in enumerate(_prompt_batches(prompts, settings.batch_size)):
        batch, kept_ids = encoder.encode(rows)
        kept, texts = set(kept_ids), []
        if batch is not None:
            prompt_major = torch.arange(len(kept_ids)).repeat_interleave(generations)
            with seeded(settings.seed, batch_index), torch.no_grad():
                texts, generated = sample(model, tokenizer, batch.select_rows(prompt_major), settings)
            tokens += generated
        completions = iter(texts)
        for row in rows:
            if row["id"] not in kept:
                quarantine.add(position, DROPPED_TOO_LONG, f"prompt {row['id']!r} does not fit the model's positions "
                               f"with {settings.max_new_tokens} new tokens", {"id": row["id"], "prompt": row["prompt"]})
                position += generations
                continue
            for generation in range(generations):
                _add_sample(row, generation, next(completions), position, settings, shards, quarantine)
                position += 1
    return tokens


def _add_sample(row: dict, generation: int, completion: str, position: int, settings: SamplingSettings,
                shards: ShardWriter, quarantine: QuarantineWriter) -> None:
    meta = {**(json.loads(row["meta"]) if row.get("meta") else {}), "source_id": row["id"], "generation": generation,
            "sampling": settings.to_dict()}
    if not completion.strip():
        detail = f"prompt {row['id']!r} generation {generation}: the model generated no text"
        quarantine.add(position, EMPTY_TEXT, detail, {"completion": completion, **meta})
        return
    supervised = {"messages": [*row["prompt"], text_message("assistant", completion)],
                  "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True)}
    supervised.update({column: row[column] for column in MEDIA_COLUMNS.values() if column in row})
    shards.add(position, supervised)


def _copy_media_store(prompts: ShardDataset, staging: Path) -> FileEntry | None:
    """The prompts' media store, as is: the samples reference its items by sha256."""
    entry = prompts.manifest.media_store
    if entry is not None:
        shutil.copyfile(prompts.path / entry.path, staging / entry.path)
    return entry


# ----- chat ----------------------------------------------------------------------------------------------


class StreamCallback(TextStreamer):
    """A ``TextStreamer`` that hands each finished piece of text to ``on_text`` instead of printing it."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


class ChatSession:
    """One conversation with a model: system prompt, history (shard-form messages), media for the next turn.

    ``last_prompt`` is the text the model read for the latest reply (its prompt tokens decoded)."""

    def __init__(self, model: Any, formatter: ModelFormatter, processor: Any, settings: SamplingSettings,
                 system: str | None = None):
        self.model = model
        self.formatter = formatter
        self.tokenizer = formatter.tokenizer
        self.settings = settings.checked()
        self.system = system
        self.media_bytes: dict[str, bytes] = {}
        self.media = MediaProcessor(processor, self.media_bytes.__getitem__) if processor is not None else None
        # a history longer than the model's positions loses its earliest messages, whole
        max_length = max_prompt_tokens(model, settings)
        self.encoder = PromptEncoder(formatter, self.media, max_length, Truncation.TRUNCATE_PROMPT_LEFT)
        self.turns = 0
        self.last_prompt = ""
        self.reset()

    @classmethod
    def load(cls, model_dir: str | Path, settings: SamplingSettings, system: str | None = None,
             trust_remote_code: bool = False) -> ChatSession:
        settings = settings.checked()
        try:
            processor = load_processor(model_dir, trust_remote_code)
            formatter = ModelFormatter.from_pretrained(model_dir, trust_remote_code, processor=processor)
        except UNREADABLE_MODEL as error:
            raise UsageError(f"{model_dir}: cannot load the tokenizer ({_first_line(error)})") from None
        return cls(load_model(model_dir, trust_remote_code), formatter, processor, settings, system)

    def reset(self) -> None:
        """Forget the history and any media waiting for the next turn."""
        self.history: list[dict] = []
        self.history_media: dict[str, list[dict]] = {column: [] for column in MEDIA_COLUMNS.values()}
        self.pending: list[tuple[str, dict]] = []  # (media type, media item) for the next user turn

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self.reset()

    def attach(self, media_type: str, path: str | Path) -> None:
        """Attach a media file to the next user turn; a model that takes no ``media_type`` or an unreadable
        file is a ``UsageError``."""
        if self.media is None:
            raise UsageError(f"this model takes no {media_type} input: it has no processor (a text-only model)")
        if media_type not in self.media.placeholders:
            raise UsageError(f"this model takes no {media_type} (it takes: {', '.join(self.media.placeholders)})")
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
        try:
            decode_image(data) if media_type == "image" else decode_audio(data, self.media.sampling_rate)
        except Exception as error:  # noqa: BLE001  (PIL and soundfile raise their own kinds for a bad file)
            raise UsageError(f"{path} is not a readable {media_type} file ({type(error).__name__})") from None
        sha256 = hashlib.sha256(data).hexdigest()
        self.media_bytes[sha256] = data
        self.pending.append((media_type, {"sha256": sha256, "path": str(path)}))

    def conversation(self, text: str) -> tuple[list[dict], dict[str, list[dict]]]:
        """The messages for a reply to ``text`` (system, history, the user turn with the pending media first)
        and the media items of their placeholders, per media column."""
        parts = [{"type": media_type, "text": None} for media_type, _ in self.pending]
        parts.append({"type": TEXT_PART, "text": text})
        system = [text_message("system", self.system)] if self.system else []
        media = {column: list(items) for column, items in self.history_media.items()}
        for media_type, item in self.pending:
            media[MEDIA_COLUMNS[media_type]].append(item)
        return [*system, *self.history, {"role": "user", "content": parts}], media

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The model's answer to ``text``, streamed to ``on_text`` piece by piece; the exchange joins the history."""
        messages, media = self.conversation(text)
        batch, _ = self.encoder.encode([{"id": f"turn-{self.turns}", "prompt": messages, **media}])
        if batch is None:
            raise UsageError(
                f"the message does not fit the model's positions with {self.settings.max_new_tokens} new tokens"
            )
        self.last_prompt = self.tokenizer.decode(batch.input_ids[0])
        streamer = StreamCallback(self.tokenizer, on_text) if on_text is not None else None
        with seeded(self.settings.seed, self.turns), torch.no_grad():
            (answer,), _ = sample(self.model, self.tokenizer, batch, self.settings, streamer)
        self.history += [messages[-1], text_message("assistant", answer)]
        self.history_media = media
        self.pending = []
        self.turns += 1
        return answer
