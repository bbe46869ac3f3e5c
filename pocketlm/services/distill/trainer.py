"""The training loop of `pocketlm distill`: batches, losses, schedule, budgets,
held-out evaluation and checkpoints (see train.py for the run around it)."""

from __future__ import annotations

import functools
import inspect
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pocketlm.engine.llama import common_prefix
from pocketlm.errors import PocketError, UsageError
from pocketlm.progress import Progress
from pocketlm.services.distill.data import Dataset, Example
from pocketlm.services.distill.recipe import Point, Recipe, State
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MICRO_TOKENS = 1024  # padded tokens per forward pass: bounds activation memory
MIN_SHARED = 16  # a common prefix shorter than this is not worth a forward of its own


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
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = self._load_model().to(self.device)
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
            with warnings.catch_warnings():  # peft asks with a name transformers renamed
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
                model = get_peft_model(model, config)
        return model

    def _forward(self, examples: list[Example]):
        """Student log-probabilities [rows, vocab] at the batch's trained rows, and their
        targets [rows]; rows in example order, then position order.

        Examples that open with the same tokens (every record of a task repeats its
        instruction) share them: the common prefix goes through the model once and the
        examples continue from its keys and values. The gradient still flows through the
        prefix, so the result is the plain forward's, at a fraction of the cost."""
        import torch

        shared = shared_prefix(examples)
        ids, mask, rows, targets = _padded(examples, shared)
        ids, mask, rows = ids.to(self.device), mask.to(self.device), rows.to(self.device)
        decoder = self.model.get_decoder()
        if shared:
            from transformers import DynamicCache

            name = _cache_keyword(type(decoder))
            cache = DynamicCache(config=self.model.config)
            prefix = torch.tensor([examples[0].tokens[:shared]], device=self.device)
            decoder(input_ids=prefix, use_cache=True, **{name: cache})  # fills the cache
            cache.batch_repeat_interleave(len(examples))
            full_mask = torch.cat([mask.new_ones((len(examples), shared)), mask], dim=1)
            positions = torch.arange(shared, shared + ids.shape[1], device=self.device)
            hidden = decoder(
                input_ids=ids,
                attention_mask=full_mask,
                position_ids=positions.expand(len(examples), -1),
                use_cache=True,
                **{name: cache},
            ).last_hidden_state
        else:
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[rows])  # [rows, vocab]
        return torch.log_softmax(logits.float(), dim=-1), torch.cat(targets).to(self.device)

    def _teacher_rows(self, indices: list[int]):
        import torch

        ids, lps = zip(*(self.topk.rows(i) for i in indices), strict=True)
        return (
            torch.from_numpy(np.concatenate(ids).astype(np.int64)).to(self.device),
            torch.from_numpy(np.concatenate(lps).astype(np.float32)).to(self.device),
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
        model = model.to("cpu").eval()
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


@functools.cache
def _cache_keyword(decoder_class: type) -> str:
    """The forward's keyword for a KV cache: `cache` from transformers 5.25 on,
    `past_key_values` before."""
    parameters = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def shared_prefix(examples: list[Example]) -> int:
    """Tokens that every example opens with and that no trained row lies in (0 when fewer
    than MIN_SHARED, or for a single example): the prefix a batch computes once."""
    if len(examples) < 2:
        return 0
    first = examples[0].tokens
    n = min(min(common_prefix(first, ex.tokens), ex.first_row) for ex in examples)
    return n if n >= MIN_SHARED else 0


def _padded(examples: list[Example], shared: int):
    """Token ids, attention mask and trained-row mask [batch, longest - shared] of the
    examples after their shared prefix (right-padded), and the targets of the rows."""
    import torch

    longest = max(len(ex.tokens) for ex in examples) - shared
    ids = torch.zeros((len(examples), longest), dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    rows = torch.zeros((len(examples), longest), dtype=torch.bool)
    targets = []
    for b, ex in enumerate(examples):
        n = len(ex.tokens) - shared
        ids[b, :n] = torch.tensor(ex.tokens[shared:])
        mask[b, :n] = 1
        trained = torch.tensor(ex.trained[shared + 1 :], dtype=torch.bool)
        rows[b, : n - 1] = trained
        targets.append(torch.tensor(ex.tokens[shared + 1 :])[trained])
    return ids, mask, rows, targets


def _micro_batches(indices: list[int], examples: list[Example]) -> Iterator[list[int]]:
    """Consecutive groups whose padded size stays within MICRO_TOKENS: the shared prefix
    once plus (longest - prefix) * count."""
    group: list[int] = []
    for i in indices:
        grown = [examples[j] for j in [*group, i]]
        shared = shared_prefix(grown)
        size = shared + (max(len(ex.tokens) for ex in grown) - shared) * len(grown)
        if group and size > MICRO_TOKENS:
            yield group
            group = []
        group.append(i)
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
