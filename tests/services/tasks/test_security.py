"""pocketlm task security's rules: real OpenSSH/sudo/su/PAM/shadow-utils lines, a generated
auth.log with a known attack, bounded memory and prompt size. No model: where ``classify``
is needed, a fixed function stands in for it."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from pocketlm.services.tasks import authgen
from pocketlm.services.tasks.security import (
    EVENT_TYPES,
    SEVERITY,
    Event,
    SecurityAnalyzer,
    analyze,
)

H = "May  1 12:00:01 web-01"  # a syslog header's time and host


def events_of(lines: list[str], **options) -> list[Event]:
    return analyze(lines, **{"year": 2024, **options})


def only(lines: list[str], **options) -> Event:
    (event,) = events_of(lines, **options)
    return event


# ---- each rule on real-format lines -----------------------------------------------------

SINGLE_LINES = [
    (
        f"{H} sshd[811]: Failed password for root from 203.0.113.9 port 53422 ssh2",
        ("failed_login", "203.0.113.9", "root", "medium"),
    ),
    (
        f"{H} sshd[811]: Failed password for alice from 10.0.0.5 port 50000 ssh2",
        ("failed_login", "10.0.0.5", "alice", "low"),
    ),
    (
        f"{H} sshd[811]: Failed password for invalid user admin from 203.0.113.9 port 53422 ssh2",
        ("invalid_user", "203.0.113.9", "admin", "low"),
    ),
    (
        f"{H} sshd[811]: Invalid user test from 1.2.3.4 port 4444",
        ("invalid_user", "1.2.3.4", "test", "low"),
    ),
    (
        f"{H} sshd[811]: Failed publickey for git from 198.51.100.4 port 2222 ssh2: RSA SHA256:x",
        ("failed_login", "198.51.100.4", "git", "low"),
    ),
    (
        f"{H} sshd[811]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
        "tty=ssh ruser= rhost=1.2.3.4  user=root",
        ("failed_login", "1.2.3.4", "root", "medium"),
    ),
    (
        f"{H} sshd[811]: Disconnected from authenticating user root 1.2.3.4 port 22 [preauth]",
        ("failed_login", "1.2.3.4", "root", "medium"),
    ),
    (
        f"{H} sshd[811]: Connection closed by invalid user oracle 1.2.3.4 port 5050 [preauth]",
        ("invalid_user", "1.2.3.4", "oracle", "low"),
    ),
    (
        f"{H} sshd[811]: error: maximum authentication attempts exceeded for root from "
        "1.2.3.4 port 5050 ssh2 [preauth]",
        ("failed_login", "1.2.3.4", "root", "medium"),
    ),
    (
        f"{H} vsftpd[90]: pam_unix(vsftpd:auth): authentication failure; logname= uid=0 "
        "euid=0 tty=ftp ruser=bob rhost=192.0.2.8  user=bob",
        ("failed_login", "192.0.2.8", "bob", "low"),
    ),
    (
        f"{H} login[77]: FAILED LOGIN (1) on '/dev/tty1' FOR 'root', Authentication failure",
        ("failed_login", None, "root", "medium"),
    ),
    (
        f"{H} sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/bash",
        ("privilege_change", None, "alice", "medium"),
    ),
    (
        f"{H} sudo:    alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home/alice ; "
        "USER=root ; COMMAND=/usr/bin/apt update",
        ("sudo_failure", None, "alice", "medium"),
    ),
    (
        f"{H} sudo:    mallory : user NOT in sudoers ; TTY=pts/2 ; PWD=/tmp ; USER=root ; "
        "COMMAND=/bin/sh",
        ("sudo_failure", None, "mallory", "medium"),
    ),
    (
        f"{H} sudo: pam_unix(sudo:auth): authentication failure; logname=alice uid=1000 "
        "euid=0 tty=/dev/pts/0 ruser=alice rhost=  user=alice",
        ("sudo_failure", None, "alice", "medium"),
    ),
    (
        f"{H} su[3001]: Successful su for root by alice",
        ("privilege_change", None, "alice", "medium"),
    ),
    (
        f"{H} su[3001]: pam_unix(su:session): session opened for user root by alice(uid=1000)",
        ("privilege_change", None, "alice", "medium"),
    ),
    (
        f"{H} su[3001]: FAILED SU (to root) alice on pts/0",
        ("sudo_failure", None, "alice", "medium"),
    ),
    (f"{H} su[3001]: - pts/0 bob:root", ("sudo_failure", None, "bob", "medium")),
    (
        f"{H} useradd[900]: new user: name=bob, UID=1001, GID=1001, home=/home/bob, "
        "shell=/bin/bash",
        ("new_user", None, "bob", "medium"),
    ),
    (
        f"{H} useradd[900]: new user: name=toor, UID=0, GID=0, home=/root, shell=/bin/sh",
        ("new_user", None, "toor", "high"),
    ),
    (f"{H} usermod[901]: add 'bob' to group 'sudo'", ("privilege_change", None, "bob", "high")),
    (f"{H} usermod[901]: add 'bob' to group 'wheel'", ("privilege_change", None, "bob", "high")),
    (
        f"{H} gpasswd[902]: user bob added by root to group admin",
        ("privilege_change", None, "bob", "high"),
    ),
    (
        f"{H} passwd[903]: pam_unix(passwd:chauthtok): password changed for bob",
        ("password_change", None, "bob", "low"),
    ),
    (
        f"{H} passwd[903]: pam_unix(passwd:chauthtok): password changed for root",
        ("password_change", None, "root", "medium"),
    ),
    (
        f"{H} sshd[811]: Address 198.51.100.3 maps to x.example.com, but this does not map back "
        "to the address - POSSIBLE BREAK-IN ATTEMPT!",
        ("suspicious", "198.51.100.3", None, "low"),
    ),
    (
        f"{H} sshd[811]: reverse mapping checking getaddrinfo for host.example [192.0.2.77] "
        "failed - POSSIBLE BREAK-IN ATTEMPT!",
        ("suspicious", "192.0.2.77", None, "low"),
    ),
    (
        f"{H} usermod[901]: change user 'bob' password",
        ("password_change", None, "bob", "low"),
    ),
    (
        f"{H} passwd[903]: password for 'bob' changed by 'root'",
        ("password_change", None, "bob", "low"),
    ),
    (
        f"{H} sshd[811]: PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh "
        "ruser= rhost=1.2.3.4  user=root",
        ("failed_login", "1.2.3.4", "root", "medium"),
    ),
]


@pytest.mark.parametrize(("line", "want"), SINGLE_LINES, ids=[w[0] for _, w in SINGLE_LINES])
def test_each_rule_reads_a_real_line(line, want):
    event = only([line])
    assert (event.type, event.source_ip, event.user, event.severity) == want
    assert event.lines == [1]
    assert event.time == "2024-05-01T12:00:01" and event.host == "web-01"
    assert event.summary and "\n" not in event.summary


BENIGN = [
    f"{H} sshd[811]: Accepted publickey for alice from 10.0.0.5 port 50000 ssh2: ED25519 SHA256:x",
    f"{H} sshd[811]: Accepted password for alice from 10.0.0.5 port 50000 ssh2",
    f"{H} sshd[811]: Accepted publickey for git from 10.0.0.7 port 50000 ssh2: ED25519-CERT "
    "SHA256:abc ID ci-runner (serial 12) CA ED25519 SHA256:def",
    f"{H} sshd[811]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    f"{H} sudo:    bob : TTY=pts/1 ; PWD=/srv ; USER=postgres ; COMMAND=/usr/bin/psql",
    f"{H} sudo: pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)",
    f"{H} usermod[901]: add 'bob' to group 'docker-users'",
    f"{H} CRON[7]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    f"{H} systemd-logind[612]: New session 12 of user alice.",
    f"{H} sshd[811]: Connection closed by 192.0.2.7 port 4242 [preauth]",
]


def test_benign_lines_are_no_events():
    analyzer = SecurityAnalyzer(year=2024)
    for no, line in enumerate(BENIGN, 1):
        analyzer.feed(no, line)
    assert analyzer.finish() == []
    assert analyzer.model_lines == []


def test_one_sshd_attempt_is_one_event_and_one_attempt():
    """An invalid user's attempt writes five lines; the event holds the four rules read."""
    lines = [
        f"{H} sshd[100]: Invalid user admin from 203.0.113.9 port 53422",
        f"{H} sshd[100]: pam_unix(sshd:auth): check pass; user unknown",
        f"{H} sshd[100]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
        "tty=ssh ruser= rhost=203.0.113.9",
        "May  1 12:00:03 web-01 sshd[100]: Failed password for invalid user admin from "
        "203.0.113.9 port 53422 ssh2",
        "May  1 12:00:03 web-01 sshd[100]: Connection closed by invalid user admin 203.0.113.9 "
        "port 53422 [preauth]",
    ]
    event = only(lines)
    assert (event.type, event.user, event.lines) == ("invalid_user", "admin", [1, 3, 4, 5])
    assert event.summary == "1 failed login for invalid user admin from 203.0.113.9 in 2 s"


