"""Chat templates come from downloaded files: they render in a sandbox."""

import pytest

from pocketlm.services.chat_template import TemplateError, render
from tests.tinymodel import CHATML_TEMPLATE

MSGS = [{"role": "user", "content": "hi"}]


def test_chatml_renders_with_generation_prompt():
    out = render(CHATML_TEMPLATE, MSGS)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append(1) }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_unsafe_templates_are_refused(template):
    with pytest.raises(TemplateError):
        render(template, MSGS)


def test_raise_exception_and_syntax_errors_are_one_line_errors():
    with pytest.raises(TemplateError, match="no system role"):
        render("{{ raise_exception('no system role') }}", MSGS)
    with pytest.raises(TemplateError, match="invalid"):
        render("{% for %}", MSGS)
