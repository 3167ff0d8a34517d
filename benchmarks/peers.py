"""Peer trainers (SAELens, EleutherAI sparsify) driven one step at a time on our batches.

Each adapter owns one peer dictionary and exposes the same two calls, so the benchmark can feed
every trainer the same activation batch in lock-step and time each step on its own:

    peer.step(x)                  one optimiser step on x [B, d_in] (raw activations)
    with peer.dictionary() as d:  the peer's encode/decode in its evaluation state, behind the
                                  attributes `interp_bench.dictionaries.evaluate` reads

Peers keep their own defaults (optimiser, lr, schedule, init, auxiliary losses); only the
dictionary shape, k and the batch come from the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import Tensor

ARCHS = ("topk", "jumprelu", "relu")


class PeerDictionary:
    """A peer SAE as our evaluator sees a dictionary: it reads the batches' ``cfg.hook_in`` and
    reconstructs it; ``encode`` gives dense latents ``[B, d_sae]``, ``decode`` maps them back."""

    W_skip = None

    def __init__(
        self,
        encode: Callable[[Tensor], Tensor],
        decode: Callable[[Tensor], Tensor],
        weight: Tensor,
        d_in: int,
        d_sae: int,
        hook: str,
        w_dec: Tensor | None = None,
    ) -> None:
        self.encode, self.decode = encode, decode
        self.W_enc = weight  # the evaluator moves inputs to its device and dtype
        self.W_dec = w_dec  # [d_sae, d_in]: the splice pass reads its shape and dtype
        self.d_in = self.d_out = d_in
        self.d_sae = d_sae
        self.cfg = SimpleNamespace(hook_in=hook, hook_out=None)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x [..., d_in]``, as `interp_bench.analysis.splice` asks."""
        flat = x.reshape(-1, x.shape[-1])
        return self.decode(self.encode(flat)).reshape(*x.shape[:-1], -1)


class SAELensPeer:
    """SAELens 6.x: its `TrainingSAE` for the arch, trained by its own `SAETrainer.step`.

    `SAETrainer.fit` pulls batches from a data provider and, per batch, runs
    `maybe_reset_sparsity()`, `step(batch)` and `n_training_steps += 1`, then wandb logging and
    checkpointing (both off here). We run that same loop body on the batch we are handed, which
    is what fit() does with a data provider yielding our batches, minus the generator plumbing,
    and lets the benchmark interleave trainers step by step.
    """

    name = "sae_lens"

    def __init__(
        self,
        arch: str,
        d_in: int,
        d_sae: int,
        *,
        k: int,
        batch_size: int,
        total_tokens: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        coefficient: float | None = None,
    ) -> None:
        """``coefficient``: the sparsity coefficient (jumprelu: l0_coefficient, relu:
        l1_coefficient) for a matched-L0 sweep; None keeps SAELens's default."""
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(seed)
        device = str(device)
        if coefficient is not None and arch == "topk":
            raise ValueError("topk has no sparsity coefficient; set k instead")
        if arch == "topk":
            from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device=device))
        elif arch == "jumprelu":
            from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

            extra = {} if coefficient is None else {"l0_coefficient": coefficient}
            sae = JumpReLUTrainingSAE(
                JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device, **extra)
            )
        elif arch == "relu":
            from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

            extra = {} if coefficient is None else {"l1_coefficient": coefficient}
            sae = StandardTrainingSAE(
                StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device, **extra)
            )
        else:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        lr = SAETrainerConfig.lr
        cfg = SAETrainerConfig(
            total_training_samples=total_tokens,
            train_batch_size_samples=batch_size,
            # LanguageModelSAERunnerConfig.__post_init__ sets lr_end = lr / 10 and
            # to_sae_trainer_config() passes it on; SAETrainer asserts it is set.
            lr_end=lr / 10,
            device=device,
        )
        self.sae = sae
        self.trainer = SAETrainer(cfg, sae, data_provider=iter(()))
        self.config = {
            "sae": {k_: v for k_, v in vars(sae.cfg).items() if k_ != "metadata"},
            "trainer": {k_: v for k_, v in vars(cfg).items() if k_ != "logger"},
        }

    def step(self, x: Tensor) -> None:
        """The body of `SAETrainer.fit`'s loop, without wandb logging and checkpoints."""
        self.trainer.maybe_reset_sparsity()
        self.trainer.step(x)
        self.trainer.n_training_steps += 1

    @contextmanager
    def dictionary(self, hook: str = "x") -> Iterator[PeerDictionary]:
        """The SAE in eval mode (as SAELens evaluates it) until the block ends."""

        def encode(x: Tensor) -> Tensor:
            acts = self.sae.encode(x)
            return acts.to_dense() if acts.is_sparse else acts

        cfg = self.sae.cfg
        self.sae.eval()
        try:
            yield PeerDictionary(
                encode, self.sae.decode, self.sae.W_enc, cfg.d_in, cfg.d_sae, hook, self.sae.W_dec
            )
        finally:
            self.sae.train()


