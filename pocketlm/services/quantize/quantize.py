"""Quantize a model into the store: llama.cpp's quantizer in a child process, a quality
report against the parent, and a new store model that records both.

llama.cpp may abort() on input it does not expect, so ``llama_model_quantize`` runs in a
fresh ``python -m pocketlm.services.quantize.quantize``: a crash there is an error here,
not the end of the CLI. The child writes into the store's scratch space; the file is
checked with ``inspect_gguf``, measured, then moved into ``blobs/`` and its manifest
written last. Ctrl-C (or any error) at any point kills the child and removes the scratch
directory: the store never holds half a model. A SIGKILL leaves the scratch behind, unlocked:
the next operation that writes to the store removes it (``Store.scratch``).

Sizes before quantizing come from llama.cpp's own dry run (``dry_run``), which picks the
type of every tensor exactly as the real run does: on small models nominal bits per
weight are far off (SmolLM2's 576-wide rows make K-quants fall back to 32-block types).
The child dry-runs first and waits for the go-ahead, so that the free disk space is checked
against the real size before a byte is written, at the cost of one process, not two.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pocketlm.errors import EngineError, PocketError, UsageError, option
from pocketlm.progress import NullProgress, Progress
from pocketlm.services.child import json_child
from pocketlm.services.machine import default_threads
from pocketlm.services.quantize import types
from pocketlm.services.quantize.report import QualityParams, QualityReport, load_text, measure
from pocketlm.services.quantize.types import QuantType
from pocketlm.store.gguf_check import GGUFInfo, inspect_gguf
from pocketlm.store.manifest import Manifest, check_name
from pocketlm.store.store import Store

if TYPE_CHECKING:
    from pocketlm.engine.llama import Model

DISK_MARGIN = 1.05  # free space wanted per byte of estimated output


@dataclass(frozen=True)
class Source:
    """The model to quantize: its name (store name, or file stem for a path), file, header."""

    name: str
    path: Path
    manifest: Manifest | None
    info: GGUFInfo

    @property
    def parent(self) -> str:
        """What a derived model records as its parent: the store name, or the file's path."""
        return self.manifest.name if self.manifest else str(self.path.resolve())

    @property
    def requantizing(self) -> bool:
        return types.is_quantized(self.info.file_type)


@dataclass(frozen=True)
class Calibration:
    """Text for importance-aware quantization (``--calibrate``)."""

    label: str  # file name, or "calibration.txt" for the shipped text
    text: str


@dataclass
class Quantized:
    """A quantization kept in the store, with its quality report."""

    manifest: Manifest
    parent: str
    requantized: bool
    calibration: str | None
    quality: QualityReport
    seconds: float  # quantizing and measuring
    result_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.manifest.name,
            "parent": self.parent,
            **self.quality.to_dict(),
            "requantized": self.requantized,
            "calibration": self.calibration,
            "path": self.manifest.path,
            "seconds": self.seconds,
            "result_id": self.result_id,
        }


# -- the service ------------------------------------------------------------------------


