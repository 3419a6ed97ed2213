"""alignflow's user-facing layer: the CLI and the demo."""

from tasks.prefect_env import configure_prefect

configure_prefect()
