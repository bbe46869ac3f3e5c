"""A synthetic, labelled corpus for measuring the detector on data it has never seen.

Values come from Faker in seven locales (its own name, address and company lists, which
the detector does not use) or are made here with valid checksums (cards, IBANs, national
ids) and the real shapes of API keys; they are put into sentence templates of the kinds the
boundary sees: emails, chat messages, support tickets, log lines and CSV rows, several per
text. A share of texts holds no entity but capitalised words, numbers, ids and dates, so
that precision is measured too. ``generate(n, seed)`` is deterministic.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from pocketlm.services.privacy.detect import Span

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
NEGATIVE_SHARE = 0.2  # texts without any entity


@dataclass(frozen=True)
class Example:
    text: str
    spans: list[Span]  # the gold values, sorted by start


def generate(n: int, seed: int = 0) -> list[Example]:
    """``n`` labelled texts, the same for the same ``seed``."""
    try:
        from faker import Faker
    except ImportError:
        raise RuntimeError(
            "the privacy corpus needs Faker: pip install 'pocketlm[dev]' (or pip install faker)"
        ) from None
    rng = random.Random(seed)
    fakers = {locale: Faker(locale) for locale in LOCALES}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed * 1000 + i)
    values = _Values(rng, fakers)
    return [_example(rng, values) for _ in range(n)]


def _example(rng: random.Random, values: _Values) -> Example:
    if rng.random() < NEGATIVE_SHARE:
        return Example(_negative(rng, values), [])
    return _fill(rng.choice(TEMPLATES), values)


def _fill(template: str, values: _Values) -> Example:
    """``template`` with each {TYPE} (or {TYPE2}, a second one) replaced by a new value."""
    parts, spans, chosen, pos = [], [], {}, 0
    for m in re.finditer(r"\{([A-Z_]+?)(\d?)\}", template):
        literal = template[pos : m.start()]
        parts.append(literal)
        key = m.group(1) + m.group(2)
        if key not in chosen:
            chosen[key] = values.make(m.group(1))
        offset = sum(map(len, parts))
        entity, value, (start, end) = m.group(1), chosen[key][0], chosen[key][1]
        spans.append(Span(entity, offset + start, offset + end, value[start:end], 1.0))
        parts.append(value)
        pos = m.end()
    parts.append(template[pos:])
    return Example("".join(parts), spans)


class _Values:
    """New values of each entity type: (text, (start, end) of the private part in it)."""

    def __init__(self, rng: random.Random, fakers: dict):
        self.rng, self.fakers = rng, fakers
        self.makers: dict[str, Callable[[], str | tuple[str, tuple[int, int]]]] = {
            "PERSON": self.person,
            "ADDRESS": self.address,
            "ORGANIZATION": lambda: self.fake().company(),
            "LOCATION": self.location,
            "EMAIL_ADDRESS": lambda: self.fake().email(),
            "PHONE_NUMBER": lambda: self.fake().phone_number(),
            "CREDIT_CARD": self.card,
            "IBAN_CODE": self.iban,
            "US_SSN": lambda: self.fakers["en_US"].ssn(),
            "UK_NINO": self.nino,
            "ES_NIF": lambda: self.fakers["es_ES"].nif(),
            "IT_FISCAL_CODE": lambda: self.fakers["it_IT"].ssn(),
            "IP_ADDRESS": self.ip,
            "URL_CREDENTIALS": self.url,
            "API_KEY": self.api_key,
            "DATE_OF_BIRTH": self.dob,
        }

    def make(self, entity: str) -> tuple[str, tuple[int, int]]:
        value = self.makers[entity]()
        return value if isinstance(value, tuple) else (value, (0, len(value)))

    def fake(self, locales=LOCALES):
        return self.fakers[self.rng.choice(locales)]

    def person(self) -> str:
        fake = self.fake()
        return fake.name() if self.rng.random() < 0.5 else f"{fake.first_name()} {fake.last_name()}"

    def address(self) -> str:
        fake = self.fake()
        text = fake.address() if self.rng.random() < 0.8 else fake.street_address()
        return text.replace("\n", ", ") if self.rng.random() < 0.5 else text

    def location(self) -> str:
        kind = self.rng.choice(("country", "state", "city", "city"))
        if kind == "country":
            return self.fakers["en_US"].country()
        if kind == "state":
            return self.fakers["en_US"].state()
        return self.fake(("de_DE", "es_ES", "fr_FR", "nl_NL")).city()

    def card(self) -> str:
        number = self.fakers["en_US"].credit_card_number()
        if self.rng.random() < 0.5 and len(number) == 16:
            return " ".join(number[i : i + 4] for i in range(0, 16, 4))
        return number

    def iban(self) -> str:
        iban = self.fake(("de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "en_GB")).iban()
        if self.rng.random() < 0.5:
            return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        return iban

    def nino(self) -> str:
        first, second = "Z", "Z"
        while first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):  # never issued
            first = self.rng.choice("ABCEGHJKLMNOPRSTWXYZ")
            second = self.rng.choice("ABCEGHJKLMNPRSTWXYZ")
        digits = "".join(self.rng.choices(string.digits, k=6))
        spaced = " ".join([first + second, digits[:2], digits[2:4], digits[4:]])
        nino = f"{first}{second}{digits}{self.rng.choice('ABCD')}"
        return nino if self.rng.random() < 0.5 else f"{spaced} {nino[-1]}"

    def ip(self) -> str:
        fake = self.fakers["en_US"]
        return self.rng.choice((fake.ipv4, fake.ipv4_private, fake.ipv6))()

    def url(self) -> str:
        fake = self.fakers["en_US"]
        scheme = self.rng.choice(("https", "postgres", "mysql", "redis", "ftp", "amqp"))
        password = "".join(self.rng.choices(string.ascii_letters + string.digits + "!$*", k=12))
        port = f":{self.rng.randint(1024, 65535)}" if self.rng.random() < 0.5 else ""
        return f"{scheme}://{fake.user_name()}:{password}@{fake.domain_name()}{port}/{fake.word()}"

    def api_key(self) -> tuple[str, tuple[int, int]]:
        rng, alnum = self.rng, string.ascii_letters + string.digits

        def rand(k: int, chars: str = alnum) -> str:
            return "".join(rng.choices(chars, k=k))

        upper = string.ascii_uppercase + string.digits
        keys = [
            "AKIA" + rand(16, upper),
            "ghp_" + rand(36),
            "github_pat_" + rand(22) + "_" + rand(59),
            "xoxb-" + rand(12, string.digits) + "-" + rand(12, string.digits) + "-" + rand(24),
            "sk-proj-" + rand(48, alnum + "_-"),
            "sk_live_" + rand(24),
            "AIza" + rand(35, alnum + "_-"),
            _jwt(rng),
            "-----BEGIN RSA PRIVATE KEY-----\n"
            + "\n".join(rand(64, alnum + "+/") for _ in range(4))
            + "\n-----END RSA PRIVATE KEY-----",
        ]
        key = rng.choice(keys)
        if rng.random() < 0.3:  # an assignment: the value alone is the secret
            name = rng.choice(("password", "api_key", "token", "SECRET", "db_password"))
            value = rand(rng.randint(8, 24), alnum + "!@#%^")
            return f"{name}={value}", (len(name) + 1, len(name) + 1 + len(value))
        return key

    def dob(self) -> str:
        date = self.fakers["en_US"].date_of_birth(minimum_age=18, maximum_age=90)
        formats = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d %B %Y", "%B %d, %Y", "%d.%m.%Y")
        return date.strftime(self.rng.choice(formats))


def _jwt(rng: random.Random) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": str(rng.randint(1, 10**9)), "iat": rng.randint(1_600_000_000, 1_800_000_000)}
    sig = base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{sig}"


TEMPLATES = [
    # emails
    "Dear {PERSON},\n\nThank you for your order. It will be shipped to {ADDRESS}. If anything "
    "is wrong, reply to {EMAIL_ADDRESS} or call {PHONE_NUMBER}.\n\nBest regards,\n{PERSON2}",
    "Hi {PERSON},\nplease find attached the contract with {ORGANIZATION}. The payment goes to "
    "IBAN {IBAN_CODE}.\nThanks,\n{PERSON2}",
    "From: {PERSON} <{EMAIL_ADDRESS}>\nSubject: Invoice 2024-118\n\nThe invoice from "
    "{ORGANIZATION} was paid with card {CREDIT_CARD}.",
    "Hello,\nmy name is {PERSON}, I was born on {DATE_OF_BIRTH} and I live in {LOCATION}. "
    "My SSN is {US_SSN}.",
    # chat
    "hey can you ping {PERSON} about the deploy? the db is at {URL_CREDENTIALS}",
    "I'm {PERSON}, I work at {ORGANIZATION} in {LOCATION}. You can reach me on {PHONE_NUMBER}.",
    "new address: {ADDRESS} (moving next week), new number {PHONE_NUMBER}",
    "my github token is {API_KEY}, can you check why CI fails?",
    "lol {PERSON} just pushed {API_KEY} to the public repo again",
    "we are flying to {LOCATION} with {PERSON} on Friday",
    # support tickets
    "Ticket #48213\nCustomer: {PERSON}\nEmail: {EMAIL_ADDRESS}\nPhone: {PHONE_NUMBER}\n"
    "Address: {ADDRESS}\nIssue: charged twice on card {CREDIT_CARD}",
    "Customer {PERSON} (DOB {DATE_OF_BIRTH}, NI number {UK_NINO}) asks why the refund to "
    "{IBAN_CODE} has not arrived.",
    "Patient: {PERSON}\nDate of birth: {DATE_OF_BIRTH}\nAddress: {ADDRESS}\nInsurer: "
    "{ORGANIZATION}",
    "Applicant {PERSON}, NIF {ES_NIF}, employer {ORGANIZATION}, lives in {LOCATION}.",
    "Il cliente {PERSON} (codice fiscale {IT_FISCAL_CODE}) abita in {ADDRESS}.",
    "Please update the shipping address of {PERSON} to {ADDRESS}. Company: {ORGANIZATION}.",
    # log lines
    "2024-05-01T12:00:03Z INFO login ok user={EMAIL_ADDRESS} ip={IP_ADDRESS}",
    "May  1 12:00:00 web01 sshd[4242]: Failed password for admin from {IP_ADDRESS} port 52113",
    "2024-05-01 12:00:04,118 ERROR connect failed {URL_CREDENTIALS} (timeout after 30s)",
    "[worker-3] exporting with {API_KEY} for {ORGANIZATION}",
    "DEBUG config loaded: region=eu-west-1 {API_KEY} retries=3",
    "WARN request from {IP_ADDRESS} rejected: card {CREDIT_CARD} declined",
    # CSV-ish rows
    "{PERSON};{EMAIL_ADDRESS};{PHONE_NUMBER};{LOCATION}",
    "id,name,iban,company\n17,{PERSON},{IBAN_CODE},{ORGANIZATION}",
    "name\tdob\tssn\taddress\n{PERSON}\t{DATE_OF_BIRTH}\t{US_SSN}\t{ADDRESS}",
    "name={PERSON} birthday={DATE_OF_BIRTH} city={LOCATION}",
]

_NEGATIVES = [
    "The Quarterly Report is due on Monday, please Review The Attached Summary.",
    "Release 2.13.0 fixes the Memory Leak in the Scheduler and adds Dark Mode.",
    "Meeting notes: Budget Review moved to Thursday 3pm, Room B12, bring the Q3 Numbers.",
    "Order ORD-{n} shipped in 3 boxes, total 1,249.90 EUR, tracking {hex}.",
    "Build {hex} passed 1432 tests in 12.4s on Python 3.11 and Node 20.",
    "2024-05-01T12:00:03Z INFO cache warmed: 5120 keys, hit rate 0.93, uptime 72h",
    "Please Confirm Receipt Of The New Policy Document By End Of Week.",
    "The Annual General Meeting approved the Dividend and the New Board Structure.",
    "Error 504 Gateway Timeout on /api/v2/orders/{n} after 30000 ms",
    "Use the Settings menu, then Advanced, then Reset To Defaults.",
    "Version {n} of the Style Guide says: Title Case For Headings Only.",
    "Invoice total: 4 items, Subtotal 318.00, VAT 20%, Grand Total 381.60",
    "Sprint Planning: Backlog Grooming, Story Points, Velocity Chart, Retrospective.",
    "The Red Team found no Critical Issues; Medium Findings are listed in Appendix C.",
    "Temperature 21.5 C, Humidity 40%, Pressure 1013 hPa at 14:05.",
    "uuid {uuid} created at 2023-11-02 09:14:00, status Pending Approval",
]


def _negative(rng: random.Random, values: _Values) -> str:
    text = rng.choice(_NEGATIVES)
    if rng.random() < 0.3:
        text += " " + values.fakers["en_US"].catch_phrase() + "."
    uuid = "-".join(rng.randbytes(k).hex() for k in (4, 2, 2, 2, 6))
    return text.format(n=rng.randint(10_000, 99_999), hex=rng.randbytes(20).hex(), uuid=uuid)
