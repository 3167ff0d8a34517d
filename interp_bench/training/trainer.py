"""Train several sparse dictionaries on one pass of activation reads.

Every step reads one batch (all hooks of the same tokens) and takes one Adam step for each
dictionary, so a sweep over k or L1 coefficients, or SAEs on several hooks, costs one pass over
the shards. Inputs are scaled to mean norm sqrt(d) during training (so one learning rate fits
every hook) and the scale is folded back into the weights at save time.

Layout of `out_dir/NAME/`: `cfg.json` + `sae_weights.safetensors` (the dictionary's own save,
acting on raw activations), `train_cfg.json`, `metrics.jsonl`, `checkpoint/step_*/state.pt`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import torch

from activation_cache.models import default_device
from interp_bench.config import DictionaryConfig, Schedule, TrainConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary
from interp_bench.dictionaries.activations import Activation
from interp_bench.dictionaries.evaluate import DENSE_FRACTION
from interp_bench.training import averaging, ddp, guards
from interp_bench.training import checkpoint as ckpt
from interp_bench.training.allocator import keep_freed_memory
from interp_bench.training.optim_groups import load_optimizer, param_groups
from interp_bench.training.tracking import WandbLog, require_wandb

# Settings that may change between a run and its resume (or rerun) without changing its result.
RESUME_FREE = ("device", "autocast", "log_every", "checkpoint_every", "wandb", "extra")


class TrainingDiverged(ValueError):
    """Loss, gradients or weights became NaN/inf; the last good checkpoint is left untouched."""


def run_names(cfgs: list[DictionaryConfig]) -> list[str]:
    """Folder names: the config's name plus what a sweep varies (k, L1), made unique."""
    names = []
    for c in cfgs:
        name = c.name
        if c.arch in ("topk", "batchtopk"):
            name += f"-k{c.k}"
        elif c.arch == "relu":
            coef = c.l1_coefficient if c.sparsity == "l1" else c.kl_coefficient
            name += f"-{c.sparsity}{coef:g}"
        elif c.arch == "jumprelu":
            name += f"-l0{c.l0_coefficient:g}"
        names.append(name)
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if names.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            n = f"{n}-{seen[n]}"
        out.append(n)
    return out


