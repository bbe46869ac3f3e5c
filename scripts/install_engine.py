#!/usr/bin/env python3
"""Build (once) and install llama-cpp-python for the CPU of this machine.

llama-cpp-python ships as source only; pip compiles llama.cpp with
``-march=native``. On CPUs that advertise AMX under virtualization that build
segfaults at the first decode (see docs/engine.md), so on x86-64 the build
keeps ``-march=native`` but switches AMX off. Other CPUs (ARM, x86 without AMX)
get the plain native build, which is what they need anyway.

The patches in scripts/engine-patches/ are applied to llama.cpp's source before it is
compiled (each one says what it changes and why; see docs/engine.md).

The wheel is cached per (engine version, patches, compiler flags, CPU, Python) under
~/.cache/pocketlm/engine-wheels, so reinstalling on the same machine is fast,
and a wheel built for another CPU is never reused. pip's own wheel cache is
bypassed: it is keyed by URL, not by flags, and would hand back a build made
with other flags.

Usage: python scripts/install_engine.py [--python PY] [--force]
Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ENGINE = "llama-cpp-python"
VERSION = "0.3.36"
NO_AMX = ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
CMAKE_ARGS = "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
PATCHES = sorted((Path(__file__).resolve().parent / "engine-patches").glob("*.patch"))


def cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        return "\n".join(
            sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))})
        )
    except OSError:
        return platform.processor() + platform.machine()


def compiler_accepts(flags: list[str]) -> bool:
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d, "t.c")
        src.write_text("int main(void) { return 0; }\n")
        try:
            r = subprocess.run(
                [cc, *flags, "-c", str(src), "-o", str(Path(d, "t.o"))], capture_output=True
            )
        except OSError:
            return False
    return r.returncode == 0


def build_flags() -> list[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64") and compiler_accepts(NO_AMX):
        return NO_AMX
    return []


def installed_tag(python: str) -> str | None:
    r = subprocess.run(
        [
            python,
            "-c",
            "import json, llama_cpp, pathlib; p = pathlib.Path("
            "llama_cpp.__file__).parent / 'pocketlm-build.json'; print(p.read_text() "
            "if p.exists() else '{}')",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout or "{}").get("tag")
    except ValueError:
        return None


def build_wheel(out: Path, flags: list[str], log: Path) -> Path:
    env = dict(os.environ)
    env["CFLAGS"] = " ".join([env.get("CFLAGS", ""), *flags]).strip()
    env["CXXFLAGS"] = " ".join([env.get("CXXFLAGS", ""), *flags]).strip()
    env["CMAKE_ARGS"] = " ".join([env.get("CMAKE_ARGS", ""), CMAKE_ARGS]).strip()
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    tmp = Path(tempfile.mkdtemp(prefix="wheel-", dir=out.parent))
    source = fetch_source(tmp)
    for patch in PATCHES:
        try:
            apply_patch(source, patch.read_text())
        except PatchError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(f"error: engine patch {patch.name} does not apply to {ENGINE} {VERSION}: {e}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-deps",
        "--no-cache-dir",
        "-w",
        str(tmp / "dist"),
        str(source),
    ]
    print(
        f"building llama.cpp ({ENGINE} {VERSION}) for this CPU, flags: "
        f"{' '.join(flags) or '(native)'}; this takes a few minutes (log: {log})",
        flush=True,
    )
    bar = _Bar()
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for line in proc.stdout:
            logf.write(line)
            if m := _STEP.search(line):  # ninja: [57/140], make: [ 40%]
                done, total = m.group(1, 2)
                bar(int(done) * 100 // int(total) if total else int(done))
        proc.wait()
    print(flush=True)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(
            "error: building llama.cpp failed; last lines of the log:\n  "
            + "\n  ".join(tail)
            + "\n(a C/C++ compiler and cmake are needed)"
        )
    wheel = next((tmp / "dist").glob("*.whl"))
    out.mkdir(parents=True, exist_ok=True)
    final = out / wheel.name
    os.replace(wheel, final)  # complete wheels only: a killed build leaves nothing cached
    shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch_source(tmp: Path) -> Path:
    """Download the engine's source archive from the package index and unpack it."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(tmp),
            f"{ENGINE}=={VERSION}",
        ],
        capture_output=True,
        text=True,
    )
    archives = sorted(tmp.glob("*.tar.gz"))
    if r.returncode != 0 or not archives:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(
            f"error: could not download the {ENGINE} {VERSION} source from the package "
            f"index: {(r.stderr or r.stdout).strip().splitlines()[-1:]}"
        )
    with tarfile.open(archives[0]) as tar:
        tar.extractall(tmp / "src", filter="data")
    return next(p for p in (tmp / "src").iterdir() if p.is_dir())


class PatchError(Exception):
    pass


