"""alignflow's user-facing layer: the CLI and the demo."""

from align_core.paths import configure_environment

configure_environment()
