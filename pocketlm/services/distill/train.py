"""`pocketlm distill`: a student learns from a teacher on the user's data, on this machine.

Two modes, chosen by whether the two models share a vocabulary:

- logits: the teacher's top-k log-probabilities (teacher.py) are computed once; the loss is
  (1 - ce_weight) * divergence (forward KL or JSD, losses.py) + ce_weight * cross-entropy
  on the text, on every trained token.
- sequence: the data are the teacher's own outputs (``pocketlm data synth/label``); the
  loss is cross-entropy on them.

The student is read from its GGUF by transformers (gguf_io.load_torch), trained in full or
with LoRA (peft; merged before export), checkpointed to ``<store>/runs/NAME`` so that an
interrupted run resumes, held-out loss measured as it trains, and written back to the
store as a GGUF (gguf_io.save_to_store) with its recipe in the manifest.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.distill import data as dataset_mod
from pocketlm.services.distill import resources
from pocketlm.services.distill.data import Dataset, Example
from pocketlm.services.distill.losses import LOSSES
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

MODES = ("auto", "logits", "sequence")
TRAINABLE_ARCHITECTURES = ("llama", "qwen2")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MICRO_TOKENS = 1024  # padded tokens per forward pass: bounds activation memory


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
    lr: float | None = None  # default: 1e-4 full, 5e-4 LoRA
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
            self.lr = 5e-4 if self.lora else 1e-4

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


@dataclass
class Result:
    manifest: Manifest
    mode: str
    state: State
    before: Point
    after: Point
    train_examples: int
    held_out_examples: int
    run_dir: Path
    plot: Path | None
    stopped_by: str  # "data", "time", "tokens"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "mode": self.mode,
            "steps": self.state.step,
            "tokens": self.state.tokens,
            "minutes": round(self.state.seconds / 60, 2),
            "tokens_per_s": round(self.state.tokens / max(self.state.seconds, 1e-9), 1),
            "held_out_before": asdict(self.before),
            "held_out_after": asdict(self.after),
            "train_examples": self.train_examples,
            "held_out_examples": self.held_out_examples,
            "stopped_by": self.stopped_by,
            "run_dir": str(self.run_dir),
            "plot": str(self.plot) if self.plot else None,
        }


def distill(
    recipe: Recipe,
    *,
    store: Store | None = None,
    resume: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Result:
    """Run ``recipe`` to the end (data, time or token budget) and keep the student."""
    from pocketlm.engine.llama import Model
    from pocketlm.services.quantize.quantize import check_free_name

    store = store or Store()
    progress = progress or NullProgress()
    student, teacher = _models(store, recipe)
    check_free_name(store, recipe.name)
    vocab = Model(student.path, vocab_only=True)
    try:
        mode = _mode(recipe, student, teacher, vocab)
        ds = dataset_mod.load(
            Path(recipe.data),
            vocab,
            seq_len=recipe.seq_len,
            field_name=recipe.field,
            held_out_share=recipe.held_out_share,
            seed=recipe.seed,
        )
    finally:
        vocab.close()
    for reason, n in ds.skipped.items():
        progress.note(f"skipped {n} record(s): {reason}")
    if ds.truncated:
        progress.note(f"{ds.truncated} conversation(s) cut at --seq-len {recipe.seq_len}")
    run_dir = store.root / "runs" / recipe.name
    checkpoint = _checkpoint_to_resume(run_dir, resume)
    need = resources.Need.of(student, ds, recipe, mode)
    resources.check(need, store.root)
    threads = threads or resources.default_threads()
    topk = None
    if mode == "logits":
        from pocketlm.services.distill import teacher as teacher_mod

        key = {"teacher": teacher.sha256, "data": ds.sha256, **recipe.key()}
        topk = teacher_mod.compute(
            teacher.path,
            ds.train + ds.held_out,
            run_dir / "teacher",
            k=recipe.top_k,
            key=key,
            threads=threads,
            progress=progress,
        )
    trainer = Trainer(recipe, student, ds, mode, topk, threads, run_dir, progress)
    try:
        state = trainer.run(checkpoint)
    except KeyboardInterrupt:
        trainer.save_checkpoint()
        progress.note(f"interrupted: checkpoint kept in {run_dir}; resume with --resume")
        raise
    manifest = trainer.keep(store, teacher, ds)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the model is in the store now
    plot = _plot(state.history, run_dir / "loss.png", mode)
    return Result(
        manifest,
        mode,
        state,
        state.history[0],
        state.history[-1],
        len(ds.train),
        len(ds.held_out),
        run_dir,
        plot,
        trainer.stopped_by,
    )


def _models(store: Store, recipe: Recipe) -> tuple[Manifest, Manifest | None]:
    student = store.get(recipe.student)
    if student.architecture not in TRAINABLE_ARCHITECTURES:
        raise UsageError(
            f"{student.name} is a {student.architecture} model: distill trains "
            f"{' and '.join(TRAINABLE_ARCHITECTURES)} students",
            "pick a student from the Qwen2.5 or SmolLM2 ladder (`pocketlm list`)",
        )
    if recipe.teacher is None:
        if recipe.mode == "logits":
            raise UsageError("--mode logits needs a --teacher")
        return student, None
    teacher = store.get(recipe.teacher)
    if teacher.name == student.name:
        raise UsageError("the teacher and the student are the same model: nothing to learn")
    if student.parameter_count > teacher.parameter_count:
        raise UsageError(
            f"the student {student.name} ({student.parameter_count / 1e6:.0f}M parameters) is "
            f"larger than the teacher {teacher.name} ({teacher.parameter_count / 1e6:.0f}M)",
            "distil a larger model into a smaller one: swap --teacher and --student",
        )
    return student, teacher


def _mode(recipe: Recipe, student: Manifest, teacher: Manifest | None, vocab) -> str:
    """logits when the teacher shares the student's vocabulary, else sequence."""
    if teacher is None:
        return "sequence"
    from pocketlm.engine.llama import Model

    other = Model(teacher.path, vocab_only=True)
    try:
        probe = "Distillation: the teacher's tokens must be the student's. 12345 ÄÖÜ 你好 </s>"
        same = other.n_vocab == vocab.n_vocab and other.tokenize(probe) == vocab.tokenize(probe)
    finally:
        other.close()
    if recipe.mode == "logits" and not same:
        raise UsageError(
            f"--mode logits needs one vocabulary, and {teacher.name} ({teacher.architecture}) "
            f"and {student.name} ({student.architecture}) tokenize differently",
            "use --mode sequence (the student learns from the teacher's outputs)",
        )
    if recipe.mode != "auto":
        return recipe.mode
    return "logits" if same else "sequence"


