"""`pocketlm list --catalog` and `pocketlm fit` of a catalog model not pulled yet, as a user
runs them."""

from __future__ import annotations

import json

from pocketlm.store import catalog
from tests.conftest import assert_clean_error, run_cli

SHA = "cd" * 32
TEAM = f"""
[[model]]
name = "acme-support-135m"
description = "Acme's support bot"
packages = ["acme-support-135m-part1==1.0.0"]
members = ["acme_support_135m_part1/data/part01.bin"]
sha256 = "{SHA}"
size_bytes = 98362432
license = "Apache-2.0"
chat = true
"""


def test_list_catalog_shows_sizes_parameters_and_quantization():
    proc = run_cli("list", "--catalog")
    assert proc.returncode == 0, proc.stderr_text
    header, *rows = proc.stdout_text.splitlines()
    assert header.split() == ["NAME", "SIZE", "PARAMS", "QUANT", "LICENSE", "PULLED", "DESCRIPTION"]
    row = next(r for r in rows if r.startswith("qwen2.5-coder-1.5b-instruct "))
    assert "1.1 GB" in row and "1.8B" in row and "Q4_K_M" in row and "Apache-2.0" in row
    assert len(rows) == len(catalog.BUILT_INS)


def test_list_catalog_names_where_other_entries_come_from(isolated_store):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text(TEAM)
    proc = run_cli("list", "--catalog")
    header, *rows = proc.stdout_text.splitlines()
    assert header.split()[-1] == "ORIGIN"
    row = next(r for r in rows if r.startswith("acme-support-135m "))
    assert row.endswith(str(isolated_store / "catalog.toml"))
    data = json.loads(run_cli("list", "--catalog", "--json").stdout_text)
    acme = next(e for e in data if e["name"] == "acme-support-135m")
    assert acme["origin"] == str(isolated_store / "catalog.toml") and acme["pulled"] is False
    assert acme["parameters"] is None  # no shape recorded


def test_list_catalog_json_has_every_field():
    data = json.loads(run_cli("list", "--catalog", "--json").stdout_text)
    [qwen] = [e for e in data if e["name"] == "qwen2.5-coder-0.5b-instruct"]
    for key in ("packages", "members", "sha256", "size_bytes", "license", "chat", "homepage"):
        assert key in qwen
    assert qwen["parameters"] == 630_167_424 and qwen["n_layer"] == 24
    assert qwen["index_url"] is None and qwen["parent"] is None
    assert qwen["origin"] == "built-in" and qwen["pulled"] is False


def test_a_broken_catalog_file_is_one_line(isolated_store):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text(TEAM.replace("size_bytes = 98362432", ""))
    proc = run_cli("list", "--catalog")
    assert_clean_error(proc, "model 'acme-support-135m' (entry 1): size_bytes is required")


def test_fit_of_a_catalog_model_not_pulled_uses_its_entry():
    proc = run_cli("fit", "qwen2.5-coder-1.5b-instruct", "--json")
    assert proc.returncode in (0, 1), proc.stderr_text  # 1: it does not fit here
    r = json.loads(proc.stdout_text)
    assert r["source"] == "catalog" and r["ctx"] == 4096 and r["context_length"] == 32768
    assert r["weights_bytes"] == 1_111_370_240
    # 28 layers x 2 KV heads x (128 + 128) dims x 2 bytes x 4096 tokens
    assert r["kv_bytes"] == 28 * 2 * 256 * 2 * 4096
    text = run_cli("fit", "qwen2.5-coder-1.5b-instruct", "--ctx", "1024").stdout_text
    assert "at 1024 tokens" in text and "catalog entry" in text and "tok/s" in text


def test_fit_of_a_catalog_model_without_shapes_says_to_pull_it(isolated_store):
    isolated_store.mkdir()
    (isolated_store / "catalog.toml").write_text(TEAM)
    proc = run_cli("fit", "acme-support-135m")
    assert_clean_error(proc, "records no model shapes", "pocketlm pull acme-support-135m")


def test_fit_of_an_unknown_name_still_suggests_close_ones():
    assert_clean_error(run_cli("fit", "qwen2.5-coder-1.5b"), "unknown model", "did you mean")
