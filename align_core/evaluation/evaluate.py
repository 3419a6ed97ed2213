"""Evaluate a trained model on materialised datasets into a content-addressed folder.

Per dataset, by its kind:

- ``supervised``: the model's token-mean loss and perplexity on the assistant tokens (the token cache's
  labels, as SFT trains them);
- ``preference``: for a score model (RM, cost model) the share of pairs whose chosen response scores
  higher and the mean margin; for a policy (the DPO family) the same with its implicit reward, the
  response log-prob minus the reference model's (``reference``);
- ``prompt_only``: completions sampled from the model (``align_core.generation``, content-addressed
  themselves) scored by ``reward_model``; with a ``reference`` model its completions too, and the win,
  tie and loss rates of the model against it plus AlpacaEval 2's length-controlled win rate
  (``align_core.evaluation.winrate``).

``<out_root>/<digest>/`` holds ``eval.json`` (written last), ``completions-<dataset>.arrow`` (prompt,
both completions, both scores, the outcome) and ``report.html``. The digest covers the model's weights,
the datasets, the reward and reference models' weights and every setting, so the same evaluation is
found, not recomputed, and a changed one gets a new folder.
"""

from __future__ import annotations

import html
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from align_core.errors import UsageError
from align_core.evaluation.winrate import length_controlled_win_rate, outcomes, win_rates
from align_core.generation import SamplingSettings, generate_dataset, model_digest
from align_core.io import atomic_write_json, atomic_write_text, publish_dir, sha256_file, sha256_json, staging_dir
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import Kind

EVAL_NAME = "eval.json"
REPORT_NAME = "report.html"
EVAL_FORMAT_VERSION = 1
SAMPLES_SHOWN = 5


@dataclass(frozen=True)
class EvalSpec:
    """What one evaluation measures, and how."""

    model_dir: str
    datasets: tuple[str, ...]
    reward_model: str | None = None
    reference: str | None = None
    sampling: SamplingSettings = field(default_factory=lambda: SamplingSettings(max_new_tokens=64, temperature=0.0))
    max_length: int = 512
    batch_size: int = 8
    tie_margin: float = 0.0
    trust_remote_code: bool = False
    names: tuple[str, ...] = ()  # what eval.json calls each dataset; default: its folder's name

    def digest(self) -> str:
        def weights(path: str | None) -> str | None:
            return model_digest(path) if path else None

        return sha256_json({
            "format": EVAL_FORMAT_VERSION, "code": sha256_file(Path(__file__)),
            "model": weights(self.model_dir), "reward_model": weights(self.reward_model), "reference": weights(self.reference),
            "datasets": [ShardDataset(folder).digest for folder in self.datasets],
            "settings": {key: value for key, value in asdict(self).items()
                         if key not in ("model_dir", "datasets", "reward_model", "reference")},
        })[:32]


@dataclass
class EvalResult:
    path: Path
    metrics: dict[str, dict[str, Any]]  # dataset name -> its metrics
    cache_hit: bool


def evaluate(spec: EvalSpec, out_root: str | Path) -> EvalResult:
    """Run ``spec`` into ``out_root/<digest>/``, or find it there."""
    out_root = Path(out_root)
    final = out_root / spec.digest()
    if (final / EVAL_NAME).is_file():
        return EvalResult(final, json.loads((final / EVAL_NAME).read_text())["datasets"], cache_hit=True)
    names = list(spec.names) or dataset_names(spec.datasets)
    for folder in spec.datasets:
        if ShardDataset(folder).kind not in MEASURES:
            raise UsageError(f"{folder}: a {ShardDataset(folder).kind.value} dataset; evaluate reads supervised, "
                             "preference and prompt_only datasets")
    out_root.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(final)
    try:
        evaluator = _Evaluator(spec, out_root)
        metrics, samples = {}, {}
        for name, folder in zip(names, spec.datasets):
            dataset = ShardDataset(folder)
            metrics[name] = {"kind": dataset.kind.value, **MEASURES[dataset.kind](evaluator, dataset, staging, name)}
            samples[name] = evaluator.samples.pop(name, [])
        record = {"format_version": EVAL_FORMAT_VERSION, "model_dir": str(Path(spec.model_dir).absolute()),
                  "spec": {**asdict(spec), "datasets": list(spec.datasets)}, "datasets": metrics}
        atomic_write_text(staging / REPORT_NAME, render_report(record, samples))
        atomic_write_json(staging / EVAL_NAME, record)  # last: a folder with eval.json is complete
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not publish_dir(staging, final):  # another process finished the same evaluation first
        return EvalResult(final, json.loads((final / EVAL_NAME).read_text())["datasets"], cache_hit=True)
    return EvalResult(final, metrics, cache_hit=False)