def quantize(
    ref: str,
    qtype: str | QuantType,
    *,
    name: str | None = None,
    reference: str | None = None,
    eval_text: str | Path | None = None,
    calibrate: Calibration | None = None,
    params: QualityParams | dict[str, Any] | None = None,
    threads: int | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
    record: bool = True,
) -> Quantized:
    """Quantize ``ref`` (store name, catalog name or GGUF path) to ``qtype`` as a new store
    model (default name ``<parent>-<type>``), measured against ``reference`` (default: the
    parent) on ``eval_text`` (default: the shipped calibration text)."""
    from pocketlm.params import validate

    started = time.perf_counter()
    store, progress = store or Store(), progress or NullProgress()
    qt = types.get(qtype) if isinstance(qtype, str) else qtype
    check_calibration(qt, calibrate)
    params = params if isinstance(params, QualityParams) else validate(QualityParams, params or {})
    text = load_text(eval_text)
    warn_same_text(calibrate, text, progress)
    threads = threads or default_threads()
    source = open_source(ref, store, progress)
    name = check_free_name(store, name or default_name(source.name, qt))
    ref_name, ref_path = resolve_reference(reference, source, store, progress)
    hint_calibration(source, qt, calibrate, progress)
    if source.requantizing and not qt.is_float:
        progress.note(
            f"{source.name} is {source.info.file_type} already: {qt.name} starts "
            "from its rounded weights"
        )

    def check(estimate: Estimate) -> None:  # before llama.cpp writes a byte
        if estimate.error:
            raise EngineError(
                f"llama.cpp cannot quantize {source.name} to {qt.name}: {estimate.error}",
                f"choose another {option('type')}",
            )
        check_disk(store, estimate.size_bytes)

    with store.scratch() as scratch:
        info = build(
            source,
            qt,
            scratch / "model.gguf",
            threads=threads,
            calibrate=calibrate,
            progress=progress,
            check=check,
        )
        with reference_model(ref_path, store, progress) as ref_model:
            quality = measure(
                scratch / "model.gguf",
                info,
                ref_model,
                ref_name,
                text,
                params,
                threads=threads,
                store=store,
                progress=progress,
            )
        extras = provenance(source, calibrate, quality)
        manifest = keep(store, source, qt, scratch / "model.gguf", info, name, extras, progress)
    done = Quantized(
        manifest,
        source.parent,
        source.requantizing,
        extras["calibration"],
        quality,
        seconds=time.perf_counter() - started,
    )
    if record:
        done.result_id = record_result(store, done, params, threads)
    return done


def open_source(ref: str, store: Store, progress: Progress) -> Source:
    """Resolve and check the model to quantize (a catalog name not yet pulled is pulled)."""
    from pocketlm.store.pull import default_name as file_stem
    from pocketlm.store.refs import resolve

    m = resolve(ref, store, pull_missing=True, progress=progress)
    info = inspect_gguf(m.path)
    return Source(m.manifest.name if m.manifest else file_stem(m.path), m.path, m.manifest, info)


def resolve_reference(
    ref: str | None, source: Source, store: Store, progress: Progress
) -> tuple[str, Path]:
    """(name, file) of the model to measure against: ``ref``, or the parent."""
    from pocketlm.store.refs import resolve

    if ref is None:
        return source.name, source.path
    m = resolve(ref, store, pull_missing=True, progress=progress)
    inspect_gguf(m.path)
    return m.name, m.path


@contextlib.contextmanager
def reference_model(path: Path, store: Store, progress: Progress) -> Iterator[Model]:
    """The reference loaded in the engine for the length of a ``with`` block."""
    from pocketlm.services.runtime import open_engine_model

    model = open_engine_model(str(path), store, progress)[3]
    try:
        yield model
    finally:
        model.close()


def default_name(parent: str, qt: QuantType) -> str:
    return f"{parent}-{qt.name.lower()}"


def check_free_name(store: Store, name: str) -> str:
    check_name(name)
    existing = store.find(name)
    if existing is not None:
        raise PocketError(
            f"a model named '{name}' already exists ({existing.quantization}, "
            f"from {existing.parent or existing.source})",
            f"choose another {option('name')}, or remove it first: pocketlm rm {name}",
        )
    return name


def check_calibration(qt: QuantType | None, calibrate: Calibration | None) -> None:
    """Calibration is available if asked for; a type that needs it has it."""
    if calibrate is not None:
        _calibrated()
    elif qt is not None and qt.needs_imatrix:
        raise UsageError(
            f"{qt.name} needs an importance matrix: llama.cpp refuses to write it "
            "without one (the result would be garbage)",
            f"quantize with {option('calibrate', True)}, or choose another {option('type')} "
            "(pocketlm quantize --list)",
        )


