"""Streaming text reassembly: UTF-8 split across tokens, stop strings split across tokens."""

from pocketlm.services.text import TextAssembler as _TextAssembler


def feed(asm, chunks):
    out, stopped = [], False
    for c in chunks:
        piece, stopped = asm.push(c)
        out.append(piece)
        if stopped:
            break
    if not stopped:
        out.append(asm.flush())
    return "".join(out), stopped


def test_multibyte_characters_split_across_tokens_come_out_whole():
    data = "héllo ✓ 日本".encode()
    asm = _TextAssembler(())
    pieces = [asm.push(data[i : i + 1])[0] for i in range(len(data))]
    assert "".join(pieces) + asm.flush() == "héllo ✓ 日本"
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_split_across_tokens():
    text, stopped = feed(_TextAssembler(["STOP"]), [b"abc S", b"TO", b"P def"])
    assert stopped and text == "abc "


def test_prefix_of_stop_is_released_when_it_is_not_a_stop():
    asm = _TextAssembler(["STOP"])
    assert asm.push(b"ab ST") == ("ab ", False)
    assert asm.push(b"ART") == ("START", False)


def test_earliest_of_several_stops_wins():
    text, stopped = feed(_TextAssembler(["zz", "b"]), [b"aaa", b"bzz"])
    assert stopped and text == "aaa"
