"""What a distillation run is (Recipe) and where it stands (State, Point)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.services.distill.losses import LOSSES

MODES = ("auto", "logits", "sequence")


@dataclass
class Recipe:
    """Everything that defines a distillation run; kept in the checkpoint and the manifest."""

    student: str
    data: str
    name: str
    teacher: str | None = None
    mode: str = "auto"
    loss: str = "kl"
    top_k: int = 16
    ce_weight: float = 0.1
    lora: bool = False
    lora_rank: int = 16
    lr: float | None = None  # default: 5e-5 full, 5e-4 LoRA
    epochs: float = 1.0
    seq_len: int = 512
    batch_tokens: int = 4096  # trained tokens per optimizer step
    max_minutes: float | None = None
    token_budget: int | None = None
    held_out_share: float = 0.05
    eval_every: int = 25  # optimizer steps
    checkpoint_minutes: float = 10.0
    train_embeddings: bool = False
    field: str | None = None
    balance: bool = False  # repeated answers (labels) drawn to the same count each
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.loss not in LOSSES:
            raise UsageError(f"--loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        for flag, value, low in (
            ("--top-k", self.top_k, 1),
            ("--seq-len", self.seq_len, 8),
            ("--batch-tokens", self.batch_tokens, 1),
            ("--lora-rank", self.lora_rank, 1),
            ("--eval-every", self.eval_every, 1),
        ):
            if value < low:
                raise UsageError(f"{flag} must be at least {low} (got {value})")
        if not 0 <= self.ce_weight <= 1:
            raise UsageError(f"--ce-weight must be within 0..1 (got {self.ce_weight})")
        if not 0 <= self.held_out_share < 0.5:
            raise UsageError(f"--held-out must be within 0..0.5 (got {self.held_out_share})")
        if self.epochs <= 0 or (self.max_minutes is not None and self.max_minutes <= 0):
            raise UsageError("--epochs and --max-minutes must be positive")
        if self.lr is None:
            self.lr = 5e-4 if self.lora else 5e-5

    def key(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (the budgets may change)."""
        skip = {"max_minutes", "token_budget", "checkpoint_minutes", "eval_every"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class Point:
    step: int
    tokens: int
    seconds: float
    train_loss: float | None = None
    held_out_div: float | None = None  # divergence per trained token (logits mode)
    held_out_ce: float | None = None


@dataclass
class State:
    """Where training stands: what a checkpoint holds besides the weights."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next example of this epoch's order
    tokens: int = 0  # trained tokens seen
    seconds: float = 0.0  # training time so far, across resumed runs
    planned_steps: int = 0
    history: list[Point] = field(default_factory=list)
