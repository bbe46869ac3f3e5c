"""A chat template is code inside a downloaded model file: `pocketlm run` stops a hostile
one within its budgets, with a one-line error instead of a hang or a traceback."""

from __future__ import annotations

import pytest

from tests.conftest import assert_clean_error, run_cli
from tests.tinymodel import write_tiny_gguf

TINY = ("--ctx", "256", "--threads", "1")

HOSTILE = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}"
    "{% endfor %}{% endfor %}",
    "nested loops that output nothing": "{% for i in range(100000) %}"
    "{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "a huge range": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "a recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "a huge string": "{{ 'x' * 10**10 }}",
    "a huge list": "{{ ([0] * 10**10)|length }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_chat_template_is_a_one_line_error(name, tmp_path):
    path = write_tiny_gguf(tmp_path / "hostile.gguf", chat_template=HOSTILE[name])
    # The template's budget is 1 s; the rest is starting Python and loading the model. A hang
    # fails here (the child is killed) rather than blocking the test run.
    proc = run_cli("run", str(path), "hi", *TINY, timeout=30)
    line = assert_clean_error(proc, "chat template", "--raw")
    assert line.startswith("error: the model's chat template"), line
