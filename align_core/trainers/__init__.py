"""Trainers: one small class per algorithm over the shared loop (base.py) and DeepSpeed engine (engine.py)."""