def dataset_names(folders: tuple[str, ...]) -> list[str]:
    """Each dataset's folder name, made unique: what eval.json and the report call it."""
    names: list[str] = []
    for folder in folders:
        name = Path(folder).name
        names.append(name if name not in names else f"{name}-{len(names)}")
    return names


class _Evaluator:
    """Loads each model once, on the accelerator, in eval mode; measures datasets."""

    def __init__(self, spec: EvalSpec, out_root: Path):
        from deepspeed.accelerator import get_accelerator

        self.spec, self.out_root = spec, out_root
        self.device = get_accelerator().current_device_name()
        self._models: dict[str, Any] = {}
        self.samples: dict[str, list[dict]] = {}

    def model(self, path: str) -> Any:
        from align_core.models.registry import load_causal_lm, load_config, load_score_model
        from align_core.models.score import is_score_config

        if path not in self._models:
            trust = self.spec.trust_remote_code
            load = load_score_model if is_score_config(load_config(path, trust)) else load_causal_lm
            self._models[path] = load(path, trust_remote_code=trust).to(self.device).eval()
        return self._models[path]

    def batches(self, dataset: ShardDataset):
        """The dataset tokenised for the evaluated model (token cache under ``out_root``), in batches."""
        from align_core.data.token_cache import TokenizeSpec
        from align_core.data.token_dataset import TokenDataset

        spec = self.spec
        cache = TokenizeSpec(dataset_dir=str(dataset.path), tokenizer_path=spec.model_dir, max_length=spec.max_length,
                             trust_remote_code=spec.trust_remote_code, cache_root=str(self.out_root / "token_cache")).build()
        rows = TokenDataset(cache)
        if len(rows) == 0:
            raise UsageError(f"{dataset.path}: no row fits max_length={spec.max_length}")
        loader = DataLoader(rows, batch_size=spec.batch_size, collate_fn=rows.collator())
        for batch in loader:
            yield batch.to(self.device)

    @torch.no_grad()
    def supervised(self, dataset: ShardDataset, staging: Path, name: str) -> dict[str, Any]:
        from align_core.data.batch import forward
        from align_core.losses import sft_loss

        model = self.model(self.spec.model_dir)
        nll, tokens = 0.0, 0.0
        for batch in self.batches(dataset):
            batch_nll, batch_tokens = sft_loss(forward(model, batch, use_cache=False).logits.float(), batch.labels)
            nll, tokens = nll + float(batch_nll), tokens + float(batch_tokens)
        loss = nll / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens)}

    @torch.no_grad()
    def preference(self, dataset: ShardDataset, staging: Path, name: str) -> dict[str, Any]:
        from align_core.data.batch import forward
        from align_core.reference.scoring import ResponseScorer, score_sequences

        model = self.model(self.spec.model_dir)
        is_score_model = hasattr(model, "score_head")
        if not is_score_model and not self.spec.reference:
            raise UsageError(f"{dataset.path}: a policy's preference accuracy is its implicit reward against a "
                             "reference model; give the reference (--reference)")
        margins = []
        for batch in self.batches(dataset):
            if is_score_model:
                scores = forward(model, batch, use_cache=False).end_scores.float()
            else:
                scores = score_sequences(ResponseScorer(model), batch).sum.float()
                scores = scores - score_sequences(ResponseScorer(self.model(self.spec.reference)), batch).sum.float()
            chosen, rejected = scores.view(2, -1)  # chosen rows first
            margins.append((chosen - rejected).cpu())
        margin = torch.cat(margins)
        what = "score" if is_score_model else "implicit reward (log-prob minus the reference's)"
        return {"accuracy": float((margin > 0).double().mean()), "margin": float(margin.mean()),
                "pairs": len(margin), "measured_by": what}

    def prompts(self, dataset: ShardDataset, staging: Path, name: str) -> dict[str, Any]:
        from align_core.rewards.reward_model import RewardModelScorer

        spec = self.spec
        if not spec.reward_model:
            raise UsageError(f"{dataset.path}: completions of a prompt set are judged by a reward model; "
                             "give one (--reward-model)")
        scorer = RewardModelScorer(spec.reward_model, batch_size=spec.batch_size, device=self.device,
                                   trust_remote_code=spec.trust_remote_code)
        generations = self.out_root / "generations"
        sides = {"model": spec.model_dir, **({"reference": spec.reference} if spec.reference else {})}
        completions = {side: generated_completions(generate_dataset(path, dataset.path, generations, spec.sampling,
                                                                   spec.trust_remote_code).path)
                       for side, path in sides.items()}
        keys = [key for key in completions["model"] if all(key in side for side in completions.values())]
        prompts = [completions["model"][key][0] for key in keys]
        columns: dict[str, Any] = {"prompt_id": [f"{key[0]}/{key[1]}" for key in keys],
                                   "prompt": [json.dumps(prompt, ensure_ascii=False) for prompt in prompts]}
        for side in sides:
            texts = [completions[side][key][1] for key in keys]
            columns[f"{side}_completion"] = texts
            columns[f"{side}_score"] = scorer.score(prompts, texts).tolist()
        metrics: dict[str, Any] = {"prompts": len(keys), "reward_mean": _mean(columns["model_score"]),
                                   "response_chars": _mean([len(text) for text in columns["model_completion"]])}
        if "reference" in sides:
            results = outcomes(columns["model_score"], columns["reference_score"], spec.tie_margin)
            lengths = [len(a) - len(b) for a, b in zip(columns["model_completion"], columns["reference_completion"])]
            columns["outcome"] = results.tolist()
            metrics.update({**win_rates(results), "length_controlled_win_rate": length_controlled_win_rate(results, lengths),
                            "reference_reward_mean": _mean(columns["reference_score"])})
        table = pa.table(columns)
        with pa.OSFile(str(staging / f"completions-{name}.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.samples[name] = table.slice(0, SAMPLES_SHOWN).to_pylist()
        return metrics


MEASURES = {Kind.SUPERVISED: _Evaluator.supervised, Kind.PREFERENCE: _Evaluator.preference,
            Kind.PROMPT_ONLY: _Evaluator.prompts}


def generated_completions(folder: Path) -> dict[tuple[str, int], tuple[list[dict], str]]:
    """(prompt row id, generation) -> (the prompt conversation, the completion text) of a generated dataset."""
    found = {}
    for record_batch in ShardDataset(folder).iter_batches():
        for row in record_batch.to_pylist():
            meta = json.loads(row["meta"])
            *prompt, answer = row["messages"]
            text = "".join(part["text"] for part in answer["content"] if part["type"] == "text")
            found[(meta["source_id"], meta["generation"])] = (prompt, text)
    return found


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


STYLE = ("<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;"
         "vertical-align:top}table{border-collapse:collapse;margin-bottom:1.5em}pre{white-space:pre-wrap;margin:0}</style>")


def render_report(record: dict[str, Any], samples: dict[str, list[dict]]) -> str:
    """A self-contained page: a table of each dataset's metrics, then a few side-by-side completions."""
    def cell(value: Any) -> str:
        return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))

    parts = [f"<!doctype html><meta charset='utf-8'><title>Evaluation of {html.escape(record['model_dir'])}</title>",
             STYLE, f"<h1>Evaluation</h1><p>model: <code>{html.escape(record['model_dir'])}</code></p>"]
    for name, metrics in record["datasets"].items():
        rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{cell(value)}</td></tr>" for key, value in metrics.items())
        parts.append(f"<h2>{html.escape(name)}</h2><table>{rows}</table>")
        shown = samples.get(name) or []
        if shown:
            sides = [key[: -len("_completion")] for key in shown[0] if key.endswith("_completion")]
            header = "".join(f"<th>{side}</th>" for side in sides)
            body = "".join(
                "<tr><td><pre>" + html.escape(sample["prompt"][-400:]) + "</pre></td>"
                + "".join(f"<td><pre>{html.escape(sample[side + '_completion'])}</pre>score {cell(sample[side + '_score'])}</td>"
                          for side in sides) + "</tr>"
                for sample in shown)
            parts.append(f"<table><tr><th>prompt</th>{header}</tr>{body}</table>")
    return "\n".join(parts)
