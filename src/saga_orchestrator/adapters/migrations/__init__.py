"""Numbered SQL migration files, one folder per dialect."""