def apply_patch(root: Path, text: str) -> None:
    """Apply a unified diff (paths a/... b/..., as git writes them) under ``root``.

    Strict: every hunk's old lines must occur exactly once in the file (line numbers are
    not trusted), else nothing of that file is changed. Standard library only: the build
    machine may have neither ``patch`` nor ``git``.
    """
    files: list[tuple[str, list[tuple[list[str], list[str]]]]] = []
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)  # "\n" only: C sources may hold \f, \r
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ "):
            files.append((line[4:].strip().split("/", 1)[1], []))
        elif line.startswith("@@"):
            if not files:
                raise PatchError("hunk before any file header")
            old: list[str] = []
            new: list[str] = []
            m = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", line)
            if not m:
                raise PatchError(f"bad hunk header {line.strip()!r}")
            n_old, n_new = int(m.group(1) or 1), int(m.group(2) or 1)
            i += 1
            while (len(old) < n_old or len(new) < n_new) and i < len(lines):
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                tag, rest = body[:1], body[1:]
                if tag in (" ", "\n"):
                    rest = rest if tag == " " else "\n"
                    old.append(rest)
                    new.append(rest)
                elif tag == "-":
                    old.append(rest)
                elif tag == "+":
                    new.append(rest)
                else:
                    raise PatchError(f"bad hunk line {body.rstrip()!r}")
                i += 1
            files[-1][1].append((old, new))
            continue
        i += 1
    if not files:
        raise PatchError("no file in the patch")
    for rel, hunks in files:
        path = root / rel
        if not path.is_file():
            raise PatchError(f"{rel} is missing")
        with open(path, encoding="utf-8", newline="") as f:
            content = f.read()
        for old, new in hunks:
            before, after = "".join(old), "".join(new)
            if content.count(before) != 1:
                raise PatchError(f"{rel}: a hunk's context occurs {content.count(before)} times")
            content = content.replace(before, after)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(content)


_STEP = re.compile(r"^\s*\[\s*(\d+)(?:/(\d+)|%)\]")


class _Bar:
    """A progress bar with elapsed time and ETA; a line per 10% when not on a terminal."""

    def __init__(self) -> None:
        self.start = time.time()
        self.tty = sys.stdout.isatty()
        self.shown = -1

    def __call__(self, percent: int) -> None:
        elapsed = time.time() - self.start
        eta = elapsed * (100 - percent) / percent if percent else 0
        if self.tty:
            done = 30 * percent // 100
            sys.stdout.write(
                f"\r  [{'#' * done}{'.' * (30 - done)}] {percent:3d}%  "
                f"{elapsed:4.0f} s elapsed, ~{eta:3.0f} s left "
            )
        elif percent // 10 > self.shown:
            self.shown = percent // 10
            sys.stdout.write(f"  {percent:3d}%  {elapsed:4.0f} s elapsed, ~{eta:3.0f} s left\n")
        sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter to install into")
    ap.add_argument("--force", action="store_true", help="rebuild even if a wheel is cached")
    args = ap.parse_args()

    flags = build_flags()
    py_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    key = "\n".join(
        [
            VERSION,
            *(hashlib.sha256(p.read_bytes()).hexdigest() for p in PATCHES),
            " ".join(flags),
            CMAKE_ARGS,
            cpu_signature(),
            py_tag,
            platform.machine(),
            platform.system(),
        ]
    )
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    if not args.force and installed_tag(args.python) == tag:
        print(f"llama.cpp engine for this CPU already installed ({ENGINE} {VERSION}, {tag})")
        return 0
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pocketlm"
    wheel_dir = cache / "engine-wheels" / f"{VERSION}-{tag}"
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if args.force or not wheels:
        wheel_dir.parent.mkdir(parents=True, exist_ok=True)
        wheels = [build_wheel(wheel_dir, flags, wheel_dir.parent / f"build-{tag}.log")]
    else:
        print(f"using the llama.cpp engine built earlier for this CPU: {wheels[0]}")
    subprocess.run(
        [
            args.python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--force-reinstall",
            "--no-deps",
            str(wheels[0]),
        ],
        check=True,
    )
    # The engine's own pure-Python dependencies.
    subprocess.run(
        [
            args.python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "typing-extensions>=4.5",
            "numpy>=1.20",
            "diskcache>=5.6.1",
            "jinja2>=2.11.3",
        ],
        check=True,
    )
    subprocess.run(
        [
            args.python,
            "-c",
            "import json, llama_cpp, pathlib; (pathlib.Path("
            "llama_cpp.__file__).parent / 'pocketlm-build.json').write_text(json.dumps("
            f"{{'tag': '{tag}', 'flags': {flags!r}, "
            f"'patches': {[p.name for p in PATCHES]!r}}}))",
        ],
        check=True,
    )
    print(f"installed {ENGINE} {VERSION} built for this CPU ({tag})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
