"""Sparse dictionaries (SAEs, transcoders): training, analysis, steering and a CLI."""
