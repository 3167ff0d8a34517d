"""Stop training on bad input or an exploded loss, and say which of the two it was.

The trainer's own check catches NaN/inf losses and blames the learning rate. Two failures slip
past it or get the wrong blame:

* **Bad input.** A flipped exponent in a float32 shard is a finite -6e36; NaN/inf rows are
  corrupt data. Either ruins the weights in one step. Every batch's largest |value| per hook is
  compared with `INPUT_LIMIT` times the typical row norm of the first batch this process saw
  (one `aminmax` per hook per step: 0.7 ms for 4096 x 576 floats on one core, <1% of a step).
  Real activations stay far below: on SmolLM2-135M layer 15 (16k Shakespeare tokens) the largest
  element of resid_post is 148x the first batch's typical row norm (mlp_in 1.0x, mlp_out 1.2x),
  so `INPUT_LIMIT` = 1e4 leaves a 68x margin and still flags a flipped float32 exponent
  (-6e36) by ~30 orders of magnitude. A bad batch is named by shard file and row (the reader
  recomputes where the rows came from, so serving costs nothing extra).
* **Finite explosion.** A loss that grows without overflowing trains on to rc 0 and saves a
  useless dictionary (fvu 5.5e9 was seen). FVU 1 is what predicting the mean scores; FVU above
  `FVU_LIMIT` = 1e3 means the reconstruction error is ~30x the data's spread, a state no run
  recovers from; a loss above `LOSS_GROWTH` = 1e6 times the first loss this process logged
  catches objectives whose FVU is not the loss (sparsity terms). Either stops the run before the
  weights of that step are applied, so the last checkpoint stays the last good state.
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import torch

from interp_bench.training import ddp

INPUT_LIMIT = 1e4  # |x| above this many first-batch typical row norms is not an activation
FVU_LIMIT = 1e3
LOSS_GROWTH = 1e6
_SHOWN_ROWS = 3

# Per trainer: first loss per dictionary, reference row norm per hook (this process only).
_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_step(trainer, batch: dict[str, torch.Tensor], values: list[list[float]]) -> None:
    """Raise `TrainingDiverged` naming the cause when `batch` (as the dictionaries saw it) holds
    non-finite or absurd values, or a loss in `values` ([loss, mse, aux, sparsity, grad_norm,
    fvu, l0] per dictionary) exploded while staying finite."""
    state = _STATE.setdefault(trainer, {"first": None, "norm": {}})
    bad_hook = _bad_input(batch, state["norm"])
    if not ddp.all_true(bad_hook is None):
        raise _input_error(trainer, batch, bad_hook, state["norm"])
    if state["first"] is None:
        state["first"] = [v[0] for v in values]
    for name, v, first in zip(trainer.names, values, state["first"], strict=True):
        loss, fvu = v[0], v[5]
        if not (math.isfinite(loss) and math.isfinite(fvu)):
            return  # the trainer's own check reports non-finite losses
        grown = first > 0 and loss > LOSS_GROWTH * first
        if fvu > FVU_LIMIT or grown:
            from interp_bench.training.trainer import TrainingDiverged

            what = f"fvu {fvu:.3g}" if fvu > FVU_LIMIT else f"loss {loss:.3g} (first {first:.3g})"
            raise TrainingDiverged(
                f"training exploded at step {trainer.step_idx + 1}: {what} for {name} on clean "
                f"input; {_kept(trainer)}; nothing was saved; lower the learning rate (--lr, "
                f"now {trainer.lrs[0]:.2e}) and rerun with --no-resume"
            )


def _bad_input(batch: dict[str, torch.Tensor], norms: dict[str, float]) -> str | None:
    """The first hook whose batch holds NaN/inf or values beyond the limit, else None."""
    for hook, x in batch.items():
        if x.numel() == 0:
            continue
        if hook not in norms:  # reference: the first batch's typical row norm (finite rows)
            rows = x[torch.isfinite(x).all(1)].norm(dim=1)
            ref = max(float(rows.median()), float(rows.mean())) if rows.numel() else 0.0
            norms[hook] = ref if ref > 0 else math.inf  # all-zero input: check finiteness only
        lo, hi = torch.aminmax(x)  # one pass, no temporary (|x| would allocate a copy)
        peak = max(-float(lo), float(hi))
        if not math.isfinite(peak) or peak > INPUT_LIMIT * norms[hook]:
            return hook
    return None


def bad_rows(x: torch.Tensor, norm: float) -> list[int]:
    """Rows of `x` holding NaN/inf or an element beyond the limit."""
    bad = ~torch.isfinite(x).all(1) | (x.abs().nan_to_num(0.0).amax(1) > INPUT_LIMIT * norm)
    # (only on failure, so the copies here cost nothing in a healthy run)
    return bad.nonzero().flatten().tolist()


def _input_error(trainer, batch, hook: str | None, norms: dict[str, float]):
    from interp_bench.training.trainer import TrainingDiverged

    step = trainer.step_idx + 1
    kept = _kept(trainer)
    if hook is None:
        return TrainingDiverged(
            f"training stopped at step {step}: another rank's batch holds NaN/inf or absurd "
            f"activations (its message names the rows); {kept}"
        )
    x = batch[hook]
    rows = bad_rows(x, norms[hook])
    finite = bool(torch.isfinite(x[rows]).all())
    what = f"values up to {float(x[rows].abs().amax()):.3g}" if finite else "NaN/inf"
    source = getattr(trainer, "source", None)
    where, fix = _where(source, trainer.epoch, trainer.batch_in_epoch - 1, rows)
    return TrainingDiverged(
        f"training stopped at step {step}: the input holds {what} in {hook} at {where}; {kept}; "
        f"the activations are at fault, not the learning rate: {fix}"
    )


def _where(source, epoch: int, batch: int, rows: list[int]) -> tuple[str, str]:
    """Where the rows came from, and the fix to suggest."""
    more = f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    locate = getattr(source, "locate", None)
    if locate is None:
        shown = ", ".join(map(str, rows[:_SHOWN_ROWS]))
        return f"batch {batch} of epoch {epoch}, rows {shown}{more}", "check the data source"
    found = locate(epoch, batch, rows[:_SHOWN_ROWS])
    shown = ", ".join(f"{f} row {r} (sequence {s}, position {p})" for f, r, s, p in found)
    cache = Path(getattr(source, "dir", "CACHE"))
    fix = f"run `interp-bench inspect --deep {cache}` and re-cache it"
    return f"{shown}{more} of {cache}", fix


def _kept(trainer) -> str:
    last = trainer._last_checkpoint_step()
    return "no checkpoint" if last is None else f"the last good checkpoint (step {last}) is kept"
