"""A tiny randomly initialised GPT-2-class model: the stand-in for a real one in the tests and in
the benchmarks' fallback when the embedded SmolLM2 is not available."""

from __future__ import annotations


def tiny_random_model(
    tokenizer=None,
    n_layers: int = 2,
    d_model: int = 64,
    seed: int = 0,
    normalization: str = "LNPre",
):
    """A `HookedTransformer` (GELU MLP, learned positions) with the GPT-2 tokenizer by default.

    Layer norms are folded ("LNPre"), as `HookedTransformer.from_pretrained("gpt2")` gives by
    default, so `ln2.hook_normalized` is exactly what the MLP reads.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if tokenizer is None:
        from activation_cache.tokenizers import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=4,
        d_head=d_model // 4,
        d_mlp=4 * d_model,
        n_ctx=256,
        d_vocab=len(tokenizer),
        act_fn="gelu_new",
        normalization_type=normalization,
        positional_embedding_type="standard",
        default_prepend_bos=True,
        model_name="tiny-gpt2",
        seed=seed,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model