def lr_factor(step: int, total: int, warmup: int, decay_start: float, shape: str) -> float:
    """Linear warm-up, flat, then linear-to-zero or cosine decay over the last fraction."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    start = int(decay_start * total)
    if step >= start and total > start:
        frac = min(1.0, (step - start) / (total - start))
        factor *= 1.0 - frac if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return factor


class Trainer:
    """One optimiser, dead-latent counter and input scale per dictionary; one shared data pass."""

    def __init__(
        self,
        dict_cfgs: list[DictionaryConfig],
        train_cfg: TrainConfig,
        *,
        stats: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        out_dir: str | Path | None = None,
        names: list[str] | None = None,
    ):
        if not dict_cfgs:
            raise ValueError("no dictionaries to train: pass at least one DictionaryConfig")
        require_wandb(train_cfg.wandb)  # before any work
        self.cfgs = list(dict_cfgs)
        self.train_cfg = train_cfg
        self.device = torch.device(device or train_cfg.device or default_device())
        if self.device.type == "cpu":
            keep_freed_memory()  # every step reallocates the same large buffers
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.names = names or run_names(self.cfgs)
        self.hooks = sorted({h for c in self.cfgs for h in dictionary_hooks(c)})
        self.world = ddp.world_size()
        # Resolved from the first batch's size: the trainer counts the tokens it is given.
        self.schedule: Schedule | None = None

        self.dicts: list[SparseDictionary] = []
        for c in self.cfgs:
            # Seed per dictionary so each one starts exactly as it would if trained alone.
            torch.manual_seed(train_cfg.seed)
            self.dicts.append(c.build().to(self.device))
        for d in self.dicts:
            ddp.broadcast_(list(d.parameters()) + list(d.buffers()))
        self.lrs = [train_cfg.dictionary_lr(c) for c in self.cfgs]
        steps = train_cfg.schedule().total_steps  # refreshed at the first step (its batch size)
        self.optims = [
            torch.optim.Adam(
                param_groups(d, lr, steps),
                lr=lr,
                betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
                eps=train_cfg.adam_eps,
                fused=True,  # one kernel over all parameters: 6x faster than foreach on CPU
            )
            for d, lr in zip(self.dicts, self.lrs, strict=True)
        ]
        # Tokens since each latent last fired (dead detection, AuxK) and a recent-window count
        # of tokens each latent fired on (dense detection).
        self.since_fired = [
            torch.zeros(c.n_latents, dtype=torch.long, device=self.device) for c in self.cfgs
        ]
        self.fire_counts = [
            torch.zeros(c.n_latents, dtype=torch.long, device=self.device) for c in self.cfgs
        ]
        self.window_tokens = 0
        self.scales: dict[str, float] = {}
        if stats is not None and train_cfg.normalize_inputs:
            for h in self.hooks:
                if h in stats:
                    self.scales[h] = _scale(stats[h].mean_norm, _dim(self.cfgs, h))
        self.initialised = False
        self.step_idx = 0
        self.tokens_seen = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.last_metrics: list[dict[str, float]] = []  # the latest logged metrics
        # With train_cfg.weight_average: each dictionary's average of its iterates, started at
        # the weights of the first step (after the data init).
        self.averages: list[averaging.Average] | None = None
        self._tracker: WandbLog | None = None  # with train_cfg.wandb, on the main rank

    # ---- one step -------------------------------------------------------------------------

    def step(self, batch: dict[str, torch.Tensor]) -> list[dict[str, float]]:
        """One optimiser step for every dictionary on the same batch; returns their metrics.

        Raises `TrainingDiverged` before touching any weight when a loss or gradient is NaN/inf.
        """
        batch = {h: self._take(batch, h) for h in self.hooks}
        if not self.initialised:
            self._init_from_batch(batch)
        tc = self.train_cfg
        n_tokens = next(iter(batch.values())).shape[0] * self.world
        if self.schedule is None:
            self.schedule = tc.schedule(n_tokens)
            # The lr rule counts the steps the run really takes (all ranks' tokens per step).
            steps = self.schedule.total_steps
            self.lrs = [tc.dictionary_lr(c, steps) for c in self.cfgs]
            for d, opt, lr in zip(self.dicts, self.optims, self.lrs, strict=True):
                for g, new in zip(opt.param_groups, param_groups(d, lr, steps), strict=True):
                    g["lr_scale"] = new["lr_scale"]
                for act in d.modules():
                    if isinstance(act, Activation):
                        act.plan(steps)
        sched = self.schedule
        if tc.weight_average > 0 and self.averages is None:
            self.averages = [averaging.start_average(d) for d in self.dicts]
        factor = lr_factor(
            self.step_idx, sched.total_steps, sched.warmup_steps, tc.decay_start, tc.lr_decay
        )
        warm = sched.sparsity_warmup_steps
        warmup = (self.step_idx + 1) / warm if warm > 0 else 1.0
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if tc.autocast and self.device.type == "cuda"
            else nullcontext()
        )

        rows, counts = [], []
        for i, (d, cfg) in enumerate(zip(self.dicts, self.cfgs, strict=True)):
            x, y = cfg.io(batch)
            with autocast:
                out = d.loss(
                    x,
                    y,
                    dead_mask=self.since_fired[i] >= sched.dead_window(cfg),
                    warmup=warmup,
                )
            out.loss.backward()
            params = [p for p in d.parameters() if p.grad is not None]
            grads = [p.grad for p in params]
            ddp.all_reduce_mean_(grads)
            d.post_backward()  # unit-norm decoders: drop the gradient along each row (in place)
            grad_norm = torch.nn.utils.get_total_norm(grads)
            if tc.grad_clip > 0:  # clip_grad_norm_ would scale every gradient even by 1.0
                torch.nn.utils.clip_grads_with_norm_(params, tc.grad_clip, grad_norm)
            counts.append(out.fire_counts)
            parts = (out.loss, out.mse, out.aux, out.sparsity, grad_norm, out.fvu, out.l0)
            rows.append(torch.stack([t.detach().float() for t in parts]))
        # Every rank sees the same averaged numbers, so all of them stop together on NaN.
        values = torch.stack(rows)
        ddp.all_reduce_mean_([values])
        values = values.tolist()
        guards.check_step(self, batch, values)  # bad input named by shard row; finite blow-ups
        for name, v in zip(self.names, values, strict=True):
            if not all(math.isfinite(t) for t in v):
                what = f"loss is {v[0]}" if not math.isfinite(v[0]) else f"gradient norm is {v[4]}"
                raise self._diverged(f"{what} for {name}", self.step_idx + 1)

        for i, (d, opt) in enumerate(zip(self.dicts, self.optims, strict=True)):
            for g in opt.param_groups:
                g["lr"] = self.lrs[i] * factor * g.get("lr_scale", 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            d.post_step()  # unit-norm decoders: renormalise rows
            if ddp.enabled():  # e.g. batchtopk's threshold EMA, updated from local rows
                ddp.all_reduce_mean_([b for b in d.buffers() if b.is_floating_point()])
            if self.averages is not None:
                decay = averaging.ema_decay(tc.weight_average, sched.total_steps)
                averaging.update_average(self.averages[i], d, decay)

        with torch.no_grad():
            for i, c in enumerate(counts):
                ddp.all_reduce_(c, "sum")
                self.since_fired[i] += n_tokens
                self.since_fired[i][c > 0] = 0
                self.fire_counts[i] += c
            self.window_tokens += n_tokens
            health = torch.stack(
                [
                    torch.stack(
                        [
                            (s >= sched.dead_window(cfg)).float().mean(),
                            (c > DENSE_FRACTION * max(self.window_tokens, 1)).float().mean(),
                        ]
                    )
                    for s, c, cfg in zip(self.since_fired, self.fire_counts, self.cfgs, strict=True)
                ]
            ).tolist()
        self.step_idx += 1
        self.tokens_seen += n_tokens
        if self.step_idx % max(1, tc.log_every) == 0:  # dense fraction is over one log window
            for c in self.fire_counts:
                c.zero_()
            self.window_tokens = 0

        metrics = []
        for i, (v, (dead, dense)) in enumerate(zip(values, health, strict=True)):
            loss, mse, aux, sparsity, grad_norm, fvu, l0 = v
            metrics.append(
                {
                    "step": self.step_idx,
                    "tokens": self.tokens_seen,
                    "loss": loss,
                    "mse": mse,
                    "fvu": fvu,
                    "l0": l0,
                    "dead_frac": dead,
                    "dense_frac": dense,
                    "aux": aux,
                    "sparsity": sparsity,
                    "grad_norm": grad_norm,
                    "lr": self.lrs[i] * factor,
                }
            )
        return metrics

    def _take(self, batch: dict[str, torch.Tensor], hook: str) -> torch.Tensor:
        if hook not in batch:
            raise ValueError(f"batch has no hook {hook!r} (it has {', '.join(sorted(batch))})")
        x = batch[hook].to(self.device, torch.float32, non_blocking=True)
        return x * self.scales[hook] if hook in self.scales else x

    def _init_from_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Estimate missing input scales and set b_dec from the first batch (every rank's rows)."""
        full = {h: ddp.all_gather_cat(x) for h, x in batch.items()}
        if self.train_cfg.normalize_inputs:
            for h in self.hooks:
                if h not in self.scales:
                    scale = _scale(full[h].norm(dim=-1).mean().item(), full[h].shape[-1])
                    self.scales[h] = scale
                    batch[h] = batch[h] * scale
                    full[h] = full[h] * scale
        for d, cfg in zip(self.dicts, self.cfgs, strict=True):
            x, target = cfg.io(full)
            d.init_from_data(x, target, method=self.train_cfg.init_b_dec)
            d.post_step()  # start from unit-norm decoder rows where training keeps them so
        self.initialised = True

    def _diverged(self, what: str, step: int) -> TrainingDiverged:
        last = self._last_checkpoint_step()
        kept = f"last good checkpoint (step {last}) kept" if last is not None else "no checkpoint"
        return TrainingDiverged(
            f"training diverged at step {step}: {what}; {kept}; "
            f"lower the learning rate (--lr, now {self.lrs[0]:.2e}) or check the activations"
        )

    # ---- checkpoints ------------------------------------------------------------------------

    def _run_dirs(self) -> list[Path]:
        if self.out_dir is None:
            raise ValueError("this Trainer has no out_dir; pass out_dir= to save or checkpoint")
        return [self.out_dir / n for n in self.names]

    def _last_checkpoint_step(self) -> int | None:
        if self.out_dir is None:
            return None
        return ckpt.latest_common_step([p / "checkpoint" for p in self._run_dirs()])

    def _check_weights(self) -> None:
        for name, d in zip(self.names, self.dicts, strict=True):
            for pname, p in d.named_parameters():
                if not torch.isfinite(p).all():
                    raise self._diverged(f"weight {pname} of {name} is not finite", self.step_idx)

    def save_checkpoint(self) -> None:
        """Write every dictionary's checkpoint for the current step, then prune older ones."""
        self._check_weights()
        if self._last_checkpoint_step() == self.step_idx:
            return  # resumed at this step and took none since: the checkpoint is current
        if ddp.is_main():
            shared = {
                "step": self.step_idx,
                "tokens_seen": self.tokens_seen,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "window_tokens": self.window_tokens,
                "initialised": self.initialised,
                "scales": dict(self.scales),
                "rng": ckpt.rng_state(),
            }
            dirs = self._run_dirs()
            for i, run in enumerate(dirs):
                state = dict(
                    shared,
                    model=self.dicts[i].state_dict(),
                    optim=self.optims[i].state_dict(),
                    since_fired=self.since_fired[i],
                    fire_counts=self.fire_counts[i],
                )
                if self.averages is not None:
                    state["average"] = self.averages[i]
                ckpt.write(run / "checkpoint", self.step_idx, state)
        ddp.barrier()  # every rank holds this step before any rank drops an older one
        if ddp.is_main():
            for run in self._run_dirs():
                ckpt.prune(run / "checkpoint", self.step_idx)

    def resume(self) -> bool:
        """Load the newest checkpoint all dictionaries share; False when there is none."""
        step = self._last_checkpoint_step()
        if step is None:
            return False
        for i, run in enumerate(self._run_dirs()):
            state = ckpt.read(run / "checkpoint", step, map_location=self.device)
            self.dicts[i].load_state_dict(state["model"])
            load_optimizer(self.optims[i], state["optim"])
            self.since_fired[i].copy_(state["since_fired"])
            self.fire_counts[i].copy_(state["fire_counts"])
            if "average" in state and self.train_cfg.weight_average > 0:
                self.averages = self.averages or [{} for _ in self.dicts]
                self.averages[i] = state["average"]
        self.step_idx = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.window_tokens = state["window_tokens"]
        self.initialised = state["initialised"]
        self.scales = dict(state["scales"])
        ckpt.set_rng_state(state["rng"])
        for path in self._run_dirs():
            _truncate_metrics(path / "metrics.jsonl", self.step_idx)
        return True

    # ---- the loop -----------------------------------------------------------------------------

    def _prepare_out_dir(self, resume: bool) -> bool:
        """Write configs; resume when asked and a matching checkpoint exists."""
        resumed = False
        dirs = self._run_dirs()
        if resume:
            for run, cfg in zip(dirs, self.cfgs, strict=True):
                if (run / "checkpoint").is_dir():
                    check_same_run(run, cfg, self.train_cfg)
            resumed = self.resume()
        if not resumed and ddp.is_main():
            for run in dirs:
                (run / "metrics.jsonl").unlink(missing_ok=True)
                ckpt.prune(run / "checkpoint", 1 << 62)
        if ddp.is_main():
            for run, cfg in zip(dirs, self.cfgs, strict=True):
                run.mkdir(parents=True, exist_ok=True)
                (run / "train_cfg.json").write_text(self.train_cfg.to_json() + "\n")
                (run / "dict_cfg.json").write_text(cfg.to_json() + "\n")
        ddp.barrier()
        return resumed

    def fit(
        self, source: Iterable[dict[str, torch.Tensor]], *, resume: bool = True
    ) -> list[SparseDictionary]:
        """Train to `train_cfg.tokens`, checkpointing and logging; returns the dictionaries
        (folded to act on raw activations, and saved when the trainer has an out_dir).

        `source` is an `ActivationReader` (resumed at the exact batch through
        `batches(epoch, start_batch)`) or any re-iterable of dict batches (skipped ahead).
        """
        from tqdm.auto import tqdm

        self.source = source  # guards name the shard rows of a bad batch through it
        if self.out_dir is not None:
            self._prepare_out_dir(resume)
        logging = self.out_dir is not None and ddp.is_main()
        with ExitStack() as stack:
            logs = (
                [stack.enter_context(open(p / "metrics.jsonl", "a")) for p in self._run_dirs()]
                if logging
                else []
            )
            if self.train_cfg.wandb is not None and ddp.is_main():
                self._tracker = WandbLog(
                    self.train_cfg.wandb,
                    self.names,
                    {"train": self.train_cfg.to_dict(), "dictionaries": dict(zip(
                        self.names, [c.to_dict() for c in self.cfgs], strict=True))},
                    self.out_dir,
                )  # fmt: skip
                stack.callback(self._tracker.finish)
            bar = stack.enter_context(
                tqdm(
                    total=self.train_cfg.tokens,
                    initial=self.tokens_seen,
                    disable=not ddp.is_main(),
                    unit="tok",
                    unit_scale=True,
                )
            )
            self._clock = (time.perf_counter(), self.tokens_seen)
            self._run_epochs(source, logs, bar)
        if self.out_dir is None:
            self._check_weights()
            return self.folded()
        self.save_checkpoint()
        return self.save()

    @property
    def done(self) -> bool:
        """Whether the token budget is spent (the step that crosses it is the last)."""
        return self.tokens_seen >= self.train_cfg.tokens

    def _run_epochs(self, source, logs: list, bar) -> None:
        while not self.done:
            got_any = False
            batches = _batches(source, self.epoch, self.batch_in_epoch)
            try:
                while not self.done:
                    batch = next(batches, None)
                    # Ranks may hold different numbers of rows: all move on together.
                    if not ddp.all_true(batch is not None):
                        break
                    got_any = True
                    self.batch_in_epoch += 1
                    self._after_step(self.step(batch), logs, bar)
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()
            if self.done:
                return
            if not got_any and self.batch_in_epoch == 0:
                if self.step_idx == 0:
                    raise ValueError(
                        "the activation source yielded no batches; "
                        "check --activations and --batch-size"
                    )
                # A one-shot iterator ran dry: keep what we have, but say so.
                warnings.warn(
                    f"the activation source ran dry after {self.tokens_seen:,} of "
                    f"{self.train_cfg.tokens:,} tokens; pass a re-iterable source or a reader",
                    stacklevel=3,
                )
                return
            self.epoch += 1
            self.batch_in_epoch = 0

    def _after_step(self, metrics: list[dict[str, float]], logs: list, bar) -> None:
        tc = self.train_cfg
        done = self.done
        bar.update(self.tokens_seen - bar.n)
        if self.step_idx % max(1, tc.log_every) == 0 or done:
            now = time.perf_counter()
            t0, tok0 = self._clock
            tps = (self.tokens_seen - tok0) / max(now - t0, 1e-9)
            self._clock = (now, self.tokens_seen)
            self.last_metrics = metrics
            for i, m in enumerate(metrics):
                m["tokens_per_s"] = tps
                if logs:
                    logs[i].write(json.dumps(m) + "\n")
                    logs[i].flush()
            if self._tracker is not None:
                self._tracker.log(metrics)
            m = metrics[0]
            bar.set_postfix(
                fvu=f"{m['fvu']:.3f}",
                l0=f"{m['l0']:.1f}",
                dead=f"{m['dead_frac']:.2f}",
                tok_s=f"{tps:.3g}",
            )
        every = tc.checkpoint_every
        if every > 0 and self.step_idx % every == 0 and self.out_dir is not None and not done:
            self.save_checkpoint()

    # ---- saving -----------------------------------------------------------------------------

    def folded(self) -> list[SparseDictionary]:
        """Copies of the dictionaries acting on raw activations (input scale folded in): the
        averages of their iterates with train_cfg.weight_average, else the last iterates."""
        avgs = self.averages or [None] * len(self.dicts)
        return [
            (copy.deepcopy(d) if a is None else averaging.averaged_copy(d, a)).fold_hook_scales(
                self.scales
            )
            for d, a in zip(self.dicts, avgs, strict=True)
        ]

    def save(self) -> list[SparseDictionary]:
        """Save every dictionary (raw-activation weights) with its configs; returns them."""
        self._check_weights()
        dicts = self.folded()
        if ddp.is_main():
            for run, d in zip(self._run_dirs(), dicts, strict=True):
                meta = {"step": str(self.step_idx), "tokens": str(self.tokens_seen)}
                save_dictionary(d, run, metadata=meta)
                (run / "train_cfg.json").write_text(self.train_cfg.to_json() + "\n")
        ddp.barrier()
        return dicts


