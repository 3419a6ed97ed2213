"""alignflow's library: shards, templates, models, data, losses, trainers. Usable without Prefect."""

__version__ = "0.1.0"
