"""The privacy detector: each entity type, checksums, bounded cost, and no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("presidio_analyzer")

from pocketlm.services.privacy import detect  # noqa: E402
from pocketlm.services.privacy.detect import Detector, shared  # noqa: E402


def found(text: str) -> set[tuple[str, str]]:
    return {(s.entity_type, s.text) for s in shared().find(text)}


@pytest.mark.parametrize(
    "text, entity, value",
    [
        ("write to ann.lee@example.co.uk today", "EMAIL_ADDRESS", "ann.lee@example.co.uk"),
        ("call me on +44 20 7946 0958 please", "PHONE_NUMBER", "+44 20 7946 0958"),
        ("card 4111 1111 1111 1111 expired", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("card 2223000048410010 (Mastercard 2-series)", "CREDIT_CARD", "2223000048410010"),
        ("IBAN DE89 3704 0044 0532 0130 00 ok", "IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
        ("my SSN is 536-22-8726", "US_SSN", "536-22-8726"),
        ("NI number AB123456C", "UK_NINO", "AB123456C"),
        ("from 192.168.10.4 port 22", "IP_ADDRESS", "192.168.10.4"),
        (
            "db postgres://app:s3cr3t@db.internal:5432/prod.",
            "URL_CREDENTIALS",
            "postgres://app:s3cr3t@db.internal:5432/prod",
        ),
        ("key AKIAIOSFODNN7EXAMPLE", "API_KEY", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_" + "a1B2" * 9 + " leaked", "API_KEY", "ghp_" + "a1B2" * 9),
        (
            "slack xoxb-123456789012-abcdefABCDEF1234",
            "API_KEY",
            "xoxb-123456789012-abcdefABCDEF1234",
        ),
        ("OPENAI sk-proj-" + "x" * 40, "API_KEY", "sk-proj-" + "x" * 40),
        (
            "stripe sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
            "API_KEY",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        ),
        ("maps AIza" + "B" * 35, "API_KEY", "AIza" + "B" * 35),
        ("db_password=hunter22; retry", "API_KEY", "hunter22"),
        ("I was born on 12 March 1985 in a village", "DATE_OF_BIRTH", "12 March 1985"),
        ("DOB: 1985-03-12", "DATE_OF_BIRTH", "1985-03-12"),
        ("Hi, my name is Leocadia Guijarro Ojeda.", "PERSON", "Leocadia Guijarro Ojeda"),
        ("Please ask Dr. Kowalczyk about it", "PERSON", "Kowalczyk"),
        ("ship it to 221 Baker Street, London", "ADDRESS", "221 Baker Street, London"),
        ("Adresse: Hauptstraße 5, 10115 Berlin", "ADDRESS", "Hauptstraße 5, 10115 Berlin"),
        ("the invoice from Müller & Schmidt GmbH arrived", "ORGANIZATION", "Müller & Schmidt GmbH"),
        ("she moved to Rotterdam last year", "LOCATION", "Rotterdam"),
    ],
)
def test_finds_each_type(text, entity, value):
    assert (entity, value) in found(text)


def test_private_key_block():
    body = "\n".join(["MIIEowIBAAKCAQEA" + "q" * 48] * 5)
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    assert ("API_KEY", key) in found(f"config:\n{key}\nend")


def test_jwt():
    jwt = (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    assert ("API_KEY", jwt) in found(f"Authorization: Bearer {jwt}")


def test_checksums_are_checked():
    kinds = {e for e, _ in found("card 4111 1111 1111 1112 and IBAN DE89 3704 0044 0532 0130 01")}
    assert "CREDIT_CARD" not in kinds and "IBAN_CODE" not in kinds


@pytest.mark.parametrize(
    "text",
    [
        "The Quarterly Report is due on Monday, please Review The Attached Summary.",
        "Release 2.13.0 fixes the Memory Leak in the Scheduler, build 3f2a9c1d0b7e.",
        "Error 504 Gateway Timeout on /api/v2/orders/48213 after 30000 ms",
        "uuid 3b241101-e2bb-4255-8caf-4136c566a962 created at 2023-11-02 09:14:00",
        "password=<redacted> and token=${API_TOKEN}",
    ],
)
def test_no_entity_in_ordinary_text(text):
    assert found(text) == set()


def test_spans_sorted_and_disjoint_with_offsets():
    text = "Mail ann@example.com or bob@example.org, from 10.0.0.1, Dear Maria Rossi"
    spans = shared().find(text)
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))
    assert all(text[s.start : s.end] == s.text for s in spans)


def test_value_across_a_window_boundary_is_found():
    pad = "word " * ((detect.WINDOW - 10) // 5)
    text = pad + "mail carol.jones@example.com now " + pad
    assert ("EMAIL_ADDRESS", "carol.jones@example.com") in found(text)


def test_entities_restrict_and_unknown_is_refused():
    spans = Detector(["EMAIL_ADDRESS"]).find("ann@example.com from 10.0.0.1")
    assert [s.entity_type for s in spans] == ["EMAIL_ADDRESS"]
    with pytest.raises(ValueError, match="unknown entity type 'NAME'.*PERSON"):
        Detector(["NAME"])


def test_text_over_the_cap_is_refused():
    with pytest.raises(ValueError, match="limit"):
        shared().find("a" * (detect.MAX_CHARS + 1))


HOSTILE = {
    "a@": "a@" * 100_000,
    "digits": "1" * 200_000,
    "digits and spaces": "1 " * 100_000,
    "digits and dashes": "1-" * 100_000,
    "a.": "a." * 100_000,
    "capitalised words": "Aa " * 66_000,
    "key headers": "-----BEGIN PRIVATE KEY-----\n" * 7_000,
    "url starts": "http://a:" * 22_000,
    "assignments": "password=" * 22_000,
    "company words": "Ab Ab Ab Inc " * 15_000,
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_is_quick(name):
    shared().find("warm up")
    start = time.perf_counter()
    shared().find(HOSTILE[name])
    assert time.perf_counter() - start < 8.0  # about 1-3 s here; no regex backtracks for long


def test_importing_pocketlm_does_not_import_presidio():
    code = "import sys, pocketlm, pocketlm.cli.redact, pocketlm.services.privacy.detect\n"
    code += "print('presidio_analyzer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_OFFLINE = textwrap.dedent(
    """
    import sys
    attempts = []
    def hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
            attempts.append((event, str(args)[:80]))
    sys.addaudithook(hook)
    from pocketlm.services.privacy.detect import shared
    spans = shared().find("mail ann@example.co.uk, Dear John Smith")
    print(sorted(s.entity_type for s in spans))
    print(attempts)
    """
)


def test_detection_never_touches_the_network(tmp_path):
    """Under ``unshare -n`` (no network at all) and with an audit hook on every socket
    connection and DNS lookup: none is attempted (tldextract reads its bundled list)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("TLDEXTRACT_CACHE", None)
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _OFFLINE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    kinds, attempts = out.stdout.strip().splitlines()
    assert kinds == "['EMAIL_ADDRESS', 'PERSON']"
    assert attempts == "[]"
    assert not (tmp_path / "cache" / "python-tldextract").exists()


def test_a_contraction_before_a_name_is_not_part_of_it():
    text = "Hi, I'm Anna Schmidt and it's Paul Meyer here."
    found = [(s.entity_type, text[s.start : s.end]) for s in shared().find(text)]
    assert ("PERSON", "Anna Schmidt") in found and ("PERSON", "Paul Meyer") in found, found