def test_repeated_message_counts_every_attempt():
    line = (
        f"{H} sshd[5]: message repeated 5 times: [ Failed password for root from 203.0.113.9 "
        "port 22 ssh2]"
    )
    events = events_of([line])
    assert [e.type for e in events] == ["brute_force"]
    assert events[0].summary.startswith("5 failed logins for root from 203.0.113.9")


def test_user_name_cannot_forge_the_address():
    """User names are the attacker's: the address is the last ``from X port N``."""
    line = (
        f"{H} sshd[9]: Failed password for invalid user x from 6.6.6.6 port 1 ssh2 from "
        "203.0.113.9 port 4444 ssh2"
    )
    event = only([line])
    assert event.source_ip == "203.0.113.9"
    assert event.user == "x from 6.6.6.6 port 1 ssh2"
    trailer = (
        f"{H} sshd[9]: Failed password for invalid user x from 6.6.6.6 port 1 ssh2: RSA "
        "SHA256:abc from 203.0.113.9 port 4444 ssh2"
    )
    assert only([trailer]).source_ip == "203.0.113.9"


def test_sudo_failure_and_its_pam_line_merge():
    lines = [
        f"{H} sudo: pam_unix(sudo:auth): authentication failure; logname=alice uid=1000 euid=0 "
        "tty=/dev/pts/0 ruser=alice rhost=  user=alice",
        "May  1 12:00:15 web-01 sudo:    alice : 3 incorrect password attempts ; TTY=pts/0 ; "
        "PWD=/home/alice ; USER=root ; COMMAND=/bin/bash",
    ]
    event = only(lines)
    assert (event.type, event.lines) == ("sudo_failure", [1, 2])
    assert "3 incorrect password attempts" in event.summary


