"""Analysis of trained dictionaries: density, top examples, splicing, steering, reports."""
