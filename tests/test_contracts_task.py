"""The contract as a Prefect task, run for real: artifacts keyed by dataset, caching by shard digests
+ suite version, and a failed contract failing the flow run (also inside the materialise flow)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from test_contracts_support import clean_samples, write_dataset

from align_core.shards.manifest import MANIFEST_NAME
from align_core.shards.schema import Kind
from data_contracts.gate import ValidationGateError, require_validated, validation_status
from data_contracts.results import VALIDATION_NAME, read_validation
from tasks.validate import artifact_key, validate_shards

pytestmark = pytest.mark.slow


@flow
def contract_flow(dataset_dir: Path) -> str:
    """The task's final state name: Completed when it ran, Cached when its result was reused."""
    return validate_shards(str(dataset_dir), return_state=True).name


@flow
def gated_flow(dataset_dir: Path) -> bool:
    """How a pipeline uses the task: a failed contract raises and fails this flow run."""
    return validate_shards(str(dataset_dir)).passed


def artifact_markdown(key: str) -> list[str]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return [artifact.data for artifact in artifacts]


def test_artifact_key_is_lowercase_letters_digits_and_dashes():
    assert artifact_key("AbC_12/x") == "contract-abc-12-x"


def test_task_publishes_the_report_and_is_cached_while_the_record_is_current(prefect_harness, tmp_path):
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, clean_samples(Kind.SUPERVISED))

    first = contract_flow(dataset_dir)
    validated_at = read_validation(dataset_dir).validated_at
    second = contract_flow(dataset_dir)  # the first run stored its result under the content key
    third = contract_flow(dataset_dir)

    assert (first, second, third) == ("Completed", "Cached", "Cached")
    assert read_validation(dataset_dir).validated_at == validated_at
    markdown = artifact_markdown(artifact_key(dataset_dir.name))
    assert len(markdown) >= 1 and markdown[0].startswith("### Data contract PASSED")
    assert f"`{dataset_dir.name}` (supervised, 40 rows)" in markdown[0]

    (dataset_dir / VALIDATION_NAME).unlink()  # a lost record is never papered over by the cache
    assert contract_flow(dataset_dir) == "Completed"
    assert validation_status(dataset_dir) == "passed"


def test_failed_contract_fails_the_flow_run(prefect_harness, tmp_path):
    samples = clean_samples(Kind.PREFERENCE)
    samples[30]["rejected"] = samples[30]["chosen"]
    dataset_dir = write_dataset(tmp_path, Kind.PREFERENCE, samples)

    state = gated_flow(dataset_dir, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValidationGateError)
    assert "chosen_differs_from_rejected (1 of 40 rows, e.g. s-030)" in str(error)
    markdown = artifact_markdown(artifact_key(dataset_dir.name))
    assert markdown[0].startswith("### Data contract FAILED: 1 error(s)")


BROKEN_TEMPLATE = '''
from align_core.shards.conversation import text_message
from align_core.templates import Template, register_template


@register_template("BrokenChat")
class BrokenChat(Template):
    """Emits conversations that start with the assistant (every 4th row) or have an empty answer
    (every 4th row, offset 1); nothing in formatting rejects them."""

    def format_supervised_sample(self, raw):
        question, answer, index = raw["question"], raw["answer"], raw["n"]
        if index % 4 == 0:
            return [text_message("assistant", answer), text_message("user", question), text_message("assistant", answer)], None
        if index % 4 == 1:
            return [text_message("user", question), text_message("assistant", "")], None
        return [text_message("user", question), text_message("assistant", answer)], None
'''


def test_materialise_flow_stops_shards_of_a_broken_custom_template(prefect_harness, tmp_path):
    from flows.materialize import materialize

    template_module = tmp_path / "broken_template.py"
    template_module.write_text(textwrap.dedent(BROKEN_TEMPLATE))
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(json.dumps({"n": n, "question": f"q{n}?", "answer": f"a{n}."}) + "\n" for n in range(20)))
    out = tmp_path / "out"

    state = materialize(
        source=str(source), template="BrokenChat", kind="supervised", out=str(out), template_module=str(template_module), return_state=True
    )

    assert state.is_failed()
    (dataset_dir,) = [path.parent for path in out.glob(f"*/{MANIFEST_NAME}")]
    failed = {r.name: r.unexpected_count for r in read_validation(dataset_dir).failures}
    assert failed == {"roles_alternate": 5, "no_empty_text[messages]": 5}
    with pytest.raises(ValidationGateError, match="data contract failed: failed no_empty_text\\[messages\\] \\(5 of 20 rows"):
        require_validated(dataset_dir)


def test_materialise_flow_validates_good_shards_by_default(prefect_harness, tmp_path):
    from flows.materialize import materialize

    source = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": f"Name a colour number {n}.", "input": "", "output": f"Colour {n} is blue."} for n in range(12)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    dataset_dir = materialize(source=str(source), template="Alpaca", kind="supervised", out=str(tmp_path / "out"))

    assert validation_status(dataset_dir) == "passed"
    require_validated(dataset_dir)
