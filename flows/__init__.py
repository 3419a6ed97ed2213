"""Prefect layer. Configure alignflow's environment defaults before Prefect is imported."""

from tasks.prefect_env import configure_prefect

configure_prefect()
