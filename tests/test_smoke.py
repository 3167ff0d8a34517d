def test_tiny_model_runs(tiny_model):
    logits = tiny_model("Hello world")
    assert logits.shape[-1] == 50257
