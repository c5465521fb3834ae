"""Training the tiny model on MQAR: one run per (learning rate, seed), the best rate reported.

Each run builds a fresh model (`torch.manual_seed(seed)` first, so the variant's own draws are
seeded too), trains it with AdamW on fresh sequences every step (an endless training stream,
seeded by the run's seed), a linear warmup then a cosine decay of the rate, gradients clipped
at norm 1, and measures accuracy on held-out sequences drawn from another seed (the same for
every run and variant): the fraction of query positions whose argmax logit is the right value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from harness.kinds.mqar.data import IGNORE, MQARSpec, generator, mqar_batch

EVAL_SEED = 2_147_483_000  # held-out sequences: a seed no training stream uses (those are seed * 2 + 1)


@dataclass(frozen=True)
class TrainSpec:
    """How one model is trained and evaluated."""

    steps: int
    batch: int
    lr: float
    seed: int
    warmup: float = 0.1  # fraction of the steps with a linear warmup
    weight_decay: float = 0.1
    eval_examples: int = 512
    eval_batch: int = 128
    device: str = "cpu"


@dataclass
class RunResult:
    """One (lr, seed) run: accuracy on the held-out sequences, the last loss, its wall time."""

    lr: float
    seed: int
    accuracy: float
    final_loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)  # training loss every `log_every` steps


def lr_at(step: int, spec: TrainSpec) -> float:
    """Learning rate at `step` (0-based): linear warmup over `warmup * steps`, then cosine to 0."""
    warm = max(1, int(spec.warmup * spec.steps))
    if step < warm:
        return spec.lr * (step + 1) / warm
    progress = (step - warm) / max(1, spec.steps - warm)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def masked_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the query positions only. logits (B, N, V), targets (B, N) with IGNORE."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def evaluate(model: nn.Module, task: MQARSpec, spec: TrainSpec) -> float:
    """Fraction of held-out query positions predicted right (argmax over the whole vocabulary); NaN
    when the model's logits are not finite on some held-out sequence (an argmax of NaNs is not a
    prediction: the case then ends `nan`, never `ok` with a low accuracy)."""
    model.eval()
    gen = generator(EVAL_SEED)
    right = total = 0
    for start in range(0, spec.eval_examples, spec.eval_batch):
        tokens, targets = mqar_batch(task, min(spec.eval_batch, spec.eval_examples - start), gen)
        tokens, targets = tokens.to(spec.device), targets.to(spec.device)
        logits = model(tokens)
        if not bool(torch.isfinite(logits).all()):
            model.train()
            return float("nan")
        pred = logits.argmax(dim=-1)
        query = targets != IGNORE
        right += int((pred[query] == targets[query]).sum())
        total += int(query.sum())
    model.train()
    return right / total


def train_one(
    make_model: Callable[[], nn.Module], task: MQARSpec, spec: TrainSpec, log_every: int = 50
) -> RunResult:
    """Build a model after seeding torch with `spec.seed`, train it, evaluate it.

    A non-finite loss stops the run early; its accuracy is then measured as it stands.
    """
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = make_model()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.98),
        fused=True,  # one kernel for every parameter: the step of a tiny model is mostly overhead
    )
    gen = generator(2 * spec.seed + 1)
    losses: list[float] = []
    loss = torch.tensor(float("nan"))
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        tokens, targets = mqar_batch(task, spec.batch, gen)
        loss = masked_loss(model(tokens.to(spec.device)), targets.to(spec.device))
        if not torch.isfinite(loss):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == spec.steps - 1:
            losses.append(float(loss.detach()))
    accuracy = evaluate(model, task, spec)
    return RunResult(spec.lr, spec.seed, accuracy, float(loss.detach()), time.perf_counter() - t0, losses)