def warn_same_text(
    calibrate: Calibration | None, text: tuple[str, str], progress: Progress
) -> None:
    if calibrate is not None and calibrate.text == text[1]:
        progress.note(
            "note: the quality is measured on the calibration text itself, which "
            f"flatters a calibrated model; measure on other text with {option('eval_text')}"
        )


def hint_calibration(
    source: Source, qt: QuantType, calibrate: Calibration | None, progress: Progress
) -> None:
    """A distilled model going to 5 bits or fewer without calibration: its training data is
    the calibration that keeps what it learnt (uncalibrated Q4_0 cost a distilled 0.5B
    extraction student 23 points of its 85; calibrated on its data, none)."""
    recipe = getattr(source.manifest, "recipe", None)
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if calibrate is not None or qt.is_float or qt.bpw > 5.0 or not data:
        return
    progress.note(
        f"note: {source.name} was distilled on {data}; {option('calibrate', data)} keeps "
        f"its task accuracy at {qt.name} (uncalibrated, a distilled student lost 23 points "
        "at Q4_0: docs/distill.md)"
    )


def check_disk(store: Store, need_bytes: int) -> None:
    """Refuse to start a quantization whose output cannot fit on the store's disk."""
    store.check_writable()
    free = shutil.disk_usage(store.root).free
    if free < need_bytes * DISK_MARGIN:
        raise PocketError(
            f"not enough disk space in the model store {store.root}: the result "
            f"needs about {need_bytes / 1e6:.1f} MB, {free / 1e6:.1f} MB is free",
            "free some space, or point POCKETLM_HOME at a larger disk",
        )


def build(
    source: Source,
    qt: QuantType,
    dst: Path,
    *,
    threads: int,
    calibrate: Calibration | None,
    progress: Progress,
    check: Callable[[Estimate], None] | None = None,
) -> GGUFInfo:
    """Write ``source`` quantized to ``qt`` at ``dst`` (scratch space) and check the file.
    ``check``, if given, first sees llama.cpp's estimate of the file and may refuse (raise)."""
    if calibrate is not None:
        if check is not None:
            check(estimate_sizes(source, [qt])[qt.name])
        _calibrated()(str(source.path), str(dst), qt.name, calibrate.text, progress)
    else:
        task = progress.task(f"quantizing to {qt.name}", source.info.tensor_count, unit="tensors")
        job = {
            "src": str(source.path),
            "dst": str(dst),
            "types": [qt.name],
            "threads": threads,
            "dry_run": False,
            "check_first": check is not None,
        }
        (done,) = run_child(
            job, lambda i: task.update(i), check and (lambda raw: check(_estimate(source, raw)))
        )
        if done["error"]:
            raise EngineError(
                f"llama.cpp could not quantize {source.name} to {qt.name}: {done['error']}",
                _failure_hint(qt),
            )
    info = inspect_gguf(dst)
    if info.file_type != qt.name:
        raise EngineError(f"llama.cpp wrote a {info.file_type} file when asked for {qt.name}")
    return info


def _calibrated() -> Callable[..., None]:
    try:
        from pocketlm.services.quantize.calibrated import quantize_calibrated
    except ModuleNotFoundError as e:
        if e.name != "pocketlm.services.quantize.calibrated":
            raise
        raise PocketError(
            "calibrated quantization is not available in this version of pocketlm",
            f"quantize without {option('calibrate', True)}",
        ) from None
    return quantize_calibrated


def provenance(
    source: Source, calibrate: Calibration | None, quality: QualityReport
) -> dict[str, Any]:
    """The manifest fields a quantization adds: where it came from and how good it is."""
    return {
        "requantized": source.requantizing,
        "calibration": calibrate.label if calibrate else None,
        "quality": quality.to_dict(),
    }


def keep(
    store: Store,
    source: Source,
    qt: QuantType,
    file: Path,
    info: GGUFInfo,
    name: str,
    extras: dict[str, Any],
    progress: Progress,
) -> Manifest:
    """Move a checked, measured file from scratch into blobs/, then write its manifest."""
    return keep_derived(
        store,
        file,
        info,
        name=name,
        source=f"derived:quantize:{source.parent}",
        parent=source.parent,
        base=source.manifest,
        description=f"{source.name} quantized to {qt.name}",
        extras=extras,
        progress=progress,
    )


