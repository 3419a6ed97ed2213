"""Versioned expectation suites, one YAML file per shard kind plus shared fragments (see ``data_contracts.suite``)."""
