"""The tiers file: what it accepts, and errors that name the file, line and field."""

from __future__ import annotations

import pytest

from pocketlm.errors import UsageError
from pocketlm.services.route import tiers

GOOD = """\
router = "router.json"
cascade = false

[[tier]]
name = "local"
model = "qwen2.5-coder-0.5b-instruct"

[[tier]]
name = "cloud"
url = "https://api.example.com/v1/"
model = "big-model"
api_key_env = "CLOUD_KEY"
price_in = 0.15
price_out = 0.6
"""


def write(tmp_path, text: str):
    path = tmp_path / "tiers.toml"
    path.write_text(text)
    return path


def test_a_tiers_file_gives_local_and_remote_tiers_with_their_defaults(tmp_path):
    t = tiers.load(write(tmp_path, GOOD))
    assert [x.name for x in t.local] == ["local"] and [x.name for x in t.remote] == ["cloud"]
    cloud = t.get("cloud")
    assert cloud.url == "https://api.example.com/v1"  # the trailing slash dropped
    assert cloud.privacy == "redact"  # the default for a remote tier
    assert t.get("local").privacy == "allow"
    assert cloud.cost(1_000_000, 500_000) == pytest.approx(0.45)
    assert t.router == tmp_path / "router.json" and t.cascade is False
    assert t.allowed_hosts() == ["api.example.com:443"]
    assert t.best_local.name == "local"


def test_a_request_may_tighten_a_policy_never_loosen_it():
    assert tiers.tighter("allow", "redact") == "redact"
    assert tiers.tighter("block", "allow") == "block"
    assert tiers.tighter("redact", "allow") == "redact"


@pytest.mark.parametrize(
    ("edit", "line", "field"),
    [
        (('privacy = "redact"', 'privacy = "sometimes"'), 15, "privacy"),
        (("price_in = 0.15", 'price_in = "cheap"'), 13, "price_in"),
        (("price_out = 0.6", "price_out = -1"), 14, "price_out"),
        (('url = "https://api.example.com/v1/"', 'url = "ftp://x"'), 10, "url"),
        (('url = "https://api.example.com/v1/"', 'url = "https://u:p@x/v1"'), 10, "url"),
        (('api_key_env = "CLOUD_KEY"', 'api_key_env = "sk-123 secret"'), 12, "api_key_env"),
        (('model = "big-model"', 'modle = "big-model"'), 11, "modle"),
        (('name = "cloud"', 'name = "local"'), 9, "name"),
        (('name = "cloud"', 'name = "auto"'), 9, "name"),
    ],
)
def test_errors_name_the_file_line_and_field(tmp_path, edit, line, field):
    text = GOOD + 'privacy = "redact"\n' if edit[0].startswith("privacy") else GOOD
    path = write(tmp_path, text.replace(*edit))
    with pytest.raises(UsageError) as e:
        tiers.load(path)
    assert f"{path}:{line}" in e.value.message, e.value.message
    assert f"field '{field}'" in e.value.message


def test_syntax_errors_missing_tables_and_files_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="not valid TOML.*line 2"):
        tiers.load(write(tmp_path, "[[tier]]\nname = \n"))
    with pytest.raises(UsageError, match=r"no \[\[tier\]\] table"):
        tiers.load(write(tmp_path, 'router = "r.json"\n'))
    with pytest.raises(UsageError, match="not found"):
        tiers.load(tmp_path / "missing.toml")
    with pytest.raises(UsageError, match="top level, field 'routr'"):
        tiers.load(write(tmp_path, 'routr = "x"\n' + GOOD))


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("# " + "x" * (tiers.MAX_BYTES + 10))
    with pytest.raises(UsageError, match="over 1 MiB"):
        tiers.load(path)