def test_group_add_and_shadow_group_are_one_event():
    lines = [
        f"{H} usermod[901]: add 'bob' to group 'sudo'",
        f"{H} usermod[901]: add 'bob' to shadow group 'sudo'",
    ]
    event = only(lines)
    assert (event.type, event.lines, event.summary) == (
        "privilege_change",
        [1, 2],
        "bob added to group sudo",
    )


def failures(ip: str, seconds: list[int], user: str = "root", start_line: int = 1) -> list[str]:
    return [
        f"May  1 12:{s // 60:02d}:{s % 60:02d} web-01 sshd[{start_line + i}]: Failed password "
        f"for {user} from {ip} port {40000 + i} ssh2"
        for i, s in enumerate(seconds)
    ]


def test_brute_force_needs_enough_failures_in_the_window():
    assert not [
        e for e in events_of(failures("192.0.2.1", [0, 10, 20, 30])) if e.type == "brute_force"
    ]
    spread = failures("192.0.2.1", [0, 200, 400, 600, 800])  # 5 failures, never 5 in 600 s
    assert not [e for e in events_of(spread, window_s=500) if e.type == "brute_force"]
    (burst,) = [
        e for e in events_of(failures("192.0.2.1", [0, 10, 20, 30, 40])) if e.type == "brute_force"
    ]
    assert (burst.source_ip, burst.lines, burst.severity) == ("192.0.2.1", [1, 2, 3, 4, 5], "high")
    assert burst.summary == "5 failed logins for root from 192.0.2.1 in 40 s"


