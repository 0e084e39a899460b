"""Pipelines: thin functions over the reward that read rows and write results (score, demo, ...)."""
