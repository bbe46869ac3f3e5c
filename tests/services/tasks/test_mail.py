"""Email parsing: decoded headers, a plain-text body from any MIME shape, attachment names."""

from __future__ import annotations

from email.message import EmailMessage

from pocketlm.services.tasks.mail import html_to_text, parse_email


def _message(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg


def test_plain_text_is_preferred_to_html_in_an_alternative():
    msg = _message(From="a@example.com", To="b@example.com", Subject="hi")
    msg.set_content("the plain version")
    msg.add_alternative("<p>the <b>html</b> version</p>", subtype="html")
    mail = parse_email(bytes(msg))
    assert mail.body == "the plain version"
    assert mail.attachments == []


def test_an_html_only_body_becomes_text_with_link_targets():
    html = (
        "<html><head><style>p { color: red }</style><script>steal()</script></head><body>"
        "<p>Dear   customer,\n your account is <b>locked</b>.</p>"
        '<p><a href="http://evil.example/login">https://bank.example</a></p>'
        '<p>See <a href="https://bank.example/">bank.example</a> or '
        '<a href="http://track.example/x"><img src="x.png" alt="Logo"></a></p>'
        "</body></html>"
    )
    msg = _message(From="bank@example.com", Subject="locked")
    msg.set_content(html, subtype="html")
    msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="form.pdf")
    mail = parse_email(bytes(msg))
    assert mail.body.splitlines() == [
        "Dear customer, your account is locked.",
        "https://bank.example (http://evil.example/login)",
        "See bank.example or Logo (http://track.example/x)",
    ]
    assert "steal" not in mail.body and "color" not in mail.body
    assert mail.attachments == ["form.pdf"]


def test_a_base64_body_is_decoded():
    msg = _message(From="a@example.com")
    msg.set_content("Grüße, a base64 body\n", cte="base64")
    raw = bytes(msg)
    assert b"Content-Transfer-Encoding: base64" in raw and "Grüße".encode() not in raw
    assert parse_email(raw).body == "Grüße, a base64 body"


def test_a_quoted_printable_latin1_body_is_decoded():
    raw = (
        b"From: a@example.com\n"
        b'Content-Type: text/plain; charset="iso-8859-1"\n'
        b"Content-Transfer-Encoding: quoted-printable\n\n"
        b"Caf=E9 cr=E8me, na=EFve =\nsoft break\n"
    )
    assert parse_email(raw).body == "Café crème, naïve soft break"


def test_rfc2047_headers_are_decoded():
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j@example.de>\n"
        b"To: =?iso-8859-1?q?Ren=E9?= <r@example.fr>\n"
        b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\n"
        b"Message-ID: <1@example.de>\n\nhi\n"
    )
    mail = parse_email(raw)
    assert mail.subject == "Grüße aus Köln"
    assert mail.sender == "Jürgen Müller <j@example.de>"
    assert mail.to == "René <r@example.fr>"
    assert mail.message_id == "<1@example.de>"
    assert mail.headers["Subject"] == "Grüße aus Köln"


def test_a_wrong_or_unknown_charset_never_raises():
    wrong = b"Content-Type: text/plain; charset=utf-8\n\ncaf\xe9\n"  # Latin-1 bytes
    unknown = b"Content-Type: text/plain; charset=x-no-such-charset\n\nna\xc3\xafve\n"
    not_text = b"Content-Type: text/plain; charset=zlib\n\nplain\n"  # a codec, not a charset
    assert parse_email(wrong).body == "café"
    assert parse_email(unknown).body == "naïve"  # UTF-8 tried before Latin-1
    assert parse_email(not_text).body == "plain"


def test_raw_8bit_and_malformed_headers_are_kept_readable():
    raw = b"From: Bank <<<security@@bank>>>\nSubject: r\xc3\xa9sum\xc3\xa9\n\nbody\n"
    mail = parse_email(raw)
    assert mail.subject == "résumé"
    assert mail.sender == "Bank <<<security@@bank>>>"  # as written, not tidied away


def test_a_bad_charset_name_in_an_encoded_word_never_raises():
    raw = b"From: =?utf\x808?q?Zo=C3=AB?= <z@example.com>\nSubject: =?bogus?q?x?=\n\nhi\n"
    mail = parse_email(raw)
    assert "z@example.com" in mail.sender
    assert mail.body == "hi"


def test_attachments_are_listed_by_name_and_the_body_is_not_one():
    msg = _message(From="a@example.com")
    msg.set_content("see attached")
    msg.add_attachment(b"MZ", maintype="application", subtype="octet-stream", filename="a.pdf.exe")
    msg.add_attachment("notes", filename="=?utf-8?q?n=C3=B6tes.txt?=")
    msg.add_attachment(b"x", maintype="application", subtype="zip")  # no file name
    mail = parse_email(bytes(msg))
    assert mail.body == "see attached"
    assert mail.attachments[0] == "a.pdf.exe"
    assert mail.attachments[2] == "(unnamed application/zip)"
    assert len(mail.attachments) == 3


def test_as_text_gives_headers_then_body_and_cuts_the_body():
    msg = _message(From="a@example.com", To="b@example.com", Subject="s", Reply_To="x@evil.test")
    msg["Date"] = "Wed, 01 May 2024 12:00:00 +0000"
    msg.set_content("0123456789")
    mail = parse_email(bytes(msg))
    assert mail.reply_to == "x@evil.test"
    assert mail.as_text() == (
        "From: a@example.com\nReply-To: x@evil.test\nTo: b@example.com\nSubject: s\n"
        "Date: Wed, 01 May 2024 12:00:00 +0000\n\n0123456789"
    )
    assert mail.as_text(max_body_chars=4).endswith("\n\n0123\n[6 more characters cut]")
    plain = parse_email(b"From: a@example.com\nSubject: s\n\nhi\n")
    assert plain.as_text() == "From: a@example.com\nTo: \nSubject: s\nDate: \n\nhi"


def test_a_message_without_a_text_part_has_an_empty_body():
    msg = _message(From="a@example.com")
    msg.set_content(b"\x00\x01", maintype="application", subtype="octet-stream", filename="x.bin")
    mail = parse_email(bytes(msg))
    assert mail.body == ""
    assert mail.attachments == ["x.bin"]


def test_html_to_text_blocks_entities_and_unclosed_links():
    html = (
        "<div>a&amp;b<br>c<br/>d</div><ul><li>one</li><li>two</li></ul><a href='http://x.test'>go"
    )
    assert html_to_text(html) == "a&b\nc\nd\none\ntwo\ngo (http://x.test)"
    assert html_to_text('<a href="mailto:me@x.test">me@x.test</a>') == "me@x.test"


def test_a_new_link_ends_the_open_one_as_in_browsers():
    html = '<a href="http://a.test">one <a href="http://b.test">two</a>'
    assert html_to_text(html) == "one (http://a.test)two (http://b.test)"