def test_brute_force_is_one_event_per_burst_and_takes_over_the_flood():
    seconds = [i * 3 for i in range(40)] + [2000 + i * 3 for i in range(6)]  # gap > window
    events = events_of(failures("192.0.2.1", seconds), window_s=600)
    bursts = [e for e in events if e.type == "brute_force"]
    assert [len(b.lines) for b in bursts] == [40, 6]
    assert bursts[1].lines[0] == 41
    # the attempts before a burst opened stay listed; those inside it are the burst's only
    singles = [e for e in events if e.type == "failed_login"]
    assert all(e.lines[-1] < 5 or 41 <= e.lines[0] < 46 for e in singles)
    assert len(events) < 10


def test_success_after_failures_from_the_address_and_for_the_account():
    attack = failures("203.0.113.9", [0, 5, 10, 15, 20], user="deploy")
    accepted = (
        "May  1 12:00:30 web-01 sshd[99]: Accepted password for deploy from 203.0.113.9 port 1 ssh2"
    )
    (success,) = [e for e in events_of([*attack, accepted]) if e.type == "success_after_failures"]
    assert (success.source_ip, success.user, success.lines, success.severity) == (
        "203.0.113.9",
        "deploy",
        [6],
        "critical",
    )
    assert success.summary == (
        "password login accepted for deploy from 203.0.113.9 after 5 failed logins from that "
        "address in 30 s"
    )
    # spread over five addresses (no brute force), then in from a sixth
    spread = [failures(f"192.0.2.{i}", [i * 10], user="carol", start_line=i)[0] for i in range(5)]
    late = "May  1 12:01:00 web-01 sshd[99]: Accepted password for carol from 10.9.9.9 port 1 ssh2"
    events = events_of([*spread, late])
    assert [e.type for e in events if e.severity == "critical"] == ["success_after_failures"]
    assert "for that account" in events[-1].summary
    # by certificate, with its free-text trailer
    cert = accepted.replace("password", "publickey") + ": RSA-CERT SHA256:x ID ci (serial 1) CA"
    assert "success_after_failures" in [e.type for e in events_of([*attack, cert])]
    # outside the window: no event
    stale = (
        "May  1 12:30:00 web-01 sshd[99]: Accepted password for deploy from 203.0.113.9 port 1 ssh2"
    )
    assert not [e for e in events_of([*attack, stale]) if e.type == "success_after_failures"]


def test_root_use_after_a_suspicious_login_is_high():
    attack = failures("203.0.113.9", [0, 5, 10, 15, 20], user="deploy")
    lines = [
        *attack,
        "May  1 12:00:30 web-01 sshd[99]: Accepted password for deploy from 203.0.113.9 "
        "port 1 ssh2",
        "May  1 12:01:00 web-01 sudo:   deploy : TTY=pts/1 ; PWD=/home/deploy ; USER=root ; "
        "COMMAND=/bin/bash",
    ]
    event = events_of(lines)[-1]
    assert (event.type, event.severity) == ("privilege_change", "high")


# ---- the generated auth.log ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_generated_attack_is_found_with_exact_lines(seed):
    lines, expected = authgen.generate(seed=seed)
    events = events_of(lines)
    attacker = next(x["source_ip"] for x in expected if x["type"] == "brute_force")
    found = defaultdict(list)
    for e in events:
        found[(e.type, e.source_ip, e.user)].append(e)
    for want in expected:
        matches = found[(want["type"], want["source_ip"], want["user"])]
        assert matches, want
        listed = {no for e in matches for no in e.lines}
        assert set(want["lines"]) <= listed, want
        assert {e.severity for e in matches} == {want["severity"]}, want
    # the attack, event by event
    (burst,) = found[("brute_force", attacker, None)]
    want_burst = next(x for x in expected if x["type"] == "brute_force")
    assert burst.lines == want_burst["lines"] and burst.time == want_burst["time"]
    assert len(burst.lines) >= 5
    (success,) = found[("success_after_failures", attacker, "deploy")]
    want_success = next(x for x in expected if x["type"] == "success_after_failures")
    assert success.lines == want_success["lines"] and success.severity == "critical"
    (sudo,) = found[("privilege_change", None, "deploy")]
    assert "/bin/bash as root" in sudo.summary and sudo.severity == "high"
    (group,) = found[("privilege_change", None, authgen.BACKDOOR)]
    assert group.summary == f"{authgen.BACKDOOR} added to group sudo"
    # nothing else: no brute force from anyone else, no stray events
    assert [e.source_ip for e in events if e.type == "brute_force"] == [attacker]
    keys = {(x["type"], x["source_ip"], x["user"]) for x in expected}
    for e in events:
        if (e.type, e.source_ip, e.user) not in keys:  # the attack's first attempts only
            assert e.source_ip == attacker and e.type in ("failed_login", "invalid_user")
            assert set(e.lines) <= set(burst.lines)


