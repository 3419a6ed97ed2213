"""Offline tiny models for tests, benchmarks and the demo: no network, deterministic per seed.

``build_tiny_model(out_dir, arch="llama", seed=0, ...) -> Path`` trains a byte-level BPE tokenizer
on the corpus shipped in ``align_core/models/corpus/``, gives it a ChatML-style chat template whose
assistant turns sit inside ``{% generation %}`` markers (so ``return_assistant_tokens_mask`` and
alignflow's label masks work), builds a randomly initialised model of ``arch`` from a config, and
saves both, so ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(out_dir)`` load offline.

The same arguments give byte-identical files. Default size: Llama, hidden 256, 4 layers, ~3.7M
parameters: small enough to train on a laptop CPU, big enough that losses move like a real model's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from align_core.errors import UsageError
from align_core.io import publish_dir, staging_dir

CORPUS_DIR = Path(__file__).parent / "corpus"

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"  # also the EOS token, so generation stops at the end of an assistant turn
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, TURN_START, TURN_END]

# ChatML with the end-of-turn token inside the generation block: it is what the model must learn to
# emit, so it is trained on. Newlines are Jinja literals because HF renders with trim_blocks.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

def media_chat_template(placeholders: dict[str, str]) -> str:
    """``CHAT_TEMPLATE`` for a media family: a message's content may be typed parts, text kept as is and
    a media part rendered as the family's placeholder (which its processor then expands into one token
    per patch or audio frame), parts joined by newlines like ``ModelFormatter`` joins them."""
    media = "".join(
        f"{{%- elif part['type'] == '{media_type}' -%}}{{%- set ns.text = ns.text + '{placeholder}' -%}}"
        for media_type, placeholder in placeholders.items()
    )
    content = (
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
        "{%- else -%}{%- set ns.text = '' -%}"
        "{%- for part in message['content'] -%}"
        "{%- if not loop.first -%}{%- set ns.text = ns.text + '\\n' -%}{%- endif -%}"
        "{%- if part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}"
        f"{media}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
    )
    return (
        CHAT_TEMPLATE.replace("{%- for message in messages -%}", "{%- set ns = namespace(text='') -%}{%- for message in messages -%}" + content)
        .replace("message['content'] + '<|im_end|>'", "ns.text + '<|im_end|>'")
    )


TEXT_ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2")
MEDIA_ARCHITECTURES = ("llava", "qwen2_audio")  # image -> text, audio -> text
ARCHITECTURES = TEXT_ARCHITECTURES + MEDIA_ARCHITECTURES
# Config field names that differ from the Llama names used in build_tiny_model's arguments.
_RENAMED_FIELDS: dict[str, dict[str, str]] = {"gpt2": {"intermediate_size": "n_inner", "num_key_value_heads": ""}}


def corpus_texts(corpus_dir: Path = CORPUS_DIR) -> list[str]:
    """The shipped corpus as paragraphs, in a fixed (sorted file, then file) order."""
    files = sorted(corpus_dir.glob("*.txt"))
    if not files:
        raise UsageError(f"{corpus_dir}: no *.txt corpus files to train the tokenizer on")
    return [paragraph for path in files for paragraph in path.read_text().split("\n\n") if paragraph.strip()]


def build_tiny_tokenizer(vocab_size: int = 2048, corpus_dir: Path = CORPUS_DIR) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes, no unknown token) with a BOS-adding post-processor.

    The post-processor makes ``tokenizer(text)`` prepend BOS like Llama's does, which is exactly
    the case where a chat template that also renders BOS could double it.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(corpus_dir), trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=TURN_END,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def as_auto_tokenizer_loads_it(tokenizer: PreTrainedTokenizerFast, arch: str):
    """The tokenizer exactly as ``AutoTokenizer`` will load it from a folder of model type ``arch``.

    For some model types transformers swaps in its own tokenizer class, which rebuilds the
    pre-tokenizer and adds tokens (Qwen2: its split regex, NFC and ``<|endoftext|>``). Saving that
    class's view instead of ours makes the saved files a fixed point: what tests and training
    load is what the model's vocabulary was sized for.
    """
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        AutoConfig.for_model(arch).save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, **sizes: Any):
    """A config of ``arch`` with the given sizes (Llama field names) and the tokenizer's special ids."""
    renames = _RENAMED_FIELDS.get(arch, {})
    fields = {renames.get(name, name): value for name, value in sizes.items()}
    fields.pop("", None)  # a field the architecture does not have
    return AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fields,
    )


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    vocab_size: int = 2048,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
) -> Path:
    """Train the tokenizer, build a random ``arch`` model seeded by ``seed``, save both to ``out_dir``.

    ``vocab_size`` is the BPE target; the model's vocabulary is the tokenizer's actual size.
    ``intermediate_size`` defaults to 2 x ``hidden_size``. Returns ``out_dir``.
    """
    if hidden_size % num_heads:
        raise UsageError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    out_dir = Path(out_dir)
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown tiny-model arch {arch!r}; expected one of: {', '.join(ARCHITECTURES)}")
    family = MEDIA_FAMILIES.get(arch)
    tokenizer = build_tiny_tokenizer(vocab_size)
    if family is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.special_tokens)})
        tokenizer.chat_template = media_chat_template(family.placeholders)
    tokenizer = as_auto_tokenizer_loads_it(tokenizer, arch)
    config = tiny_config(
        family.text_arch if family else arch,
        tokenizer,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_position_embeddings,
    )
    processor = None
    if family is not None:
        config, processor = family.build(tokenizer, config)
    # A private RNG stream: the weights depend on ``seed`` only, and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.model_class()(config) if family else AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = staging_dir(out_dir)
    model.save_pretrained(staging)
    (processor or tokenizer).save_pretrained(staging)  # a processor saves its tokenizer too
    publish_files(staging, out_dir)
    return out_dir


