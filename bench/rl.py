"""Online RL throughput: our GRPO trainer vs a plain loop doing the same generate + score + loss, in one run.

    python bench/rl.py [--steps 12] [--warmup 2] [--rounds 2] [--workdir bench_out/rl]

Same tiny Llama (build_tiny_model defaults, ~3.7M parameters), the same 64 prompts, 4 prompts per
step with 4 completions each (max 32 new tokens, sampling at temperature 1), a rule reward, group
advantages, one PPO-clipped update per step, no reference model (beta 0), fp32 on CPU. Each variant
runs in its own fresh process (``OMP_NUM_THREADS=1``), rounds interleave them, medians over rounds.

  ours    align_core's GRPOTrainer through the shared loop (DeepSpeed ZeRO-0), rollouts written to disk
  plain   a hand-written torch loop: model.generate, the same reward and advantage functions, AdamW

Reported per variant: rollout tokens/s (generated tokens over the time spent sampling, scoring and
computing old log-probs) and update tokens/s (prompt + completion tokens through the loss's forward
and backward and the optimizer step, over the rest of the step). Target: ours within 0.9x of plain.

Run it alone (no tests or helpers beside it): two cores, and a second job swings timings 4x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import save_results

PROMPTS, GENERATIONS, NEW_TOKENS = 4, 4, 32
REWARD_MODULE = '''
from align_core.rewards import register_reward


@register_reward("bench_letter_share")
def letter_share(prompts, completions, metas):
    return [text.count("e") / max(len(text), 1) for text in completions]
'''


def setup(workdir: Path) -> dict[str, str]:
    """The tiny model, the prompt dataset and the reward module, shared by every worker."""
    from align_core.materialize import materialize_dataset
    from align_core.models.tiny import build_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(workdir / "model")
    rows = [{"prompt": [{"role": "user", "content": f"Tell me something about the number {index}."}]} for index in range(64)]
    source = workdir / "prompts.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = materialize_dataset(source, "Messages", "prompt_only", workdir / "datasets")
    module = workdir / "bench_reward.py"
    module.write_text(REWARD_MODULE)
    return {"model": str(model), "dataset": str(dataset), "reward_module": str(module), "workdir": str(workdir)}


def ours(paths: dict[str, str], steps: int, warmup: int) -> dict[str, float]:
    import yaml

    from align_core.launch import run
    from align_core.trainers import register_trainer
    from align_core.trainers.grpo import GRPOTrainer

    timings: list[tuple[float, float, float, float]] = []  # per step: rollout s, rollout tokens, step s, update tokens

    @register_trainer
    class TimedGRPO(GRPOTrainer):
        algorithm = "bench-grpo"

        def train_step(self, step):
            started = time.perf_counter()
            self._rollout_seconds, self._generated, self._update_tokens = 0.0, 0.0, 0.0
            metrics = super().train_step(step)
            total = time.perf_counter() - started
            timings.append((self._rollout_seconds, self._generated, total, self._update_tokens))
            return metrics

        def rollout(self, prompts, *args):
            started = time.perf_counter()
            result = super().rollout(prompts, *args)
            self._rollout_seconds += time.perf_counter() - started
            self._generated += float(result.mask.sum())
            self._update_tokens += float(result.batch.attention_mask.sum())
            return result

    out = Path(tempfile.mkdtemp(dir=paths["workdir"]))
    config = {
        "train_cfgs": {"algorithm": "bench-grpo", "max_steps": steps, "per_device_train_batch_size": PROMPTS,
                       "learning_rate": 1e-4, "save_interval": 10_000, "num_generations": GENERATIONS,
                       "max_new_tokens": NEW_TOKENS, "beta": 0.0, "reward_module": paths["reward_module"],
                       "rewards": [{"name": "bench_letter_share"}]},
        "data_cfgs": {"train_datasets": [paths["dataset"]], "max_length": 64, "token_cache_dir": str(out / "token_cache")},
        "model_cfgs": {"model_name_or_path": paths["model"]},
        "logger_cfgs": {"output_dir": str(out / "run"), "progress_bar": False, "log_type": "none"},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    run(out / "config.yaml")
    return summarize(timings[warmup:])


def plain(paths: dict[str, str], steps: int, warmup: int) -> dict[str, float]:
    import torch

    from align_core.data.token_cache import tokenize_dataset
    from align_core.data.token_dataset import TokenDataset
    from align_core.losses import token_logps
    from align_core.losses.rl import group_advantages, ppo_policy_loss
    from align_core.models.registry import load_causal_lm, load_tokenizer
    from align_core.rewards import RewardSpec, combine_rewards, load_reward_module
    from align_core.trainers.grpo import completion_tokens_mask

    torch.manual_seed(0)
    load_reward_module(paths["reward_module"])
    specs = [RewardSpec(name="bench_letter_share")]
    tokenizer = load_tokenizer(paths["model"])
    model = load_causal_lm(paths["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = TokenDataset(tokenize_dataset(paths["dataset"], paths["model"], 64, cache_root=Path(paths["workdir"]) / "plain-cache"))
    collate = rows.collator()
    timings = []
    for step in range(steps):
        started = time.perf_counter()
        prompts = collate([rows[(step * PROMPTS + index) % len(rows)] for index in range(PROMPTS)])
        ids, mask = prompts.input_ids.repeat(GENERATIONS, 1), prompts.attention_mask.repeat(GENERATIONS, 1)
        model.eval()
        with torch.no_grad():
            output = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=NEW_TOKENS,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        model.train()
        completion = output[:, ids.shape[1]:]
        completion_mask = completion_tokens_mask(completion, tokenizer.eos_token_id)
        attention = torch.cat([mask, completion_mask], dim=1)
        labels = torch.where(attention.bool(), output, -100)
        labels[:, : ids.shape[1]] = -100
        texts = tokenizer.batch_decode(torch.where(completion_mask.bool(), completion, tokenizer.pad_token_id), skip_special_tokens=True)
        rewards, _ = combine_rewards(specs, [""] * len(texts), texts)
        advantages = group_advantages(rewards.view(GENERATIONS, -1).T.reshape(-1), GENERATIONS).view(-1, GENERATIONS).T.reshape(-1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # as align_core.trainers.grpo.generation_position_ids
        with torch.no_grad():
            old, response = token_logps(model(input_ids=output, attention_mask=attention, position_ids=positions).logits, labels)
        rollout_seconds = time.perf_counter() - started
        logps, _ = token_logps(model(input_ids=output, attention_mask=attention, position_ids=positions).logits, labels)
        loss, _ = ppo_policy_loss(logps, old, advantages[:, None].expand_as(logps), response, 0.2,
                                  aggregation="seq_mean_token_mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        timings.append((rollout_seconds, float(response.sum()), time.perf_counter() - started, float(attention.sum())))
    return summarize(timings[warmup:])


def summarize(timings: list[tuple[float, float, float, float]]) -> dict[str, float]:
    rollout_seconds, generated, step_seconds, update_tokens = (sum(column) for column in zip(*timings))
    return {"rollout_tokens_per_second": generated / rollout_seconds,
            "update_tokens_per_second": update_tokens / (step_seconds - rollout_seconds),
            "step_seconds": step_seconds / len(timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--worker", choices=["ours", "plain"])
    parser.add_argument("--paths")
    args = parser.parse_args()
    if args.worker:
        from align_core.paths import configure_environment

        configure_environment()
        result = {"ours": ours, "plain": plain}[args.worker](json.loads(args.paths), args.steps, args.warmup)
        print("BENCH " + json.dumps(result), flush=True)
        return
    paths = setup((args.workdir or Path(tempfile.mkdtemp(prefix="bench-rl-"))).absolute())
    results: dict[str, list[dict[str, float]]] = {"ours": [], "plain": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for _ in range(args.rounds):
        for variant, runs in results.items():
            command = [sys.executable, __file__, "--worker", variant, "--paths", json.dumps(paths),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
            output = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(next(line[6:] for line in output.splitlines() if line.startswith("BENCH "))))
    medians = {variant: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for variant, runs in results.items()}
    for variant, values in medians.items():
        print(f"{variant:<6} rollout {values['rollout_tokens_per_second']:8.0f} tok/s   update "
              f"{values['update_tokens_per_second']:8.0f} tok/s   step {values['step_seconds'] * 1000:6.0f} ms")
    for key in ("rollout_tokens_per_second", "update_tokens_per_second"):
        print(f"ours / plain, {key}: {medians['ours'][key] / medians['plain'][key]:.2f}x")
    save_results("rl", {"variants": medians})


if __name__ == "__main__":
    main()
