"""Work run in a child process that speaks JSON lines, so that llama.cpp aborting or
crashing there cannot take the caller down: the job goes in on stdin, messages come back
on stdout, one JSON object per line. Interrupted or failing, the child is killed."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class JsonChild:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.code: int | None = None  # exit status, once the child has ended
        self.stderr_tail = ""  # the last line it wrote to stderr ("" for none)

    def messages(self) -> Iterator[dict[str, Any]]:
        """Each JSON object the child writes; anything else it prints (engine chatter) is
        skipped."""
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                yield msg

    def send(self, line: str, *, last: bool = False) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        if last:
            self.proc.stdin.close()


@contextmanager
def json_child(
    cmd: list[str], job: dict[str, Any], *, keep_stdin: bool = False
) -> Iterator[JsonChild]:
    """Start ``cmd``, write ``job`` as one JSON line (then close stdin unless
    ``keep_stdin``); the body reads ``messages()``. On a normal exit ``code`` is set;
    on any exit, a child still running is killed and ``stderr_tail`` is set."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            encoding="utf-8",
        )
        child = JsonChild(proc)
        try:
            child.send(json.dumps(job), last=not keep_stdin)
            yield child
            child.code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.seek(0)
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:]
            child.stderr_tail = tail[0] if tail else ""
