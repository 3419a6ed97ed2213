"""Training config: sections, types, dotted overrides, and errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_data import trainer_registry_restored

from align_core.config import EXAMPLE_CONFIGS, build_config, dump_config, load_config, parse_overrides
from align_core.errors import UsageError

MINIMAL = {
    "data_cfgs": {"train_datasets": ["data/a"]},
    "model_cfgs": {"model_name_or_path": "models/tiny"},
    "logger_cfgs": {"output_dir": "runs/x"},
}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_yaml_sections_load_with_types_and_defaults(tmp_path):
    path = write_config(
        tmp_path,
        """
train_cfgs:
  algorithm: rm
  epochs: 3
  learning_rate: 2.0e-5
  zero_stage: 2
data_cfgs:
  train_datasets: [data/prefs]
  max_length: 256
  truncation: truncate_prompt_left
model_cfgs:
  model_name_or_path: models/tiny
logger_cfgs:
  output_dir: runs/rm
""",
    )
    config = load_config(path)
    assert config.train_cfgs.algorithm == "rm"
    assert config.train_cfgs.epochs == 3
    assert config.train_cfgs.learning_rate == 2e-5
    assert config.train_cfgs.zero_stage == 2
    assert config.train_cfgs.gradient_accumulation_steps == 1  # default
    assert config.data_cfgs.truncation == "truncate_prompt_left"
    assert config.model_cfgs.trust_remote_code is False
    # relative paths resolve against the caller's folder, so launched ranks see the same files
    assert config.data_cfgs.train_datasets == [str(Path("data/prefs").absolute())]
    assert config.logger_cfgs.output_dir == str(Path("runs/rm").absolute())


def test_dotted_overrides_are_parsed_as_yaml_values():
    config = build_config(
        MINIMAL,
        [
            "train_cfgs.epochs=2",
            "train_cfgs.learning_rate=1e-4",
            "train_cfgs.gradient_checkpointing=true",
            "train_cfgs.max_steps=null",
            "data_cfgs.eval_datasets=[e1, e2]",
            "model_cfgs.model_name_or_path=other/model",
        ],
    )
    assert config.train_cfgs.epochs == 2
    assert config.train_cfgs.learning_rate == 1e-4
    assert config.train_cfgs.gradient_checkpointing is True
    assert config.train_cfgs.max_steps is None
    assert config.data_cfgs.eval_datasets == [str(Path("e1").absolute()), str(Path("e2").absolute())]
    assert config.model_cfgs.model_name_or_path == "other/model"


def test_unknown_override_key_is_an_error_with_a_suggestion():
    with pytest.raises(UsageError, match=r"unknown config key 'train_cfgs.epoch' \(did you mean 'epochs'\?\)"):
        build_config(MINIMAL, ["train_cfgs.epoch=2"])


def test_unknown_key_in_file_is_an_error_naming_it(tmp_path):
    path = write_config(tmp_path, dump_config(build_config(MINIMAL)).replace("learning_rate:", "learning_rat:"))
    with pytest.raises(UsageError, match=r"'train_cfgs.learning_rat' \(did you mean 'learning_rate'\?\)"):
        load_config(path)


def test_unknown_section_is_an_error():
    with pytest.raises(UsageError, match=r"unknown config section 'train_cfg' \(did you mean 'train_cfgs'\?\)"):
        build_config({**MINIMAL, "train_cfg": {"epochs": 1}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("train_cfgs.epochs=zero", r"train_cfgs.epochs: Input should be a valid integer"),
        ("train_cfgs.epochs=0", r"train_cfgs.epochs: Input should be greater than or equal to 1"),
        ("train_cfgs.zero_stage=4", r"train_cfgs.zero_stage: Input should be 0, 1, 2 or 3"),
        ("data_cfgs.truncation=cut", r"data_cfgs.truncation: Input should be 'drop', 'truncate_prompt_left' or 'error'"),
        ("train_cfgs.lr_scheduler_type=cosyne", r"train_cfgs.lr_scheduler_type: Input should be"),
        ("epochs=2", r"expected section.key=value"),
        ("train_cfgs.epochs", r"expected section.key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_expectation(override, message):
    with pytest.raises(UsageError, match=message):
        build_config(MINIMAL, [override])


def test_missing_required_keys_are_named():
    with pytest.raises(UsageError, match=r"model_cfgs: required.*logger_cfgs: required"):
        build_config({"data_cfgs": {"train_datasets": ["a"]}})
    with pytest.raises(UsageError, match=r"data_cfgs.train_datasets: required"):
        build_config({**MINIMAL, "data_cfgs": {}})


def test_unreadable_and_malformed_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(write_config(tmp_path, "train_cfgs: [unclosed\n"))
    with pytest.raises(UsageError, match="section 'train_cfgs' must be a mapping"):
        load_config(write_config(tmp_path, "train_cfgs: 3\n"))


def test_dump_then_load_round_trips_and_digest_ignores_chosen_keys(tmp_path):
    config = build_config(MINIMAL, ["train_cfgs.seed=7"])
    reloaded = load_config(write_config(tmp_path, dump_config(config)))
    assert reloaded == config
    assert reloaded.digest() == config.digest()
    other = build_config(MINIMAL, ["train_cfgs.seed=7", "train_cfgs.save_interval=5"])
    assert other.digest() != config.digest()
    assert other.digest(ignore=["train_cfgs.save_interval"]) == config.digest(ignore=["train_cfgs.save_interval"])


def test_parse_overrides_nests_by_section():
    assert parse_overrides(["train_cfgs.epochs=2", "logger_cfgs.log_type=none"]) == {
        "train_cfgs": {"epochs": 2},
        "logger_cfgs": {"log_type": "none"},
    }


@pytest.mark.parametrize("name, algorithm", [("sft.yaml", "sft"), ("rm.yaml", "rm")])
def test_example_configs_load_once_paths_are_given(name, algorithm):
    from align_core.trainers import get_trainer

    with pytest.raises(UsageError, match=r"data_cfgs.train_datasets: List should have at least 1 item.*model_name_or_path"):
        load_config(EXAMPLE_CONFIGS / name)
    config = load_config(EXAMPLE_CONFIGS / name, ["data_cfgs.train_datasets=[d]", "model_cfgs.model_name_or_path=m"])
    assert get_trainer(config.train_cfgs.algorithm).algorithm == algorithm


def test_unknown_algorithm_lists_the_known_ones():
    from align_core.trainers import get_trainer

    with pytest.raises(UsageError, match=r"unknown 'ppoo'; expected one of cm, dpo, grpo, ipo, kto, orpo, ppo, ppo_lag, rloo, rm, sft, simpo"):
        get_trainer(build_config(MINIMAL, ["train_cfgs.algorithm=ppoo"]).train_cfgs.algorithm)


def test_each_algorithm_gets_its_own_settings_with_its_paper_defaults():
    dpo = build_config({**MINIMAL, "train_cfgs": {"algorithm": "dpo"}})
    simpo = build_config({**MINIMAL, "train_cfgs": {"algorithm": "simpo"}})
    assert type(dpo.train_cfgs).__name__ == "DPOSettings" and dpo.train_cfgs.beta == 0.1
    assert type(simpo.train_cfgs).__name__ == "SimPOSettings" and simpo.train_cfgs.beta == 2.0
    assert simpo.to_dict()["train_cfgs"]["simpo_gamma"] == 0.5  # the algorithm's keys are in the dump (and digest)


def test_a_key_the_algorithm_does_not_read_names_the_algorithm_and_the_keys_it_reads():
    with pytest.raises(UsageError) as error:
        build_config({**MINIMAL, "train_cfgs": {"algorithm": "simpo", "kto_desirable_weight": 2.0}})
    message = str(error.value)
    assert "train_cfgs.kto_desirable_weight: simpo does not read this key (read by kto)" in message
    assert "simpo reads beta, liger_kernel, packing, simpo_gamma, torch_compile and the common keys" in message
    with pytest.raises(UsageError, match=r"sft does not read this key \(read by dpo, ipo, kto\).*sft reads liger_kernel, packing, torch_compile and the common keys"):
        build_config(MINIMAL, ["train_cfgs.reference=live"])
    with pytest.raises(UsageError, match=r"unknown config key 'train_cfgs.betta' \(did you mean 'beta'\?\)"):
        build_config({**MINIMAL, "train_cfgs": {"algorithm": "dpo", "betta": 0.2}})


def test_a_reference_model_is_an_error_for_an_algorithm_without_one():
    with pytest.raises(UsageError, match="model_cfgs.reference_model_name_or_path: orpo has no reference model"):
        build_config({**MINIMAL, "train_cfgs": {"algorithm": "orpo"},
                      "model_cfgs": {"model_name_or_path": "m", "reference_model_name_or_path": "r"}})


def test_ptx_datasets_and_their_weight_come_together_on_an_algorithm_with_a_ptx_term():
    grpo = {"algorithm": "grpo", "rewards": [{"name": "length_penalty"}]}
    config = build_config({**MINIMAL, "train_cfgs": {**grpo, "ptx_coef": 0.5},
                           "data_cfgs": {"train_datasets": ["data/a"], "ptx_datasets": ["data/sft"]}})
    assert config.data_cfgs.all_datasets() == [str(Path("data/a").absolute()), str(Path("data/sft").absolute())]
    with pytest.raises(UsageError, match=r"data_cfgs.ptx_datasets: sft has no PTX term \(grpo, ppo, ppo_lag, rloo do\)"):
        build_config({**MINIMAL, "data_cfgs": {"train_datasets": ["data/a"], "ptx_datasets": ["data/sft"]}})
    with pytest.raises(UsageError, match=r"train_cfgs.ptx_coef=0.5 needs data_cfgs.ptx_datasets"):
        build_config({**MINIMAL, "train_cfgs": {**grpo, "ptx_coef": 0.5}})
    with pytest.raises(UsageError, match=r"ptx_datasets is set but train_cfgs.ptx_coef is 0"):
        build_config({**MINIMAL, "train_cfgs": grpo, "data_cfgs": {"train_datasets": ["data/a"], "ptx_datasets": ["data/sft"]}})


def test_a_settings_value_error_names_the_algorithm_key():
    with pytest.raises(UsageError, match=r"train_cfgs.label_smoothing: .*less than or equal to 0.5"):
        build_config({**MINIMAL, "train_cfgs": {"algorithm": "dpo", "label_smoothing": 0.9}})


def test_a_trainer_module_registers_an_algorithm_with_its_settings(tmp_path):
    module = tmp_path / "my_trainer.py"
    module.write_text(
        "from pydantic import Field\n"
        "from align_core.config import TrainCfgs\n"
        "from align_core.trainers import SFTTrainer, register_trainer\n\n"
        "class MySettings(TrainCfgs):\n    temperature: float = Field(1.0, gt=0)\n\n"
        "@register_trainer\nclass MyTrainer(SFTTrainer):\n    algorithm = 'my-sft'\n    settings = MySettings\n"
    )
    with trainer_registry_restored():
        config = build_config({**MINIMAL, "train_cfgs": {"algorithm": "my-sft", "trainer_module": str(module), "temperature": 0.5}})
        assert config.train_cfgs.temperature == 0.5
        with pytest.raises(UsageError, match="trainer module .*no such file"):
            build_config({**MINIMAL, "train_cfgs": {"algorithm": "my-sft", "trainer_module": str(tmp_path / "gone.py")}})