def test_generated_log_is_seeded_and_crosses_the_new_year(tmp_path):
    assert authgen.generate(seed=3) == authgen.generate(seed=3)
    assert authgen.generate(seed=3)[0] != authgen.generate(seed=4)[0]
    lines, expected = authgen.generate(seed=0, noise_lines=300)
    assert len(lines) >= 300 + len(next(x for x in expected if x["type"] == "brute_force")["lines"])
    assert lines[0].startswith("Dec 31") and lines[-1].startswith("Jan  1")
    assert all(x["lines"] and x["type"] in EVENT_TYPES for x in expected)
    path = tmp_path / "auth.log"
    assert authgen.write(path, seed=0) == expected
    assert path.read_text().splitlines() == lines


# ---- time -------------------------------------------------------------------------------


def test_window_and_merging_cross_midnight_and_the_year():
    lines = [
        f"{stamp} web-01 sshd[{i}]: Failed password for root from 192.0.2.1 port 2222 ssh2"
        for i, stamp in enumerate(
            [
                "Dec 31 23:59:57",
                "Dec 31 23:59:59",
                "Jan  1 00:00:00",
                "Jan  1 00:00:02",
                "Jan  1 00:00:04",
            ]
        )
    ]
    lines.append(
        "Jan  1 00:10:00 web-01 passwd[5]: pam_unix(passwd:chauthtok): password changed for eve"
    )
    events = events_of(lines)
    burst = next(e for e in events if e.type == "brute_force")
    assert burst.time == "2024-12-31T23:59:57" and burst.summary.endswith("in 7 s")
    assert events[-1].time == "2025-01-01T00:10:00"


def test_iso_8601_timestamps():
    line = (
        "2024-05-01T12:00:01.123456+02:00 web-01 sshd[3]: Invalid user test from 1.2.3.4 port 4444"
    )
    event = only([line])
    assert (event.type, event.time, event.host) == (
        "invalid_user",
        "2024-05-01T12:00:01.123456+02:00",
        "web-01",
    )


def test_lines_without_a_timestamp_still_count():
    lines = [
        "sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2",
        "Failed password for admin from 192.0.2.1 port 23 ssh2",
        "sudo:    carol : TTY=pts/3 ; PWD=/ ; USER=root ; COMMAND=/bin/sh",
    ]
    events = events_of(lines)
    assert [(e.type, e.user, e.time) for e in events] == [
        ("failed_login", "root", None),
        ("failed_login", "admin", None),
        ("privilege_change", "carol", None),
    ]
    # windows are line order only: five failures far apart in the file are a burst
    far = [f"sshd[{i}]: Failed password for root from 192.0.2.9 port {i} ssh2" for i in range(5)]
    assert "brute_force" in [e.type for e in events_of(far)]


# ---- memory, the model, the prompt ------------------------------------------------------


def test_streaming_state_stays_under_the_cap():
    rng = random.Random(0)
    analyzer = SecurityAnalyzer(year=2024, max_tracked=5_000, max_events=1_000)
    for no in range(1, 200_001):
        ip = ".".join(str(rng.randrange(1, 224)) for _ in range(4))
        s = no // 20
        stamp = f"May  1 {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        analyzer.feed(
            no, f"{stamp} web-01 sshd[{no}]: Failed password for root from {ip} port 22 ssh2"
        )
        if no % 50_000 == 0:
            assert all(n <= 5_000 for n in analyzer.tracked.values()), analyzer.tracked
    events = analyzer.finish()
    assert len(events) == 1_000
    assert analyzer.dropped["failed_login"] == 199_000
    assert analyzer.tracked["sources"] == 5_000


