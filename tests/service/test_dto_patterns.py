"""The request-string patterns (service.dto.SINGLE_LINE, MULTI_LINE) refuse exactly what their
earlier lookahead forms refused, as msgspec applies them (Python ``re.search``)."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.dto import MULTI_LINE, SINGLE_LINE, DeviceId

# The forms these replaced (a lookahead over the whole string): the reference meaning.
SINGLE_LINE_BEFORE = r"^(?![\s\S]*[\x00-\x1f\x7f-\x9f])"
MULTI_LINE_BEFORE = r"^(?![\s\S]*[\x00-\x08\x0b-\x1f\x7f-\x9f])"

# Text with the characters that matter over-represented: controls, newlines at the end, C1,
# and characters just outside the refused ranges.
_EDGES = "\x00\x08\t\n\x0b\r\x1f \x7e\x7f\x80\x9f\xa0\u2028\U0001f600"
texts = st.text(alphabet=st.sampled_from(_EDGES) | st.characters(), max_size=40)


@settings(max_examples=2000)
@given(text=texts)
@example(text="abc\n")
@example(text="\n")
@example(text="")
@example(text="a\nb")
@example(text="ab\x85")
@example(text="ab\u2028")
def test_single_and_multi_line_refuse_what_their_lookahead_forms_refused(text: str) -> None:
    for now, before in ((SINGLE_LINE, SINGLE_LINE_BEFORE), (MULTI_LINE, MULTI_LINE_BEFORE)):
        assert bool(re.search(now, text)) == bool(re.search(before, text)), (now, text)


@pytest.mark.parametrize(
    ("text", "single", "multi"),
    [
        ("Mozilla/5.0 (X11) 浏览器", True, True),
        ("ok\n", False, True),  # Python's $ before a final newline: refused all the same
        ("ok\nX-Injected: yes", False, True),
        ("tab\there", False, True),
        ("cr\r", False, False),
        ("nul\x00", False, False),
        ("c1\x85", False, False),
    ],
)
def test_examples_as_msgspec_applies_them(text: str, single: bool, multi: bool) -> None:
    assert bool(re.search(SINGLE_LINE, text)) is single
    assert bool(re.search(MULTI_LINE, text)) is multi
    # And through msgspec itself, on a field that carries SINGLE_LINE.
    if single:
        assert msgspec.convert(text, DeviceId) == text
    else:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(text, DeviceId)
