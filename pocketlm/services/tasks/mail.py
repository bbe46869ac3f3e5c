"""Email messages as a task reads them: decoded headers, a plain-text body, attachment names.

Mail is hostile input: wrong charsets, broken encodings, HTML-only bodies whose link
targets differ from their text (phishing). ``parse_email`` never raises on a bad charset;
it reads what it can and falls back to Latin-1, which decodes any byte.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import TypeVar

T = TypeVar("T")

# Headers kept in ``Email.headers``: who sent it and how (triage, phishing checks)
SELECTED_HEADERS = (
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Return-Path",
    "Authentication-Results",
    "List-Unsubscribe",
)


@dataclass
class Email:
    """One message, decoded. Headers that are absent are empty strings."""

    subject: str = ""
    sender: str = ""
    to: str = ""
    date: str = ""
    message_id: str = ""
    reply_to: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    attachments: list[str] = field(default_factory=list)

    def as_text(self, max_body_chars: int | None = None) -> str:
        """The message as a model reads it: the main headers, a blank line, the body.

        Reply-To and Attachments lines appear only when the message has them: a Reply-To
        that differs from From, or an ``invoice.pdf.exe``, is what triage looks for.
        """
        head = [f"From: {self.sender}"]
        if self.reply_to:
            head.append(f"Reply-To: {self.reply_to}")
        head += [f"To: {self.to}", f"Subject: {self.subject}", f"Date: {self.date}"]
        if self.attachments:
            head.append(f"Attachments: {', '.join(self.attachments)}")
        body = self.body
        if max_body_chars is not None and len(body) > max_body_chars:
            cut = len(body) - max_body_chars
            body = f"{body[:max_body_chars]}\n[{cut} more characters cut]"
        return "\n".join(head) + "\n\n" + body


def parse_email(raw: bytes) -> Email:
    """``raw`` (an RFC 5322 message) decoded into an ``Email``."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body_part = _or_default(lambda: msg.get_body(preferencelist=("plain", "html")), None)
    return Email(
        subject=_header(msg, "Subject"),
        sender=_header(msg, "From"),
        to=_header(msg, "To"),
        date=_header(msg, "Date"),
        message_id=_header(msg, "Message-ID"),
        reply_to=_header(msg, "Reply-To"),
        headers={h: v for h in SELECTED_HEADERS if (v := _header(msg, h))},
        body=_or_default(lambda: _body(body_part).strip(), "") if body_part is not None else "",
        attachments=_attachments(msg, body_part),
    )


def _or_default(read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` where the email package fails on a malformed message: it
    raises assorted errors (ValueError, LookupError, IndexError...) from MIME parameters."""
    try:
        return read()
    except Exception:
        return default


def _header(msg: EmailMessage, name: str) -> str:
    """Every ``name`` header of ``msg``, decoded, joined by newlines."""
    raw = [value for key, value in msg.raw_items() if key.lower() == name.lower()]
    return "\n".join(_clean(_decode_header(msg, name, value)) for value in raw)


def _decode_header(msg: EmailMessage, name: str, value: str) -> str:
    """A header value decoded (RFC 2047). One the parser finds malformed is decoded as
    written instead: the parser would tidy a mangled address, which triage needs to see."""
    parsed = _or_default(lambda: msg.policy.header_fetch_parse(name, value), None)
    if parsed is not None and not parsed.defects:
        return str(parsed)
    return _decode_raw_header(value)


def _decode_raw_header(value: str) -> str:
    """A header value decoded without the structured parser, or left as it is."""
    unfolded = re.sub(r"\r?\n[ \t]*", " ", value)
    try:
        return str(make_header(decode_header(unfolded)))
    except (LookupError, UnicodeError, ValueError, MessageError):  # e.g. a bad charset name
        return unfolded


def _clean(text: str) -> str:
    """``text`` with raw 8-bit bytes (which the parser keeps as surrogate escapes) read as
    UTF-8, so it can be printed and written as JSON."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "replace").decode("utf-8")


def _body(part: EmailMessage) -> str:
    """The text of a text/plain or text/html part (HTML converted to text)."""
    text = _decode(part.get_payload(decode=True) or b"", part.get_content_charset())
    return html_to_text(text) if part.get_content_subtype() == "html" else text


def _decode(data: bytes, charset: str | None) -> str:
    """``data`` in the first of its declared charset, UTF-8 and Latin-1 that fits it.

    Mail often declares the wrong charset (us-ascii for UTF-8, utf-8 for Latin-1);
    Latin-1 decodes any byte, so this never raises.
    """
    for name in (charset, "utf-8"):
        try:
            return data.decode(name or "utf-8")
        except (LookupError, ValueError):  # unknown, not a text codec, wrong, or malformed
            continue
    return data.decode("latin-1")


def _attachments(msg: EmailMessage, body_part: EmailMessage | None) -> list[str]:
    """Names of the parts that are attachments (or carry a file name), in order."""
    names = []
    for part in msg.walk():
        if part.is_multipart() or part is body_part:
            continue
        name = _or_default(part.get_filename, None)
        if name or _or_default(part.get_content_disposition, None) == "attachment":
            kind = _or_default(part.get_content_type, "unknown type")
            names.append(_clean(name) if name else f"(unnamed {kind})")
    return names


def html_to_text(html: str) -> str:
    """``html`` as plain text: scripts and styles dropped, each block element on a line of
    its own, whitespace collapsed, and each link's URL after its text when they differ."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()


# Elements that start a new line in the text
_BLOCKS = frozenset(
    "address article aside blockquote br dd div dl dt footer form h1 h2 h3 h4 h5 h6 header "
    "hr li main nav ol p pre section table td th title tr ul".split()
)
_HIDDEN = frozenset({"script", "style", "template", "noscript"})


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML document (see ``html_to_text``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._hidden = 0  # depth inside script/style
        self._link: tuple[str, int] | None = None  # (href, where its text starts in _out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _BLOCKS:
            self._out.append("\n")
        if tag == "a":
            self._end_link()  # links do not nest: a new one ends the open one, as in browsers
            self._link = (dict(attrs).get("href") or "", len(self._out))
        elif tag == "img" and (alt := dict(attrs).get("alt")):
            self._out.append(f" {alt} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self._out.append("\n")
        elif tag == "a":
            self._end_link()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # <br/> is one line break, not two

    def handle_data(self, data: str) -> None:
        if not self._hidden:  # newlines in the source are spaces; only blocks break lines
            self._out.append(re.sub(r"\s+", " ", data))

    def _end_link(self) -> None:
        """Put the open link's URL after its text, unless the text already says it."""
        if self._link is None:
            return
        href, start = self._link
        self._link = None
        shown = " ".join("".join(self._out[start:]).split())
        if href.strip() and _bare(href) != _bare(shown):
            self._out.append(f" ({href.strip()})")

    def text(self) -> str:
        self._end_link()  # a link never closed still shows where it goes
        lines = (" ".join(line.split()) for line in "".join(self._out).split("\n"))
        return "\n".join(line for line in lines if line)  # one line per block, no gaps


def _bare(url: str) -> str:
    """A URL as people write it in text: no scheme, no mailto:, no trailing slash."""
    return re.sub(r"^(?:[a-z][a-z0-9+.-]*://|mailto:)", "", url.strip().lower()).rstrip("/")
