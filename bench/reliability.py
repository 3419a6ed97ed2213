"""The reliability suite's totals: bad input, kill -9 points, tampering.

    python bench/reliability.py [--kills 5] [--train-kills 3] [--seed 0] [--workdir bench_out/reliability]

Runs the corpus of ``tests/reliability/test_bad_input.py`` (every malformed row and file), kills a
materialisation and a training run at seeded random points (``tests/reliability/kill_points.py``) and
tampers with every input of a resumed training run (``tests/reliability/tampering.py``), then prints:
cases tried, crashes (an exception other than the one-line usage error), hangs, wrong outcomes, good
rows lost, kill points, partial artifacts seen, resumes equal, tamperings detected.
Not a timing benchmark: it counts, so it may run beside other work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "reliability")]


def bad_input_totals(workdir: Path) -> Counter:
    from test_bad_input import Hang, cases_by_group, expected_error, file_cases, materialize_rows, run_file_case

    totals: Counter = Counter()
    for group, cases in cases_by_group().items():
        totals["row cases"] += len(cases)
        try:
            result = materialize_rows(cases, workdir / "rows" / group.replace(" ", "_").replace("/", "_"))
        except Exception:  # noqa: BLE001  (a crash is what this counts)
            totals["crashes"] += len(cases)
            continue
        totals["wrong outcomes"] += sum(result.quarantined.get(position) != case.reason for position, case in result.cases.items())
        totals["good rows lost"] += len(set(result.good_expected) - set(result.good_arrived))
    for number, case in enumerate(file_cases()):
        totals["file cases"] += 1
        folder = workdir / "files" / str(number)
        try:
            source, outcome = run_file_case(case, folder, seconds=30)
        except Hang:
            totals["hangs"] += 1
            continue
        except Exception:  # noqa: BLE001
            totals["crashes"] += 1
            continue
        if case.error:
            totals["wrong outcomes"] += outcome.error != expected_error(case, folder, source)
        else:
            totals["wrong outcomes"] += outcome.error is not None or outcome.quarantined != case.quarantined
            totals["good rows lost"] += len(set(case.good) - set(outcome.arrived))
    return totals


def kill_totals(workdir: Path, seed: int, materialize_kills: int, train_kills: int) -> Counter:
    from kill_points import materialize_trials, training_trials
    from train_data import materialize_validated, supervised_rows, write_config

    from align_core.models.tiny import build_tiny_model
    from alignflow.samples import write_samples

    source = write_samples(workdir / "data", rows=6000, seed=seed)["alpaca"]
    trials = materialize_trials(Path(source), workdir / "materialize", seed, materialize_kills)
    model = build_tiny_model(workdir / "model", vocab_size=384, hidden_size=64, num_layers=2, num_heads=4,
                             max_position_embeddings=256)
    (workdir / "sft").mkdir(parents=True, exist_ok=True)
    data = materialize_validated(supervised_rows(48), "supervised", workdir / "sft", "sft")
    settings = {"train_cfgs": {"max_steps": 6, "save_interval": 2, "gradient_accumulation_steps": 2, "zero_stage": 1}}

    def config_for(output_dir: Path) -> Path:
        return write_config(workdir / f"{output_dir.name}.yaml", model, [data], output_dir, settings)

    trials += training_trials(config_for, workdir / "train", seed, train_kills)
    totals: Counter = Counter()
    for trial in trials:
        totals["kill points"] += 1
        totals["killed mid-run"] += trial.killed_while_running
        totals["partial artifacts seen"] += len(trial.partial_artifacts)
        totals["resumes equal"] += trial.rerun_equal
    return totals


def tamper_totals(workdir: Path) -> Counter:
    from tampering import tamper_trials
    from train_data import materialize_validated, preference_rows

    from align_core.models.tiny import build_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(workdir / "model", vocab_size=384, hidden_size=64, num_layers=2, num_heads=4,
                             max_position_embeddings=256)
    dataset = materialize_validated(preference_rows(24), "preference", workdir, "prefs")
    totals: Counter = Counter()
    for trial in tamper_trials(workdir, model, dataset):
        totals["tamperings"] += 1
        totals["tamperings detected"] += trial.detected and not trial.trained_after
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="kill points in a materialisation")
    parser.add_argument("--train-kills", type=int, default=3, help="kill points in a training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alignflow-reliability-"))
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    from align_core.paths import configure_environment

    configure_environment()
    totals = bad_input_totals(workdir / "bad_input")
    totals += kill_totals(workdir / "kills", args.seed, args.kills, args.train_kills)
    totals += tamper_totals(workdir / "tampering")
    order = ["row cases", "file cases", "crashes", "hangs", "wrong outcomes", "good rows lost", "kill points",
             "killed mid-run", "partial artifacts seen", "resumes equal", "tamperings", "tamperings detected"]
    for name in order:
        print(f"{name:24s} {totals[name]}")


if __name__ == "__main__":
    main()