def keep_derived(
    store: Store,
    file: Path,
    info: GGUFInfo,
    *,
    name: str,
    source: str,
    parent: str,
    base: Manifest | None,
    description: str,
    extras: dict[str, Any],
    progress: Progress,
) -> Manifest:
    """Move a checked file derived from ``parent`` (quantized, pruned, distilled) from scratch
    into blobs/, then write its manifest, with the license and chat flag of ``base`` (the
    parent's manifest, when it is a store model) and ``extras``."""
    from pocketlm.store.pull import manifest_from_info, sha256_file

    sha = sha256_file(file, progress, f"hashing {name}")
    with store.lock(name):
        check_free_name(store, name)  # another process may have taken it meanwhile
        shared = store.blob_path(sha).exists()  # the same bytes already kept under another name
        blob = store.adopt_blob(file, sha)
        try:
            manifest = manifest_from_info(
                info,
                name=name,
                path=blob,
                sha256=sha,
                source=source,
                license=base.license if base else None,
                description=description,
                imported=False,
                parent=parent,
                chat=base.chat if base else None,
            )
            return store.put(Manifest(**(manifest.model_dump() | extras)))
        except BaseException:
            if not shared:
                blob.unlink(missing_ok=True)
            raise


def record_result(
    store: Store, done: Quantized, params: QualityParams, threads: int, **settings: Any
) -> int:
    from pocketlm.services.results import ResultsDB, record

    q = done.quality
    metrics = q.to_dict() | {"requantized": done.requantized, "seconds": done.seconds}
    settings = {
        "type": q.type,
        "parent": done.parent,
        "reference": q.reference,
        "calibration": done.calibration,
        "threads": threads,
        **params.model_dump(),
        **settings,
    }
    return record(
        "quantize",
        q.eval_text,
        done.manifest.name,
        metrics,
        settings,
        manifest=done.manifest,
        db=ResultsDB.of(store),
    )


# -- sizes before quantizing ------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    type: str
    size_bytes: int  # the file's expected size (0 where llama.cpp cannot write the type)
    error: str | None = None  # llama.cpp's reason it cannot write this type for this model


def estimate_sizes(source: Source, qts: Iterable[QuantType]) -> dict[str, Estimate]:
    """The file size each type would give ``source``: llama.cpp's dry run (the exact tensor
    bytes, to 0.01 MiB) plus the source's header; the nominal bits per weight where the
    dry run gives no size."""
    job = {
        "src": str(source.path),
        "dst": None,
        "types": [t.name for t in qts],
        "threads": 1,
        "dry_run": True,
    }
    return {e.type: e for e in (_estimate(source, raw) for raw in run_child(job))}


def _estimate(source: Source, raw: dict[str, Any]) -> Estimate:
    """A dry run's result (tensor bytes) as the file size: plus the source's header."""
    qt = types.get(raw["type"])
    if raw["error"]:
        return Estimate(qt.name, 0, raw["error"])
    header = source.info.size_bytes - source.info.tensor_data_bytes
    data = raw["tensor_bytes"] or int(source.info.parameter_count * qt.bpw / 8)
    return Estimate(qt.name, header + data)


def _failure_hint(qt: QuantType) -> str:
    if qt.family == "i-quant":
        return (
            f"some I-quants need an importance matrix for some models: try "
            f"{option('calibrate', True)}, or another {option('type')}"
        )
    return f"choose another {option('type')} (pocketlm quantize --list)"


# -- the child process ------------------------------------------------------------------


CHILD = [sys.executable, "-m", "pocketlm.services.quantize.quantize"]


