"""Great Expectations suites that gate shard sets, and the runner that renders their reports.

- ``data_contracts.runner.validate_dataset(dataset_dir, suite=None, overrides=None) -> ValidationResult``
  validates every shard (streamed in record batches), writes ``validation.json`` + ``report.html``.
- ``data_contracts.gate.require_validated(dataset_dir)`` raises ``ValidationGateError`` unless the
  folder passed its contract and the record is current; ``validation_status(dataset_dir)``.
- Suites are YAML in ``data_contracts/suites/`` (see ``data_contracts.suite``); the checks run on
  per-row derived columns (``data_contracts.derive``).

Nothing here imports GX or Prefect at import time: the gate stays cheap for training and the CLI.
"""
