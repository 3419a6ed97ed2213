"""Great Expectations suites that gate shard sets, and the runner that renders their reports."""