def run_child(
    job: dict[str, Any],
    on_tensor: Callable[[int], None] | None = None,
    on_estimate: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``job`` in a child process (``CHILD``): one result per type, in order, each
    ``{"type", "error", "tensor_bytes"}``. With ``check_first``, the child dry-runs first
    and waits: ``on_estimate`` sees the dry run's result and raises to stop it there.
    Interrupted or failing, the child is killed."""
    results: list[dict[str, Any]] = []
    with json_child(CHILD, job, keep_stdin=bool(job.get("check_first"))) as child:
        for msg in child.messages():
            if "estimate" in msg:
                on_estimate(msg["estimate"])
                child.send("go", last=True)  # the child goes on to the real run
            if "tensor" in msg and on_tensor is not None:
                on_tensor(msg["tensor"])
            if "result" in msg:
                results.append(msg["result"])
    code = child.code
    if code != 0 or len(results) != len(job["types"]):
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        what = job["types"][len(results)] if len(results) < len(job["types"]) else "?"
        raise EngineError(
            f"llama.cpp crashed quantizing {Path(job['src']).name} to {what} "
            f"({why}): {child.stderr_tail or 'no message'}"
        )
    return results


_TENSOR_RE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")  # "[  12/ 272] blk.1.attn_q.weight - ..."
_TOTAL_RE = re.compile(r"quant size\s*=\s*([\d.]+) MiB")  # the dry run's total
_FAILED_RE = re.compile(r"failed to quantize: (.+)")


class _ChildLog:
    """llama.cpp's log in the child: tensor progress out as JSON lines, the rest kept."""

    def __init__(self, emit: Callable[..., None]):
        self.emit = emit
        self.lines: list[str] = []
        self.parent = os.getppid()
        self.quiet = False  # no progress lines (dry runs)

    def __call__(self, level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if os.getppid() != self.parent:  # the CLI is gone (SIGKILL): stop writing
            os._exit(1)
        msg = text.decode("utf-8", "replace") if text else ""
        self.lines.append(msg)
        if not self.quiet and (m := _TENSOR_RE.match(msg)):
            self.emit(tensor=int(m.group(1)), of=int(m.group(2)))

    def take(self) -> str:
        text, self.lines = "".join(self.lines), []
        return text


def _quantize_one(ll, log: _ChildLog, job: dict[str, Any], name: str) -> dict[str, Any]:
    qt = types.get(name)
    params = ll.llama_model_quantize_default_params()
    params.ftype = qt.ftype
    params.nthread = job["threads"]
    params.allow_requantize = True
    params.dry_run = job["dry_run"]
    dst = job["dst"] or os.devnull
    log.quiet = job["dry_run"]
    log.take()
    rc = ll.llama_model_quantize(job["src"].encode(), dst.encode(), ctypes.byref(params))
    text = log.take()
    failed = _FAILED_RE.search(text)
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no details")
    error = (failed.group(1).strip() if failed else last) if rc != 0 else None
    total = _TOTAL_RE.search(text)
    return {
        "type": qt.name,
        "error": error,
        "tensor_bytes": round(float(total.group(1)) * 2**20) if total else None,
    }


def _child_main() -> int:
    """Read a job (JSON) on stdin; quantize (or dry-run) each of its types, writing JSON
    lines: {"tensor": i, "of": n} as llama.cpp goes, then {"result": ...} per type."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once

    def emit(**msg: Any) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    import llama_cpp as ll

    job = json.loads(sys.stdin.readline())
    log = _ChildLog(emit)
    callback = ll.llama_log_callback(log)  # kept referenced while llama.cpp may call it
    ll.llama_log_set(callback, ctypes.c_void_p(0))
    ll.llama_backend_init()
    if job.get("check_first"):  # a dry run first; the real one when the parent says "go"
        emit(estimate=_quantize_one(ll, log, job | {"dry_run": True}, job["types"][0]))
        if sys.stdin.readline().strip() != "go":
            return 0
    for name in job["types"]:
        emit(result=_quantize_one(ll, log, job, name))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
