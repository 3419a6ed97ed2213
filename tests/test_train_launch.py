"""Two ranks through the real ``deepspeed`` launcher (CPU, gloo), and the ``alignflow train`` command."""

from __future__ import annotations

import json

import pytest
import torch
from train_data import launch, read_jsonl, sft_data, supervised_rows, tiny_model, write_config  # noqa: F401
from typer.testing import CliRunner

from align_core.launch import parse_result
from alignflow.cli import app


@pytest.mark.slow
def test_two_ranks_at_zero3_train_and_export_the_gathered_model(tmp_path, tiny_model, sft_data):
    from align_core.data import TokenDataset, tokenize_dataset
    from align_core.losses import sequence_logps
    from align_core.models.registry import load_causal_lm

    config = write_config(
        tmp_path / "two.yaml", tiny_model, [sft_data], tmp_path / "out",
        {"train_cfgs": {"max_steps": 6, "zero_stage": 3, "per_device_train_batch_size": 2}},
        eval_sets=[sft_data],
    )
    finished = launch(config, nproc=2)
    assert finished.returncode == 0, finished.stdout[-4000:]
    result = parse_result(finished.stdout.splitlines())
    assert result["world_size"] == 2 and result["steps"] == 6
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))  # one line per step: only rank 0 writes
    assert records[-1]["loss"] < records[0]["loss"]
    # one process with the same global batch learns the same: the sampler's global batches do not depend on
    # the split and every token weighs the same (ZeRO-2: test_two_ranks_learn_what_one_process_learns...)
    from align_core.launch import run as run_in_process

    run_in_process(write_config(tmp_path / "one.yaml", tiny_model, [sft_data], tmp_path / "one",
                                {"train_cfgs": {"max_steps": 6, "zero_stage": 3, "per_device_train_batch_size": 4}}))
    one = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    assert [r["tokens"] for r in records] == [r["tokens"] for r in one]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in one], rel=1e-5)

    # The export holds the whole trained model: it reproduces the eval loss the two ranks measured.
    model = load_causal_lm(result["model_dir"]).eval()
    rows = TokenDataset(tokenize_dataset(sft_data, result["model_dir"], 96, cache_root=tmp_path / "cache"))
    batch = rows.collator()([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sum_logps, _, n_tokens = sequence_logps(logits, batch.labels)
    assert (-sum_logps.sum() / n_tokens.sum()).item() == pytest.approx(result["eval"]["eval/loss"], rel=1e-4)


def test_cli_refuses_a_dataset_without_a_passed_contract(tmp_path, tiny_model):
    from align_core.materialize import materialize_dataset

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in supervised_rows(4)))
    never_validated = materialize_dataset(source, "Messages", "supervised", tmp_path / "datasets", workers=1)
    config = write_config(tmp_path / "c.yaml", tiny_model, [never_validated], tmp_path / "out")
    outcome = CliRunner().invoke(app, ["train", str(config)])
    assert outcome.exit_code == 2
    assert "data contract missing" in outcome.output and str(never_validated) in outcome.output
    assert not (tmp_path / "out").exists()


def test_cli_names_an_unknown_override_key(tmp_path, tiny_model, sft_data):
    config = write_config(tmp_path / "c.yaml", tiny_model, [sft_data], tmp_path / "out")
    outcome = CliRunner().invoke(app, ["train", str(config), "train_cfgs.max_step=3"])
    assert outcome.exit_code == 2
    assert "unknown config key 'train_cfgs.max_step' (did you mean 'max_steps'?)" in outcome.output


def test_multinode_flags_are_the_launchers_own():
    from align_core.errors import UsageError
    from align_core.launch import multinode_arguments

    assert multinode_arguments("torchrun", num_nodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500) == [
        "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "29500"]
    with pytest.raises(UsageError, match="torchrun takes no hostfile"):
        multinode_arguments("torchrun", hostfile="hosts")
    with pytest.raises(UsageError, match="hostfile nowhere/hosts does not exist"):
        multinode_arguments("deepspeed", hostfile="nowhere/hosts")


def test_a_hostfile_reaches_the_deepspeed_launcher(tmp_path):
    from align_core.launch import launch_command, multinode_arguments

    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=8\nnode-b slots=8\n")
    args = multinode_arguments("deepspeed", hostfile=hosts, num_nodes=2, master_addr="node-a")
    command = launch_command(tmp_path / "c.yaml", [], nproc=8, launcher="deepspeed", launcher_args=args)
    assert command[1:3] == ["--num_gpus", "8"] and command[command.index("--hostfile") + 1] == str(hosts)
    assert command[command.index("--num_nodes") + 1] == "2" and "--master_port" in command  # a free port still picked


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2])  # ZeRO-3: test_two_ranks_at_zero3_train_and_export_the_gathered_model
def test_two_ranks_learn_what_one_process_learns_from_the_same_global_batches(tmp_path, tiny_model, sft_data, stage):
    from align_core.launch import run as run_in_process

    def config(name: str, batch: int):
        return write_config(tmp_path / f"{name}.yaml", tiny_model, [sft_data], tmp_path / name,
                            {"train_cfgs": {"max_steps": 4, "zero_stage": stage, "per_device_train_batch_size": batch}})

    run_in_process(config("one", 4))
    finished = launch(config("two", 2), nproc=2)
    assert finished.returncode == 0, finished.stdout[-4000:]
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    # the sampler's global batches do not depend on the split, and every token weighs the same
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)


def test_the_shared_memory_a_multi_rank_run_leaves_is_released_by_its_port():
    import os
    from pathlib import Path

    from align_core.launch import SHM_FOLDER, release_shared_memory

    if not SHM_FOLDER.is_dir():
        pytest.skip("no /dev/shm here")
    uid = os.getuid()
    ours = [SHM_FOLDER / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_61001_{rank}" for rank in (0, 1)]
    other = SHM_FOLDER / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_61002_0"  # another run's, still running
    try:
        for path in [*ours, other]:
            path.write_bytes(b"x")
        removed = release_shared_memory(["deepspeed", "--num_gpus", "2", "--master_port", "61001", "--module", "x"])
        assert sorted(removed) == sorted(ours) and not any(path.exists() for path in ours) and other.exists()
        assert release_shared_memory(["python", "-m", "align_core.launch", "c.yaml"]) == []  # one rank: none made
    finally:
        for path in [*ours, other]:
            Path(path).unlink(missing_ok=True)
