"""Multimodal throughput: materialise rows/s (decode + digest + dedup) and SFT samples/s per modality.

    python bench/multimodal.py [--rows 600] [--steps 30] [--rounds 3] [--workdir bench_out/multimodal]

Data: the synthetic media samples (``alignflow samples --media``): 64x64 PNG shapes, ~1 s 16 kHz WAV
tones, 8-frame 32x32 MPEG-4 clips. Models: tiny LLaVA (image; video as 4 PyAV frames) and tiny
Qwen2-Audio, hidden 64, 2 layers. For each modality it prints

- materialise rows/s: the template, media resolution, decoding check, sha256 and the media store,
  two workers, median over rounds (fresh output folder each round);
- text-only rows/s: the same rows with the media stripped, so the media's own cost shows as a ratio;
- SFT samples/s: the shared trainer at ZeRO-0, batch 8, median over the timed steps (the first 5 are
  warm-up), from the run's own ``tokens_per_second`` and tokens per step;
- collation ms per batch of 8: with the processor computing pixel/audio features from the media store,
  and the token padding alone; their difference over the step time is what caching features would save.

Run it alone (no tests or helpers beside it): two cores, and a second job swings timings 4x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import save_results

BATCH = 8
MODALITIES = {  # sample set, media column, tiny model arch
    "image": ("image_colours", "image", "llava"),
    "audio": ("audio_pitch", "audio_path", "qwen2_audio"),
    "video": ("video_motion", "video_path", "llava"),
}


def supervised_source(preference_source: Path, out: Path, media_field: str) -> Path:
    """The preference rows as supervised ones: the prompt, the media item and the right answer."""
    rows = []
    for line in preference_source.read_text().splitlines():
        row = json.loads(line)
        prompt = row.get("question") or row.get("prompt")
        rows.append({"prompt": prompt, media_field: row[media_field], "response": row[f"response_{row['overall_response']}"]})
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def text_only_source(source: Path, out: Path) -> Path:
    """The same conversations without their media, as ``Messages`` rows."""
    rows = []
    for line in source.read_text().splitlines():
        row = json.loads(line)
        rows.append({"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]})
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def materialise_rate(source: Path, template: str, media_root: Path | None, workdir: Path, rounds: int) -> tuple[float, Path]:
    from align_core.materialize import materialize_dataset

    seconds, dataset = [], None
    for number in range(rounds):
        start = time.perf_counter()
        dataset = Path(materialize_dataset(source, template, "supervised", workdir / f"round-{number}", workers=2,
                                           media_root=media_root))
        seconds.append(time.perf_counter() - start)
    rows = sum(1 for _ in source.read_text().splitlines())
    return rows / statistics.median(seconds), dataset


def sft_rate(model: Path, dataset: Path, workdir: Path, steps: int) -> dict[str, float]:
    import yaml

    from align_core.launch import run

    config = {
        "train_cfgs": {"algorithm": "sft", "max_steps": steps, "per_device_train_batch_size": BATCH, "learning_rate": 1e-3,
                       "save_interval": 10_000, "seed": 1},
        "data_cfgs": {"train_datasets": [str(dataset)], "max_length": 256, "token_cache_dir": str(workdir / "token_cache")},
        "model_cfgs": {"model_name_or_path": str(model)},
        "logger_cfgs": {"output_dir": str(workdir / "run"), "progress_bar": False, "log_type": "none"},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    run(path)
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()][5:]
    step_seconds = [record["tokens"] / record["tokens_per_second"] for record in records]
    return {"samples_per_second": BATCH / statistics.median(step_seconds), "step_ms": 1000 * statistics.median(step_seconds)}


def collation_ms(dataset: Path, model: Path, workdir: Path, repeats: int = 20) -> tuple[float, float]:
    """Median ms to collate a batch of 8 with media features, and with the token padding alone."""
    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset

    cache = TokenDataset(tokenize_dataset(dataset, model, 256, cache_root=workdir / "token_cache"))
    with_media, tokens_only = cache.collator(), cache.collator()
    tokens_only.media = None
    timings = {"media": [], "tokens": []}
    for number in range(repeats):
        rows = [cache[(number * BATCH + index) % len(cache)] for index in range(BATCH)]
        for name, collate in (("media", with_media), ("tokens", tokens_only)):
            start = time.perf_counter()
            collate(rows)
            timings[name].append(1000 * (time.perf_counter() - start))
    return statistics.median(timings["media"]), statistics.median(timings["tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from align_core.models.tiny import build_tiny_model
    from align_core.paths import configure_environment
    from alignflow.samples import write_media_samples

    configure_environment()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-multimodal-"))
    written = write_media_samples(workdir / "samples", rows=args.rows, seed=0)
    models, results = {}, {}
    print(f"{'modality':<8} {'materialise rows/s':>19} {'text-only rows/s':>17} {'SFT samples/s':>14} {'step ms':>8} "
          f"{'collate ms (media / tokens)':>28}")
    for modality, (set_name, media_field, arch) in MODALITIES.items():
        if arch not in models:
            models[arch] = build_tiny_model(workdir / "models" / arch, arch=arch, vocab_size=384, hidden_size=64,
                                            num_layers=2, num_heads=4, max_position_embeddings=512)
        sample = written[set_name]
        root = workdir / modality
        root.mkdir(parents=True, exist_ok=True)
        source = supervised_source(sample.source, root / "sft.jsonl", media_field)
        media_rate, dataset = materialise_rate(source, sample.template, sample.media_root, root / "datasets", args.rounds)
        plain = text_only_source(source, root / "text.jsonl")
        text_rate, _ = materialise_rate(plain, "Messages", None, root / "text-datasets", args.rounds)
        sft = sft_rate(models[arch], dataset, root / "sft", args.steps)
        media_ms, tokens_ms = collation_ms(dataset, models[arch], root)
        print(f"{modality:<8} {media_rate:>19.0f} {text_rate:>17.0f} {sft['samples_per_second']:>14.1f} "
              f"{sft['step_ms']:>8.0f} {media_ms:>14.1f} / {tokens_ms:<11.1f}", flush=True)
        results[modality] = {"materialise_rows_per_second": media_rate, "text_only_rows_per_second": text_rate,
                             **sft, "collate_ms_media": media_ms, "collate_ms_tokens": tokens_ms}
    save_results("multimodal", results)


if __name__ == "__main__":
    main()
