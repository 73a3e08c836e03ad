"""Prefect adapters: the job flow and its stage, gate and checkpoint tasks."""