# ----- media families: a text model of the same sizes, a tiny encoder, and the family's processor -------

# Encoder sizes: as small as the architectures allow while still a real encoder (two layers).
IMAGE_SIZE, PATCH_SIZE = 32, 8  # 16 patches: each image becomes 16 tokens
AUDIO_SECONDS, MEL_BINS = 2, 32  # features padded to 2 s (200 frames) -> at most 50 audio tokens


def _llava(tokenizer, text_config):
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaProcessor

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    # The PIL image processor: transformers' torchvision-backed ones do not load beside the CPU torch wheel.
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tokenizer.chat_template,  # CLIP's class token, dropped by "default"
    )
    return config, processor


def _qwen2_audio(tokenizer, text_config):
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2AudioProcessor, WhisperFeatureExtractor

    encoder = Qwen2AudioEncoderConfig(
        num_mel_bins=MEL_BINS, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
        max_source_positions=AUDIO_SECONDS * 50,  # 100 mel frames per second, halved by the encoder's stride-2 conv
    )
    config = Qwen2AudioConfig(
        audio_config=encoder, text_config=text_config, audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    )
    features = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, chunk_length=AUDIO_SECONDS)
    processor = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    return config, processor


@dataclass(frozen=True)
class MediaFamily:
    text_arch: str  # the language model inside
    placeholders: dict[str, str]  # content part type -> what the chat template renders for it
    special_tokens: tuple[str, ...]
    build: Callable[[Any, Any], tuple[Any, Any]]  # (tokenizer, text config) -> (model config, processor)
    model_class_name: str

    def model_class(self) -> type:
        import transformers

        return getattr(transformers, self.model_class_name)


MEDIA_FAMILIES = {
    "llava": MediaFamily("llama", {"image": "<image>"}, ("<image>",), _llava, "LlavaForConditionalGeneration"),
    "qwen2_audio": MediaFamily(
        "qwen2",
        {"audio": "<|audio_bos|><|AUDIO|><|audio_eos|>"},
        ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
        _qwen2_audio,
        "Qwen2AudioForConditionalGeneration",
    ),
}


def publish_files(staging: Path, out_dir: Path) -> None:
    """Move a finished staging folder into ``out_dir``: one rename if new, else file by file (each atomic)."""
    if not out_dir.exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if publish_dir(staging, out_dir):
            return
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()
