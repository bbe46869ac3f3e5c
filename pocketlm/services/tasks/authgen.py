"""A seeded, realistic auth.log with a known attack, to test ``pocketlm task security``.

Background: cron sessions, staff SSH logins by public key with their logind sessions and
logouts, staff sudo, a password typo, internet scanners trying a few user names (at most
``SCANNER_MAX_TRIES``, under the default brute-force threshold of 5). The attack: one
address tries invalid and valid accounts (one connection up to sshd's MaxAuthTries), gets
in as ``deploy``, runs ``sudo /bin/bash``, creates ``sysadmin``, sets its password and adds
it to the sudo group.

``generate`` returns the lines and the events a correct reader reports: type, source_ip,
user, severity, lines (1-based), time of the first line, and ``attack`` (False for the
benign ones), sorted by first line. The attack's single attempts are in its brute_force
event; a reader may also report its first few as failed_login / invalid_user.

Addresses come from the documentation ranges (RFC 5737) and 10.0.0.0/8. The log starts late
on Dec 31, 2024 (RFC 3164 stamps have no year), so it crosses the new year."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

START = datetime(2024, 12, 31, 22, 30)
SPAN_S = 3 * 3600
HOSTS = ("web-01", "bastion", "app-prod-2", "db-03")
ATTACKERS = ("203.0.113.9", "203.0.113.77", "198.51.100.23")
SCANNERS = ("192.0.2.14", "192.0.2.200", "198.51.100.140", "198.51.100.7", "203.0.113.250")
STAFF = {"alice": ("10.0.0.5", 1000), "bob": ("10.0.0.12", 1001)}
DEPLOY_UID = 1002
BACKDOOR = "sysadmin"
PROBE_NAMES = ("admin", "test", "oracle", "ubuntu", "postgres", "user", "pi", "guest", "git")
SCANNER_MAX_TRIES = 3
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
HOURLY = "cd / && run-parts --report /etc/cron.hourly"  # Debian's /etc/crontab, at :17
SYSSTAT = "command -v debian-sa1 > /dev/null && debian-sa1 1 1"  # every 10 min, at :05
SUDO_COMMANDS = (
    "/usr/bin/apt update",
    "/usr/bin/systemctl restart nginx",
    "/usr/bin/journalctl -u nginx --since today",
    "/usr/bin/tail -n 200 /var/log/nginx/error.log",
)


@dataclass
class _Entry:
    at: float  # seconds after START
    order: int
    text: str
    marks: tuple[dict, ...] = ()  # the expected events this line belongs to


@dataclass
class _Log:
    """Lines in the making, each with its time; sorted by time when done."""

    rng: random.Random
    host: str
    entries: list[_Entry] = field(default_factory=list)
    expected: list[dict] = field(default_factory=list)
    next_pid: int = 1200
    next_session: int = 40

    def pid(self) -> int:
        self.next_pid += self.rng.randint(3, 90)
        return self.next_pid

    def port(self) -> int:
        return self.rng.randint(32768, 60999)

    def session(self) -> int:
        self.next_session += 1
        return self.next_session

    def add(self, at: float, program: str, message: str, *marks: dict) -> None:
        stamp = START + timedelta(seconds=at)
        when = f"{MONTHS[stamp.month - 1]} {stamp.day:2d} {stamp:%H:%M:%S}"
        text = f"{when} {self.host} {program}: {message}"
        self.entries.append(_Entry(at, len(self.entries), text, marks))

    def expect(self, type_: str, ip: str | None, user: str | None, severity: str, attack: bool):
        event = {"type": type_, "source_ip": ip, "user": user, "severity": severity}
        event["attack"] = attack
        self.expected.append(event)
        return event

    def render(self) -> tuple[list[str], list[dict]]:
        self.entries.sort(key=lambda e: (e.at, e.order))
        for event in self.expected:
            event["lines"], event["time"] = [], None
        for no, entry in enumerate(self.entries, 1):
            for mark in entry.marks:
                if not mark["lines"]:
                    mark["time"] = (START + timedelta(seconds=int(entry.at))).isoformat()
                mark["lines"].append(no)
        self.expected.sort(key=lambda event: event["lines"][0])
        return [e.text for e in self.entries], self.expected


def _fingerprint(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "+/", k=43))


# ---- background --------------------------------------------------------------------------


def _cron(log: _Log, at: float, command: str) -> None:
    cron = f"CRON[{log.pid()}]"
    log.add(at, cron, "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)")
    log.add(at, cron, f"(root) CMD ({command})")
    log.add(at + 1, cron, "pam_unix(cron:session): session closed for user root")


def _staff_session(log: _Log, at: float, typo: bool = False) -> None:
    """A staff login by key (or by password after one typo), a while of work, a logout."""
    rng = log.rng
    user = rng.choice(sorted(STAFF))
    ip, uid = STAFF[user]
    sshd, port = f"sshd[{log.pid()}]", log.port()
    if typo:
        mark = log.expect("failed_login", ip, user, "low", attack=False)  # one try: no more
        log.add(at, sshd, _pam_auth_failure(ip, user), mark)
        log.add(at + 2, sshd, f"Failed password for {user} from {ip} port {port} ssh2", mark)
        at += rng.uniform(4, 9)
        log.add(at, sshd, f"Accepted password for {user} from {ip} port {port} ssh2")
    else:
        key = f"ED25519 SHA256:{_fingerprint(rng)}"
        log.add(at, sshd, f"Accepted publickey for {user} from {ip} port {port} ssh2: {key}")
    log.add(
        at, sshd, f"pam_unix(sshd:session): session opened for user {user}(uid={uid}) by (uid=0)"
    )
    session = log.session()
    log.add(at, "systemd-logind[612]", f"New session {session} of user {user}.")
    if rng.random() < 0.5:
        _staff_sudo(log, at + rng.uniform(20, 300), user, uid)
    end = at + rng.uniform(300, 2400)
    log.add(end, sshd, f"Received disconnect from {ip} port {port}:11: disconnected by user")
    log.add(end, sshd, f"Disconnected from user {user} {ip} port {port}")
    log.add(end, sshd, f"pam_unix(sshd:session): session closed for user {user}")
    log.add(
        end, "systemd-logind[612]", f"Session {session} logged out. Waiting for processes to exit."
    )
    log.add(end, "systemd-logind[612]", f"Removed session {session}.")


def _staff_sudo(log: _Log, at: float, user: str, uid: int) -> None:
    command = log.rng.choice(SUDO_COMMANDS)
    where = f"TTY=pts/{log.rng.randint(0, 3)} ; PWD=/home/{user} ; USER=root ;"
    if log.rng.random() < 0.15:  # a mistyped sudo password, then the command
        mark = log.expect("sudo_failure", None, user, "medium", attack=False)
        attempts = f"1 incorrect password attempt ; {where} COMMAND={command}"
        log.add(at, "sudo", f"   {user} : {attempts}", mark)
        at += log.rng.uniform(70, 120)
    mark = log.expect("privilege_change", None, user, "medium", attack=False)
    log.add(at, "sudo", f"   {user} : {where} COMMAND={command}", mark)
    opened = f"session opened for user root(uid=0) by {user}(uid={uid})"
    log.add(at, "sudo", f"pam_unix(sudo:session): {opened}")
    log.add(
        at + log.rng.uniform(1, 20), "sudo", "pam_unix(sudo:session): session closed for user root"
    )


def _scanner(log: _Log, at: float, ip: str) -> None:
    """An internet scanner: a banner probe, then a few user names, well apart."""
    rng = log.rng
    port = log.port()
    if rng.random() < 0.5:
        log.add(
            at,
            f"sshd[{log.pid()}]",
            f"banner exchange: Connection from {ip} port {port}: invalid format",
        )
    else:
        log.add(
            at,
            f"sshd[{log.pid()}]",
            "error: kex_exchange_identification: Connection closed by remote host",
        )
        log.add(at, f"sshd[{log.next_pid}]", f"Connection closed by {ip} port {port}")
    for name in rng.sample(PROBE_NAMES, rng.randint(1, SCANNER_MAX_TRIES)):
        at += rng.uniform(40, 200)
        _invalid_attempt(log, at, ip, name)


def _pam_auth_failure(ip: str, user: str | None) -> str:
    fields = f"logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}" + (f"  user={user}" if user else "")
    return f"pam_unix(sshd:auth): authentication failure; {fields}"


def _invalid_attempt(log: _Log, at: float, ip: str, name: str, *marks: dict) -> float:
    """One connection trying a user name that does not exist; returns when it ended."""
    sshd, port = f"sshd[{log.pid()}]", log.port()
    if not marks:  # the attacker's attempts are the brute force's
        marks = (log.expect("invalid_user", ip, name, "low", attack=False),)
    log.add(at, sshd, f"Invalid user {name} from {ip} port {port}", *marks)
    log.add(at, sshd, "pam_unix(sshd:auth): check pass; user unknown")
    log.add(at, sshd, _pam_auth_failure(ip, None), *marks)
    at += log.rng.uniform(1.5, 2.5)
    failed = f"Failed password for invalid user {name} from {ip} port {port} ssh2"
    log.add(at, sshd, failed, *marks)
    closed = f"Connection closed by invalid user {name} {ip} port {port} [preauth]"
    log.add(at, sshd, closed, *marks)
    return at


# ---- the attack --------------------------------------------------------------------------


def _valid_attempt(log: _Log, at: float, ip: str, user: str, brute: dict, tries: int) -> float:
    """One connection trying a real account ``tries`` times; returns when it ended."""
    sshd, port = f"sshd[{log.pid()}]", log.port()
    log.add(at, sshd, _pam_auth_failure(ip, user), brute)
    for _ in range(tries):
        at += log.rng.uniform(1.5, 2.5)
        log.add(at, sshd, f"Failed password for {user} from {ip} port {port} ssh2", brute)
    who = f"authenticating user {user} {ip} port {port}"
    if tries < 6:  # sshd's MaxAuthTries
        log.add(at, sshd, f"Disconnected from {who} [preauth]", brute)
        return at
    exceeded = f"for {user} from {ip} port {port} ssh2 [preauth]"
    log.add(at, sshd, f"error: maximum authentication attempts exceeded {exceeded}", brute)
    log.add(at, sshd, f"Disconnecting {who}: Too many authentication failures [preauth]", brute)
    more = f"logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}  user={user}"
    log.add(at, sshd, f"PAM {tries - 1} more authentication failures; {more}", brute)
    return at


def _attack(log: _Log, at: float, ip: str) -> None:
    rng = log.rng
    brute = log.expect("brute_force", ip, None, "high", attack=True)
    plan = [
        ("probe", name) for name in rng.sample(PROBE_NAMES, 7) for _ in range(rng.randint(1, 3))
    ]
    plan += (
        [("valid", "root")] * rng.randint(3, 6) + [("valid", "deploy")] * 2 + [("maxtries", "root")]
    )
    rng.shuffle(plan)
    for kind, user in plan:
        at += rng.uniform(0.5, 3.0)
        if kind == "probe":
            at = _invalid_attempt(log, at, ip, user, brute)
        else:
            at = _valid_attempt(log, at, ip, user, brute, tries=6 if kind == "maxtries" else 1)
    # in: deploy's password
    at += rng.uniform(5, 20)
    sshd, port = f"sshd[{log.pid()}]", log.port()
    success = log.expect("success_after_failures", ip, "deploy", "critical", attack=True)
    log.add(at, sshd, f"Accepted password for deploy from {ip} port {port} ssh2", success)
    log.add(
        at,
        sshd,
        f"pam_unix(sshd:session): session opened for user deploy(uid={DEPLOY_UID}) by (uid=0)",
    )
    log.add(at, "systemd-logind[612]", f"New session {log.session()} of user deploy.")
    # root, then a second way in
    at += rng.uniform(20, 60)
    sudo = log.expect("privilege_change", None, "deploy", "high", attack=True)
    log.add(
        at, "sudo", "   deploy : TTY=pts/1 ; PWD=/home/deploy ; USER=root ; COMMAND=/bin/bash", sudo
    )
    log.add(
        at,
        "sudo",
        f"pam_unix(sudo:session): session opened for user root(uid=0) by deploy(uid={DEPLOY_UID})",
    )
    at += rng.uniform(30, 90)
    uid = DEPLOY_UID + 1
    pid = log.pid()
    new = log.expect("new_user", None, BACKDOOR, "medium", attack=True)
    log.add(at, f"useradd[{pid}]", f"new group: name={BACKDOOR}, GID={uid}")
    home = f"home=/home/{BACKDOOR}, shell=/bin/bash, from=/dev/pts/1"
    log.add(at, f"useradd[{pid}]", f"new user: name={BACKDOOR}, UID={uid}, GID={uid}, {home}", new)
    at += rng.uniform(5, 15)
    password = log.expect("password_change", None, BACKDOOR, "low", attack=True)
    log.add(
        at,
        f"passwd[{log.pid()}]",
        f"pam_unix(passwd:chauthtok): password changed for {BACKDOOR}",
        password,
    )
    at += rng.uniform(5, 15)
    group = log.expect("privilege_change", None, BACKDOOR, "high", attack=True)
    pid = log.pid()
    log.add(at, f"usermod[{pid}]", f"add '{BACKDOOR}' to group 'sudo'", group)
    log.add(at, f"usermod[{pid}]", f"add '{BACKDOOR}' to shadow group 'sudo'", group)


# ---- the log -----------------------------------------------------------------------------


def generate(seed: int = 0, noise_lines: int = 300) -> tuple[list[str], list[dict]]:
    """(auth.log lines, the events they hold): at least ``noise_lines`` of background, with
    the attack somewhere in the middle."""
    rng = random.Random(seed)
    log = _Log(rng, rng.choice(HOSTS))
    attacker = rng.choice(ATTACKERS)
    _attack(log, rng.uniform(0.3, 0.6) * SPAN_S, attacker)
    attack_lines = len(log.entries)
    scanners = list(SCANNERS)
    for minute in range(SPAN_S // 60):
        on_clock = START.minute + minute  # the minute of the hour, as cron sees it
        if on_clock % 60 == 17:
            _cron(log, minute * 60 + 1, HOURLY)
        elif on_clock % 10 == 5:
            _cron(log, minute * 60 + 1, SYSSTAT)
    typo_done = False
    while len(log.entries) - attack_lines < noise_lines:
        at = rng.uniform(0, SPAN_S)
        roll = rng.random()
        if roll < 0.25 and scanners:
            _scanner(log, at, scanners.pop(rng.randrange(len(scanners))))
        elif roll < 0.35 and not typo_done:
            _staff_session(log, at, typo=True)
            typo_done = True
        else:
            _staff_session(log, at)
    return log.render()


def write(path: str | Path, seed: int = 0, noise_lines: int = 300) -> list[dict]:
    """Write a generated auth.log to ``path``; returns the events it holds."""
    lines, expected = generate(seed, noise_lines)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected
