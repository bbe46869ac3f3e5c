"""`pocketlm distill`: a student learns from a teacher on the user's data, on this machine.

Two modes, chosen by whether the two models share a vocabulary:

- logits: the teacher's top-k log-probabilities (teacher.py) are computed once; the loss is
  (1 - ce_weight) * divergence (forward KL or JSD, losses.py) + ce_weight * cross-entropy
  on the text, on every trained token.
- sequence: the data are the teacher's own outputs (``pocketlm data synth/label``); the
  loss is cross-entropy on them.

The student is read from its GGUF by transformers (gguf_io.load_torch), trained in full or
with LoRA (peft; merged before export) by trainer.Trainer, checkpointed to
``<store>/runs/NAME`` so that an interrupted run resumes, held-out loss measured as it
trains, and written back to the store as a GGUF (gguf_io.save_to_store) with its recipe in
the manifest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pocketlm.errors import UsageError
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.distill import data as dataset_mod
from pocketlm.services.distill import resources
from pocketlm.services.distill.recipe import MODES, Point, Recipe, State
from pocketlm.services.distill.trainer import Trainer
from pocketlm.store.manifest import Manifest
from pocketlm.store.store import Store

__all__ = ["MODES", "Recipe", "Result", "distill"]

TRAINABLE_ARCHITECTURES = ("llama", "qwen2")


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
    restart: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> Result:
    """Run ``recipe`` to the end (data, time or token budget) and keep the student.
    ``resume``: from the run's checkpoint; ``restart``: the run's folder (checkpoint, teacher
    rows, history) is removed first."""
    if resume and restart:
        raise UsageError("--resume and --restart exclude each other", "choose one")
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
        if recipe.balance:
            _balance(ds, vocab, recipe.seed, progress)
    finally:
        vocab.close()
    for reason, n in ds.skipped.items():
        progress.note(f"skipped {n} record(s): {reason}")
    if ds.truncated:
        progress.note(f"{ds.truncated} conversation(s) cut at --seq-len {recipe.seq_len}")
    run_dir = store.root / "runs" / recipe.name
    if restart and run_dir.exists():
        shutil.rmtree(run_dir)
        progress.note(f"removed the earlier run's {run_dir}")
    checkpoint = _checkpoint_to_resume(run_dir, resume)
    need = resources.Need.of(student, ds, recipe, mode)
    resources.check(need, store.root)
    run_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or resources.default_threads()
    topk = None
    if mode == "logits":
        from pocketlm.services.distill import teacher as teacher_mod

        # what the rows depend on: the teacher and the token sequences (so another learning
        # rate, epoch count or student of the same tokenizer finds an earlier run's rows)
        sequences = ds.train + ds.held_out
        key = {"teacher": teacher.sha256, "tokens": teacher_mod.tokens_sha256(sequences)}
        topk = teacher_mod.compute(
            teacher.path,
            sequences,
            run_dir / "teacher",
            k=recipe.top_k,
            key=key,
            threads=threads,
            progress=progress,
            reuse=sorted((store.root / "runs").glob("*/teacher")),
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
    write_history(state.history, run_dir / "history.jsonl")
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


def _balance(ds, vocab, seed: int, progress: Progress) -> None:
    """--balance: the training split's labels drawn to one count (the held-out part keeps
    the data's own mix)."""
    ds.train, counts = dataset_mod.balance(ds.train, seed)
    if not counts:
        progress.note("--balance: no answer repeats in the training split: nothing to balance")
        return
    shown = ", ".join(
        f"{vocab.detokenize(answer).strip() or '?'} {before} -> {after}"
        for answer, (before, after) in sorted(counts.items(), key=lambda kv: -kv[1][0])
    )
    progress.note(f"balanced {len(counts)} answers: {shown}")


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
            "continue it with --resume, or start over with --restart",
        )
    if resume and not checkpoint.exists():
        raise UsageError(f"there is no checkpoint to resume in {run_dir}", "run without --resume")
    return checkpoint if resume else None


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
    """The held-out measurements, one JSON line per evaluation."""
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in history))
