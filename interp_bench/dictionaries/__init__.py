"""The sparse dictionaries: activation functions, the module, sparse kernels, file format and
held-out evaluation."""

from interp_bench.dictionaries.dictionary import ForwardOutput, SparseDictionary
from interp_bench.dictionaries.evaluate import EvalStats, evaluate
from interp_bench.dictionaries.saelens_format import load_dictionary, save_dictionary

__all__ = [
    "EvalStats",
    "ForwardOutput",
    "SparseDictionary",
    "evaluate",
    "load_dictionary",
    "save_dictionary",
]
