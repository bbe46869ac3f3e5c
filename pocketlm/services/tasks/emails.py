"""`pocketlm task emails`: triage of a mailbox, one result per message.

Each message gets ``category`` (a default set, or the user's), ``priority``,
``needs_reply``, ``spam`` (phishing included) with its ``reason``, and a one-line
``summary``.

The four judgements are scored, not generated: the message is read once, and each question's
answers (the categories; high/normal/low; yes/no) are scored as continuations after it in
the same pass (``TaskEngine.score``), so each comes with its probability (``probs``). Small
models lean toward some answers whatever the message (measured: "yes" to "does it need a
reply?" at 0.6 on an empty one), so the answers are calibrated against a content-free
message (contextual calibration, Zhao et al., 2021), except spam's (see CALIBRATED).
Then one short generation, forced into ``{"summary", "reason"}`` by a grammar, writes the
summary and the reason for the spam verdict.

Phishing has tell-tale signs a rule finds exactly, where a small model may not: a link whose
text shows one domain while it points to another, a link to a bare IP address, a Reply-To on
another domain than From, an executable attachment. A message with one of the first two, or
two of any, is spam whatever the model says; the signs found are part of the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from pocketlm.errors import UsageError
from pocketlm.params import GenerationParams
from pocketlm.services.grammar import json_grammar
from pocketlm.services.tasks.classify import Label, parse_labels
from pocketlm.services.tasks.engine import GREEDY, TaskEngine
from pocketlm.services.tasks.records import Record

CATEGORIES = [
    Label("work", "colleagues, projects, meetings, clients"),
    Label("personal", "friends and family"),
    Label("finance", "banks, bills, invoices, payments, taxes"),
    Label("shopping", "orders, deliveries, receipts, returns"),
    Label("travel", "flights, hotels, bookings, itineraries"),
    Label("newsletter", "newsletters, digests, marketing"),
    Label("notification", "automatic alerts, account and service notices"),
    Label("support", "help requests and answers about a product or service"),
]
PRIORITIES = ["high", "normal", "low"]
YES_NO = ["yes", "no"]
CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al., 2021)
# Calibrated questions. Not spam: on an empty message the models say "no" so firmly that,
# divided out, every message became spam (Qwen2.5-Coder-0.5B on the 48 labelled emails:
# spam accuracy 0.25 calibrated, 0.56 not, while category went 0.10 -> 0.63, priority
# 0.25 -> 0.58 and needs_reply 0.21 -> 0.77 with calibration).
CALIBRATED = ("category", "priority", "needs_reply")
MAX_CATEGORIES = 20  # a message's answers are scored together: 20 + 7 sequences at most
MAX_BODY_CHARS = 6000  # a message's body beyond this is cut (and the model is told so)

SYSTEM = "You are an assistant that triages a person's email. Answer each question about the email."
QUESTIONS = {
    "category": "Which category is this email? Choose one of: {categories}. Answer with the "
    "category only.",
    "priority": "How urgent is this email for its reader: high, normal or low? Answer with one "
    "word.",
    "needs_reply": "Does this email ask its reader a question or for an action that needs a "
    "reply from them? Answer yes or no.",
    "spam": "Is this email spam, a scam or phishing (a fake sender, a request for passwords or "
    "payment, a suspicious link)? Answer yes or no.",
}
NOTE_SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "reason": {"type": "string"},
    },
    "required": ["summary", "reason"],
    "additionalProperties": False,
}
NOTE = (
    'The email below was judged {verdict}. Write a JSON object with "summary": the email '
    'in one short line, and "reason": why it is {verdict}, in one sentence.'
)

_LINK = re.compile(r"([^\s()<>]+\.[a-z]{2,}[^\s()<>]*) \((https?://[^)\s]+)\)", re.I)
_IP_LINK = re.compile(r"https?://\d{1,3}(?:\.\d{1,3}){3}(?:[:/]|\b)", re.I)
_EXECUTABLE = re.compile(r"\.(exe|scr|js|vbs|bat|cmd|jar|msi|hta|iso)\b", re.I)


def signs(record: Record) -> tuple[list[str], bool]:
    """(phishing signs found, whether they settle it) for an email record."""
    found, strong = [], False
    for text, url in _LINK.findall(record.text):
        shown, real = _host(text), _host(url)
        if shown and real and not _same_site(shown, real):
            found.append(f"a link shows {shown} but goes to {real}")
            strong = True
            break
    if _IP_LINK.search(record.text):
        found.append("a link points to a bare IP address")
        strong = True
    sender, reply = _domain(record.fields.get("from")), _domain(record.fields.get("reply_to"))
    if sender and reply and not _same_site(sender, reply):
        found.append(f"replies go to {reply}, not the sender's {sender}")
    bad = [a for a in record.fields.get("attachments") or [] if _EXECUTABLE.search(a)]
    if bad:
        found.append(f"an executable attachment ({bad[0]})")
    return found, strong or len(found) >= 2


def _host(text: str) -> str:
    text = text if "://" in text else "http://" + text
    try:
        return (urlsplit(text).hostname or "").lower().removeprefix("www.")
    except ValueError:
        return ""


def _domain(address: Any) -> str:
    m = re.search(r"@([\w.-]+)", str(address or ""))
    return m.group(1).lower() if m else ""


def _same_site(a: str, b: str) -> bool:
    """Same registrable domain, roughly: the last two labels (mail.example.com ~ example.com)."""
    return a.split(".")[-2:] == b.split(".")[-2:]


class EmailTriage:
    def __init__(
        self,
        engine: TaskEngine,
        *,
        categories: Sequence[Label] = CATEGORIES,
        calibrate: bool = True,
    ):
        self.engine = engine
        self.categories = list(categories)
        # Names only: with each category's description in the question, Qwen2.5-Coder-0.5B
        # did worse on the 48 labelled emails (priority 0.58 -> 0.44, needs_reply 0.77 ->
        # 0.35, category 0.63 -> 0.60).
        names = ", ".join(c.name for c in self.categories)
        self.questions = {k: q.format(categories=names) for k, q in QUESTIONS.items()}
        self.answers = {
            "category": [c.name for c in self.categories],
            "priority": PRIORITIES,
            "needs_reply": YES_NO,
            "spam": YES_NO,
        }
        self._choices = {k: engine.label_tokens(v) for k, v in self.answers.items()}
        self.grammar = json_grammar(NOTE_SCHEMA, str(engine.path), field="emails")
        first = self.questions["category"]
        engine.cache_prefix(_common_prefix([self._prompt("a", first), self._prompt("b", first)]))
        # Contextual calibration: each answer's prior, on a message with no content.
        self._prior: dict[str, list[float]] | None = None
        if calibrate:
            prior = self.judge(CONTENT_FREE)
            self._prior = {k: prior[k] for k in CALIBRATED}

    def _prompt(self, text: str, question: str) -> list[int]:
        user = f"{text}\n\n---\n{question}"
        return self.engine.prompt(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        )

    def judge(self, text: str) -> dict[str, list[float]]:
        """Each question's answer probabilities, from one scoring pass over the message."""
        prompts = {k: self._prompt(text, q) for k, q in self.questions.items()}
        context = _common_prefix(list(prompts.values()))
        conts, spans = [], {}
        for key, prompt in prompts.items():
            start = len(conts)
            conts += [prompt[len(context) :] + c for c in self._choices[key].continuations]
            spans[key] = (start, len(conts))
        logprobs = self.engine.score(context, conts)
        prior = self._prior or {}
        return {
            k: self._choices[k].probs(logprobs[a:b], prior.get(k)) for k, (a, b) in spans.items()
        }

    def note(self, text: str, verdict: str) -> dict[str, str] | None:
        """The model's one-line summary and reason, or None when it did not finish them."""
        tokens = self.engine.prompt(
            [
                {"role": "system", "content": NOTE.format(verdict=verdict)},
                {"role": "user", "content": text},
            ]
        )
        params: GenerationParams = GREEDY.model_copy(update={"max_tokens": 160})
        out = self.engine.generate(tokens, params, grammar=self.grammar)
        try:
            note = json.loads(out.text)
        except ValueError:
            return None
        return note if out.finish == "stop" else None

    def __call__(self, record: Record) -> dict[str, Any]:
        text = _cut(record.text)
        probs = self.judge(text)
        pick = {k: self.answers[k][max(range(len(p)), key=p.__getitem__)] for k, p in probs.items()}
        found, settled = signs(record)
        spam = pick["spam"] == "yes" or settled
        verdict = "spam or phishing" if spam else "a legitimate email"
        # Without the model's note (it ran past its length), the record keeps its judgements:
        # the subject stands for the summary, the probability for the reason.
        note = self.note(text, verdict) or {
            "summary": record.fields.get("subject", ""),
            "reason": f"spam probability {probs['spam'][0]:.2f} (the model wrote no reason)",
        }
        reason = note.get("reason", "").strip()
        if found:
            reason = "; ".join(found) + (f". {reason}" if reason else "")
        return {
            "subject": record.fields.get("subject", ""),
            "from": record.fields.get("from", ""),
            "category": pick["category"],
            "priority": "low" if spam else pick["priority"],
            "needs_reply": (pick["needs_reply"] == "yes") and not spam,
            "spam": spam,
            "reason": reason,
            "summary": " ".join(note.get("summary", "").split()),
            "probs": {
                k: {a: round(p, 4) for a, p in zip(self.answers[k], ps)} for k, ps in probs.items()
            },
        }


def _cut(text: str) -> str:
    head, sep, body = text.partition("\n\n")
    if len(body) <= MAX_BODY_CHARS:
        return text
    return f"{head}{sep}{body[:MAX_BODY_CHARS]}\n[the rest of the message is cut]"


def _common_prefix(lists: list[list[int]]) -> list[int]:
    first = lists[0]
    n = min(map(len, lists))
    for i in range(n):
        if any(other[i] != first[i] for other in lists[1:]):
            return first[:i]
    return first[: n - 1]  # one question's prompt begins another's: keep a token to predict from


def categories(spec: str | None) -> list[Label]:
    """The user's categories (``A,B,C`` or a labels file), else the default set."""
    if not spec:
        return CATEGORIES
    labels = parse_labels(spec)
    if len(labels) > MAX_CATEGORIES:
        raise UsageError(
            f"{len(labels)} email categories; at most {MAX_CATEGORIES}", "merge some of them"
        )
    return labels