def _checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists() and not resume:
        raise UsageError(
            f"a run named {run_dir.name} has a checkpoint ({checkpoint})",
            "continue it with --resume, or remove it to start over",
        )
    if resume and not checkpoint.exists():
        raise UsageError(f"there is no checkpoint to resume in {run_dir}", "run without --resume")
    return checkpoint if resume else None


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        student: Manifest,
        ds: Dataset,
        mode: str,
        topk,
        threads: int,
        run_dir: Path,
        progress: Progress,
    ):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(recipe.seed)
        self.recipe, self.student, self.ds, self.mode, self.topk = recipe, student, ds, mode, topk
        self.run_dir, self.progress = run_dir, progress
        self.state = State()
        self.stopped_by = "data"
        self.model = self._load_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
        # teacher rows: training examples first, then held-out ones (as compute() got them)
        self.n_train = len(ds.train)
        self._last_save = time.monotonic()

    # -- model ----------------------------------------------------------------------------

    def _load_model(self):
        from pocketlm.services.distill.gguf_io import load_torch

        model = load_torch(self.student)
        model.train()
        for p in model.get_input_embeddings().parameters():
            p.requires_grad = self.recipe.train_embeddings
        if self.recipe.lora:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=self.recipe.lora_rank,
                lora_alpha=2 * self.recipe.lora_rank,
                lora_dropout=0.0,
                target_modules=LORA_TARGETS,
            )
            model = get_peft_model(model, config)
        return model

    def _forward(self, examples: list[Example]):
        """Student log-probabilities [rows, vocab] at the batch's trained rows, and their
        targets [rows]; rows in example order, then position order."""
        import torch

        longest = max(len(ex.tokens) for ex in examples)
        ids = torch.zeros((len(examples), longest), dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        rows = torch.zeros((len(examples), longest), dtype=torch.bool)
        targets = []
        for b, ex in enumerate(examples):
            n = len(ex.tokens)
            ids[b, :n] = torch.tensor(ex.tokens)
            mask[b, :n] = 1
            trained = torch.tensor(ex.trained[1:], dtype=torch.bool)
            rows[b, : n - 1] = trained
            targets.append(torch.tensor(ex.tokens[1:])[trained])
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[rows])  # [rows, vocab]
        return torch.log_softmax(logits.float(), dim=-1), torch.cat(targets)

    def _teacher_rows(self, indices: list[int]):
        import torch

        ids, lps = zip(*(self.topk.rows(i) for i in indices), strict=True)
        return (
            torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            torch.from_numpy(np.concatenate(lps).astype(np.float32)),
        )

    def _losses(self, indices: list[int], examples: list[Example]):
        """(per-row divergence or None, per-row cross-entropy)."""
        from pocketlm.services.distill.losses import divergence

        logq, targets = self._forward(examples)
        ce = -logq.gather(1, targets.unsqueeze(1)).squeeze(1)
        if self.mode != "logits":
            return None, ce
        ids, lps = self._teacher_rows(indices)
        return divergence(self.recipe.loss, lps, ids, logq), ce

    def _objective(self, div, ce):
        if div is None:
            return ce.sum()
        w = self.recipe.ce_weight
        return (1 - w) * div.sum() + w * ce.sum()

    # -- the loop -------------------------------------------------------------------------

    def run(self, checkpoint: Path | None) -> State:
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            self.state.history.append(self.evaluate())
        recipe, state = self.recipe, self.state
        if not state.planned_steps:
            state.planned_steps = self._planned_steps()
        task = self.progress.task("distilling", state.planned_steps, unit="steps")
        task.update(state.step)
        started, seconds_before = time.monotonic(), state.seconds
        loss_avg = None
        for step_examples, epoch, cursor in self._steps():
            step_tokens = sum(self.ds.train[i].n_trained for i in step_examples)
            self._set_lr()
            loss = self._train_step(step_examples, step_tokens)
            loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
            state.step, state.epoch, state.cursor = state.step + 1, epoch, cursor
            state.tokens += step_tokens
            state.seconds = seconds_before + time.monotonic() - started
            if state.step == 3 and recipe.max_minutes:
                state.planned_steps = min(state.planned_steps, self._steps_in_time())
                task.update(state.step, state.planned_steps)
            task.advance(1)
            rate = state.tokens / max(state.seconds, 1e-9)
            task.describe(f"distilling  loss {loss_avg:.3f}  {rate:.0f} tok/s")
            if state.step % recipe.eval_every == 0:
                point = self.evaluate(train_loss=loss_avg)
                state.history.append(point)
                self.progress.note(_describe(point))
            if time.monotonic() - self._last_save > recipe.checkpoint_minutes * 60:
                self.save_checkpoint()
            if self._budget_spent():
                break
        if not state.history or state.history[-1].step != state.step:
            state.history.append(self.evaluate(train_loss=loss_avg))
        return state

    def _steps(self) -> Iterator[tuple[list[int], int, int]]:
        """Optimizer steps from where the state is: (training example indices, the epoch and
        cursor to record once the step is done)."""
        recipe = self.recipe
        epoch, cursor = self.state.epoch, self.state.cursor
        while epoch < math.ceil(recipe.epochs):
            order = list(range(self.n_train))
            random.Random(recipe.seed * 1000 + epoch).shuffle(order)
            if epoch + 1 > recipe.epochs:  # a fractional last epoch
                order = order[: max(1, round(len(order) * (recipe.epochs - epoch)))]
            while cursor < len(order):
                step, tokens = [], 0
                while cursor < len(order) and tokens < recipe.batch_tokens:
                    step.append(order[cursor])
                    tokens += self.ds.train[order[cursor]].n_trained
                    cursor += 1
                yield step, epoch, cursor
            epoch, cursor = epoch + 1, 0

    def _train_step(self, indices: list[int], step_tokens: int) -> float:
        total = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for micro in _micro_batches(indices, self.ds.train):
            div, ce = self._losses(micro, [self.ds.train[i] for i in micro])
            loss = self._objective(div, ce) / step_tokens
            loss.backward()
            total += loss.item()
        import torch

        torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], max_norm=1.0
        )
        self.optimizer.step()
        return total

    def evaluate(self, train_loss: float | None = None) -> Point:
        """Mean divergence and cross-entropy per trained token on the held-out examples."""
        import torch

        state = self.state
        point = Point(state.step, state.tokens, round(state.seconds, 2), train_loss)
        if not self.ds.held_out:
            return point
        self.model.eval()
        div_sum = ce_sum = 0.0
        n = 0
        offset = self.n_train
        indices = list(range(len(self.ds.held_out)))
        with torch.no_grad():
            for micro in _micro_batches(indices, self.ds.held_out):
                examples = [self.ds.held_out[i] for i in micro]
                div, ce = self._losses([offset + i for i in micro], examples)
                ce_sum += float(ce.sum())
                div_sum += float(div.sum()) if div is not None else 0.0
                n += len(ce)
        self.model.train()
        point.held_out_ce = ce_sum / n
        if self.mode == "logits":
            point.held_out_div = div_sum / n
        return point

    # -- schedule and budgets -------------------------------------------------------------

    def _planned_steps(self) -> int:
        per_epoch = max(1, math.ceil(self.ds.train_tokens / self.recipe.batch_tokens))
        steps = max(1, math.ceil(per_epoch * self.recipe.epochs))
        if self.recipe.token_budget:
            steps = min(
                steps, max(1, math.ceil(self.recipe.token_budget / self.recipe.batch_tokens))
            )
        return steps

    def _steps_in_time(self) -> int:
        per_step = self.state.seconds / max(self.state.step, 1)
        left = self.recipe.max_minutes * 60 - self.state.seconds
        return max(self.state.step, self.state.step + int(left / per_step))

    def _set_lr(self) -> None:
        """Linear warm-up over the first 5% of the steps, then cosine down to 10% of the peak."""
        total, step = max(self.state.planned_steps, 1), self.state.step
        warm = max(1, round(0.05 * total))
        if step < warm:
            scale = (step + 1) / warm
        else:
            t = min(1.0, (step - warm) / max(1, total - warm))
            scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.lr * scale

    def _budget_spent(self) -> bool:
        recipe, state = self.recipe, self.state
        if recipe.max_minutes is not None and state.seconds >= recipe.max_minutes * 60:
            self.stopped_by = "time"
            return True
        if recipe.token_budget is not None and state.tokens >= recipe.token_budget:
            self.stopped_by = "tokens"
            return True
        return False

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Weights being trained, optimizer and position, written whole or not at all."""
        import torch

        self.run_dir.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        payload = {
            "recipe": self.recipe.key(),
            "state": asdict(self.state),
            "trainable": trainable,
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }
        path = self.run_dir / "checkpoint.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        self._last_save = time.monotonic()
        return path

    def _restore(self, path: Path) -> None:
        import torch

        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated or foreign file
            raise PocketError(
                f"the checkpoint {path} is unreadable ({type(e).__name__})",
                "remove it and run again without --resume",
            ) from None
        if payload.get("recipe") != self.recipe.key():
            changed = sorted(
                k for k, v in self.recipe.key().items() if payload.get("recipe", {}).get(k) != v
            )
            raise UsageError(
                f"the checkpoint in {path.parent} is of another recipe ({', '.join(changed)} "
                "differ)",
                "resume with the same options, or remove the run folder to start over",
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in payload["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"])
        raw = payload["state"]
        history = [Point(**p) for p in raw.pop("history")]
        self.state = State(**raw, history=history)
        self.progress.note(
            f"resuming {self.recipe.name} at step {self.state.step} "
            f"({self.state.tokens} tokens, {self.state.seconds / 60:.1f} min)"
        )

    # -- the result -----------------------------------------------------------------------

    def keep(self, store: Store, teacher: Manifest | None, ds: Dataset) -> Manifest:
        from pocketlm.services.distill.gguf_io import save_to_store

        model = self.model
        if self.recipe.lora:
            model = model.merge_and_unload()
        model.eval()
        history = self.state.history
        recipe = {
            "method": "distill",
            "mode": self.mode,
            **self.recipe.key(),
            "steps": self.state.step,
            "tokens": self.state.tokens,
            "minutes": round(self.state.seconds / 60, 2),
            "stopped_by": self.stopped_by,
            "held_out_before": asdict(history[0]),
            "held_out_after": asdict(history[-1]),
        }
        return save_to_store(
            store,
            model,
            parent=self.student,
            name=self.recipe.name,
            recipe=recipe,
            teacher=teacher.name if teacher else None,
            data_sha256=ds.sha256,
            progress=self.progress,
        )


def _micro_batches(indices: list[int], examples: list[Example]) -> Iterator[list[int]]:
    """Consecutive groups whose padded size (longest * count) stays within MICRO_TOKENS."""
    group: list[int] = []
    longest = 0
    for i in indices:
        n = len(examples[i].tokens)
        if group and max(longest, n) * (len(group) + 1) > MICRO_TOKENS:
            yield group
            group, longest = [], 0
        group.append(i)
        longest = max(longest, n)
    if group:
        yield group


def _describe(p: Point) -> str:
    parts = [f"step {p.step}", f"{p.tokens} tokens"]
    if p.train_loss is not None:
        parts.append(f"train loss {p.train_loss:.4f}")
    if p.held_out_div is not None:
        parts.append(f"held-out divergence {p.held_out_div:.4f}")
    if p.held_out_ce is not None:
        parts.append(f"held-out cross-entropy {p.held_out_ce:.4f}")
    return "  ".join(parts)


def _plot(history: list[Point], path: Path, mode: str) -> Path | None:
    """The held-out curves as a PNG (None with fewer than two points)."""
    points = [p for p in history if p.held_out_ce is not None]
    if len(points) < 2:
        return None
    from pocketlm.services.charts import _figure, _save

    fig = _figure(6.4, 3.6, 120)
    ax = fig.add_subplot(1, 1, 1)
    tokens = [p.tokens for p in points]
    ax.plot(tokens, [p.held_out_ce for p in points], marker="o", label="cross-entropy")
    if mode == "logits":
        ax.plot(tokens, [p.held_out_div for p in points], marker="o", label="divergence to teacher")
    ax.set_xlabel("trained tokens")
    ax.set_ylabel("held-out loss per token (nats)")
    ax.set_title(f"pocketlm distill: {path.parent.name}")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_history(history: list[Point], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in history))
