"""Message cleaning takes a fast path for text it would not change; the fast path must give
exactly what the character-by-character definition gives, for any text."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from schema.event import _clean_message, _remove_category_c, strip_control_characters

# Characters where "printable" and "category C" part ways, or that cleaning rewrites: ASCII and
# Latin-1 controls, spaces other than U+0020 (non-printable, yet not category C), line and
# paragraph separators, format characters (zero-width, bidi, BOM), private use, an unassigned
# code point, a lone surrogate.
TRICKY = ("\x00\x07\t\n\r\x1b\x1f \x7f\x85\xa0\u00ad\u1680\u2000\u200a\u200b\u200d\u2028"
          "\u2029\u202e\u202f\u205f\u3000\ufeff\ue000\u0378\ud800")
any_text = st.text(alphabet=st.characters(exclude_categories=()))
tricky_text = st.text(alphabet=st.sampled_from(TRICKY + "ab .-é日"))


@given(st.one_of(any_text, tricky_text))
@example("Disk full on db-1")
@example("Disk\u00a0full")  # a no-break space: not printable, kept
@example("Disk\u200bfull")  # zero width space: removed
def test_strip_control_characters_fast_path_equals_the_definition(text: str) -> None:
    assert strip_control_characters(text) == _remove_category_c(text)


def cleaned_by_definition(text: str) -> str:
    return " ".join(_remove_category_c(text).split())


@given(st.one_of(any_text, tricky_text))
@example("Disk full")
@example(" Disk full")
@example("Disk  full")
@example("Disk full ")
@example("Disk\u3000full")  # ideographic space: becomes a plain space
def test_clean_message_fast_path_equals_the_definition(text: str) -> None:
    expected = cleaned_by_definition(text)
    if expected:
        assert _clean_message(text) == expected
    else:
        with pytest.raises(ValueError, match="must not be blank"):
            _clean_message(text)


def test_the_fast_paths_rest_on_printable_text_having_no_category_c_and_no_other_space() -> None:
    # What makes the fast paths exact, checked over every code point of this Python's
    # Unicode database (isprintable, isspace and unicodedata share it).
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char.isprintable():
            assert not unicodedata.category(char).startswith("C"), hex(code)
            assert not char.isspace() or char == " ", hex(code)
