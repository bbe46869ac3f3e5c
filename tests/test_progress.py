"""What the command line's progress prints for people."""

from __future__ import annotations

import io

from pocketlm.errors import option
from pocketlm.progress import RichProgress


def test_a_note_names_options_as_the_command_line_spells_them():
    out = io.StringIO()
    progress = RichProgress(file=out)
    progress.note(f"note: {option('calibrate', '[runs]/data.jsonl')} keeps its accuracy")
    progress.note(f"note: measure on other text with {option('eval_text')}")
    long = "removed the earlier run's " + "/tmp/store/runs/" * 12
    progress.note(long)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "note: --calibrate [runs]/data.jsonl keeps its accuracy",  # brackets are not markup
        "note: measure on other text with --eval-text",
        long,  # one line, however narrow the console
    ]