class SparsifyPeer:
    """EleutherAI sparsify 1.3: its `SparseCoder`, stepped the way its `Trainer.fit` steps it.

    `sparsify.Trainer` only trains from a language model's forward hooks, so its per-step logic is
    reproduced here on cached activations, with its defaults (`sparsify.config.TrainConfig`,
    loss_fn="fvu", optimizer="signum", auxk_alpha=0, no grad accumulation, no excluded tokens):

    - init (`Trainer.__init__`): `torch.manual_seed(seed)`, `SparseCoder(d_in, cfg, dtype=fp32)`
      (encoder = nn.Linear init, bias 0; W_dec = unit-norm copy of the encoder weight).
    - optimiser (`Trainer.__init__`, case "signum"): `ScheduleFreeWrapper(SignSGD(...),
      momentum=0.95)`, lr = 5e-3 / sqrt(num_latents / 2**14), no lr schedule.
    - per step (`Trainer.fit.hook`): on step 0, b_dec = batch mean; then every step
      `set_decoder_norm_to_unit_norm()`, loss = fvu + auxk_alpha * auxk + multi_topk_fvu / 8
      (fvu against the batch's total variance), backward; then (`Trainer.fit` loop)
      `remove_gradient_parallel_to_decoder_directions()`, optimiser step + zero_grad, and the
      tokens-since-fired bookkeeping.
    - evaluation (`Trainer._checkpoint`): `optimizer.eval()` swaps in the schedule-free average
      that sparsify saves; `optimizer.train()` swaps back.
    """

    name = "sparsify"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: int,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.config import SparseCoderConfig, TrainConfig
        from sparsify.sign_sgd import SignSGD
        from sparsify.sparse_coder import SparseCoder

        sae_cfg = SparseCoderConfig(expansion_factor=max(1, d_sae // d_in), num_latents=d_sae, k=k)
        cfg = TrainConfig(sae=sae_cfg, batch_size=batch_size, log_to_wandb=False, init_seeds=[seed])
        if cfg.optimizer != "signum" or cfg.loss_fn != "fvu":
            raise RuntimeError("sparsify's defaults changed; update benchmarks/peers.py")
        torch.manual_seed(seed)
        self.cfg = cfg
        self.sae = SparseCoder(d_in, sae_cfg, device, dtype=torch.float32)
        lr = cfg.lr or 5e-3 / (self.sae.num_latents / (2**14)) ** 0.5
        self.lr = lr
        self.opt = ScheduleFreeWrapper(SignSGD([dict(params=self.sae.parameters(), lr=lr)]), 0.95)
        self.opt.train()
        self.num_tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.did_fire = torch.zeros(d_sae, dtype=torch.bool, device=device)
        self.global_step = 0
        self.last_fvu = float("nan")
        self.config = {
            "sae": sae_cfg.to_dict(),
            "trainer": {
                k_: v
                for k_, v in cfg.to_dict().items()
                if k_ in ("optimizer", "loss_fn", "auxk_alpha", "dead_feature_threshold")
            },
            "lr": lr,
            "schedule_free_momentum": 0.95,
        }

    def step(self, x: Tensor) -> None:
        sae, cfg = self.sae, self.cfg
        if self.global_step == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        if sae.cfg.normalize_decoder:
            sae.set_decoder_norm_to_unit_norm()
        dead_mask = (
            self.num_tokens_since_fired > cfg.dead_feature_threshold if cfg.auxk_alpha > 0 else None
        )
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        self.did_fire[out.latent_indices.flatten()] = True
        self.last_fvu = float(out.fvu.detach())
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()

        if sae.cfg.normalize_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.num_tokens_since_fired += x.shape[0]
            self.num_tokens_since_fired[self.did_fire] = 0
            self.did_fire.zero_()
        self.global_step += 1

    @contextmanager
    def dictionary(self, hook: str = "x") -> Iterator[PeerDictionary]:
        """The schedule-free average sparsify saves, swapped in until the block ends."""
        sae = self.sae

        def encode(x: Tensor) -> Tensor:
            top_acts, top_idx, _ = sae.encode(x)
            return top_acts.new_zeros(len(x), sae.num_latents).scatter_(1, top_idx, top_acts)

        def decode(f: Tensor) -> Tensor:  # sparsify's own decoder, on the k largest latents
            top_acts, top_idx = f.topk(sae.cfg.k, dim=-1, sorted=False)
            return sae.decode(top_acts, top_idx)

        self.opt.eval()
        try:
            yield PeerDictionary(
                encode, decode, sae.encoder.weight.mT, sae.d_in, sae.num_latents, hook, sae.W_dec
            )
        finally:
            self.opt.train()