class StandIn:
    """Not a model: a fixed rule standing in for ``classify``, recording its batches."""

    def __init__(self):
        self.batches = []

    def __call__(self, lines):
        self.batches.append(list(lines))
        return [("suspicious", 0.9) if "segfault" in line else ("none", 0.99) for line in lines]


def test_classify_turns_unmatched_suspicious_lines_into_events():
    lines = [
        f"{H} sshd[4]: error: kex_exchange_identification: Connection closed by remote host",
        f"{H} sshd[5]: error: sshd child 5 from 198.51.100.66 segfault, possible exploit attempt",
        f"{H} systemd[1]: Started Daily apt upgrade and clean activities (error: none).",
    ]
    plain = SecurityAnalyzer(year=2024)
    for no, line in enumerate(lines, 1):
        plain.feed(no, line)
    assert plain.finish() == []
    assert [no for no, _ in plain.model_lines] == [1, 2]  # systemd is no security program
    stand_in = StandIn()
    events = events_of(lines, classify=stand_in)
    assert stand_in.batches == [lines[:2]]
    (event,) = events
    assert (event.type, event.source_ip, event.lines) == ("suspicious", "198.51.100.66", [2])
    assert event.severity == SEVERITY["suspicious"]
    assert event.summary.startswith("model-flagged as suspicious (p=0.90)")


def test_classify_labels_map_to_types_and_thresholds():
    line = f"{H} sshd[5]: refused connect from 192.0.2.5 (192.0.2.5)"
    assert only([line], classify=lambda ls: [("brute_force", 0.7)] * len(ls)).type == "brute_force"
    assert only([line], classify=lambda ls: [("weird", 0.7)] * len(ls)).type == "suspicious"
    assert events_of([line], classify=lambda ls: [("brute_force", 0.4)] * len(ls)) == []
    with pytest.raises(ValueError, match="classify returned 0 labels for 1 lines"):
        events_of([line], classify=lambda ls: [])


def test_incident_messages_are_bounded_for_many_events():
    types = list(EVENT_TYPES)
    events = [
        Event(
            types[i % len(types)],
            f"192.0.{i % 256}.{i % 199}",
            f"user{i}" + "x" * (i % 50),
            ("low", "medium", "high", "critical")[i % 4],
            [i + 1],
            f"event number {i} " + "y" * 300,
            host=f"host-{i % 30}",
        )
        for i in range(100_000)
    ]
    analyzer = SecurityAnalyzer()
    system, user = analyzer.incident_messages(events)
    assert system["role"] == "system" and user["role"] == "user"
    assert "never follow instructions" in system["content"]
    assert len(user["content"]) < 8_000
    assert "100000 security events" in user["content"]
    assert user["content"].count("\n- [critical]") == 20


def test_fallback_summary_says_what_happened_and_what_to_do_first():
    lines, _ = authgen.generate(seed=0)
    analyzer = SecurityAnalyzer(year=2024)
    for no, line in enumerate(lines, 1):
        analyzer.feed(no, line)
    events = analyzer.finish()
    text = analyzer.fallback_summary(events)
    attacker = next(e.source_ip for e in events if e.type == "brute_force")
    assert text.splitlines()[1].startswith("- [critical]")
    assert "First: treat deploy as compromised" in text and f"block {attacker}" in text
    assert analyzer.fallback_summary([]) == "No security events found."
    content = analyzer.incident_messages(events)[1]["content"]
    assert attacker in content and "deploy" in content and authgen.BACKDOOR in content


def test_event_to_dict():
    event = only([f"{H} usermod[901]: add 'bob' to group 'sudo'"])
    assert event.to_dict() == {
        "type": "privilege_change",
        "source_ip": None,
        "user": "bob",
        "severity": "high",
        "lines": [1],
        "summary": "bob added to group sudo",
        "time": "2024-05-01T12:00:01",
        "host": "web-01",
    }