def train(
    dict_cfgs: list[DictionaryConfig],
    train_cfg: TrainConfig,
    reader: Iterable[dict[str, torch.Tensor]],
    out_dir: str | Path | None,
    *,
    stats: dict[str, Any] | None = None,
    resume: bool = True,
) -> list[SparseDictionary]:
    """Train `dict_cfgs` together on one pass of `reader`; saves under `out_dir/NAME/`."""
    return Trainer(dict_cfgs, train_cfg, stats=stats, out_dir=out_dir).fit(reader, resume=resume)


# ---- helpers --------------------------------------------------------------------------------


def dictionary_hooks(cfg) -> list[str]:
    """Hooks one dictionary reads: input and target, or every layer's for a CLT."""
    return cfg.hooks


def _dim(cfgs: list[DictionaryConfig], hook: str) -> int:
    """Width of `hook`, as the first dictionary that reads it says."""
    return next(c.dim(hook) for c in cfgs if hook in c.hooks)


def _scale(mean_norm: float, d: int) -> float:
    if not mean_norm > 0 or not math.isfinite(mean_norm):
        raise ValueError(f"activation mean norm is {mean_norm}; the cache looks empty or corrupt")
    return math.sqrt(d) / mean_norm


def _batches(source, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
    if hasattr(source, "batches"):
        return iter(source.batches(epoch, start))
    return itertools.islice(iter(source), start, None)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from, so the log reads as one run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    path.write_text("".join(line + "\n" for line in keep))


RERUN_FIX = (
    "rerun with the original arguments, use another --out, or pass --no-resume to start over"
)


def check_same_run(
    run: Path, cfg: DictionaryConfig, train_cfg: TrainConfig, fix: str = RERUN_FIX
) -> None:
    """Refuse to resume or reuse a run folder written with other settings (it would silently mix
    two runs); settings in ``RESUME_FREE`` may differ. ``fix`` ends the message: what the
    caller's command offers."""
    for fname, new in (("dict_cfg.json", cfg.to_dict()), ("train_cfg.json", train_cfg.to_dict())):
        path = run / fname
        if not path.exists():
            continue
        old = json.loads(path.read_text())
        diff = [k for k in new if k not in RESUME_FREE and k in old and old[k] != new[k]]
        if diff:
            raise ValueError(f"{run} was trained with different {', '.join(diff)}; {fix}")
