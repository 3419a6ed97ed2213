"""Prefect layer. Configure alignflow's environment defaults before Prefect is imported."""

from align_core.paths import configure_environment

configure_environment()
