"""Annotation parser: valid files (quirks included), every kind of bad line named by file and line,
fast and exact paths agreeing, and -5 rows kept in place but masked."""

from __future__ import annotations

import numpy as np
import pytest

from abaw.data.annotations import (
    AnnotationError,
    _parse_exact,
    _parse_fast,
    false_runs,
    parse_annotations,
    read_annotations,
)


def _write(tmp_path, text: str | bytes, name: str = "10-60-1280x720_right.txt"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_valid_file_keeps_minus_five_rows_in_place(tmp_path):
    p = _write(tmp_path, "valence,arousal\n0.1,-0.2\n-5,-5\n-5.0,-5.0\n1,-1\n0.25,0.5\n")
    a = read_annotations(p)
    assert a.values.dtype == np.float32 and a.values.shape == (5, 2)
    np.testing.assert_allclose(a.values[[0, 3, 4]], [[0.1, -0.2], [1, -1], [0.25, 0.5]], rtol=0, atol=1e-7)
    # Rows stay where they are (row i = frame i); only the mask says which are annotated.
    assert a.valid.tolist() == [True, False, False, True, True]
    assert len(a) == 5 and a.n_valid == 3
    assert (a.values[~a.valid] == -5).all()
    assert a.path == str(p) and a.notes == ()


@pytest.mark.parametrize(
    "text, notes",
    [
        ("valence,arousal\r\n0.1,0.2\r\n-5,-5\r\n", ("CRLF line ends",)),
        ("valence,arousal\r\n0.1,0.2\r\n-5,-5\r\n\r\n", ("CRLF line ends", "trailing blank line")),
        ("valence,arousal\n0.1,0.2\n-5,-5\n\n", ("trailing blank line",)),
        ("valence,arousal\n0.1,0.2\n-5,-5", ()),  # no final newline
        ("\ufeffvalence,arousal\n0.1,0.2\n-5,-5\n", ("UTF-8 byte-order mark",)),
        ("valence,arousal\n 0.1 , 0.2\n-5,-5\n", ()),  # spaces: only the exact parser takes these
        ("valence,arousal\n+.1,2e-1\n-5,-5\n", ()),
    ],
)
def test_harmless_quirks_are_accepted_and_noted(tmp_path, text, notes):
    a = read_annotations(_write(tmp_path, text))
    np.testing.assert_allclose(a.values, [[0.1, 0.2], [-5, -5]], rtol=1e-6)
    assert a.valid.tolist() == [True, False]
    assert a.notes == notes


BAD = [
    # (content, line named in the message, words the message must contain)
    ("", 1, "empty file"),
    ("\n\n", 1, "empty file"),
    ("valence;arousal\n0.1,0.2\n", 1, "header must be"),
    ("Valence,Arousal\n0.1,0.2\n", 1, "header must be"),
    ("arousal,valence\n0.1,0.2\n", 1, "header must be"),
    ("0.1,0.2\n0.3,0.4\n", 1, "header must be"),
    ("valence,arousal\n", 2, "no data rows"),
    ("valence,arousal\n0.1,0.2\n0.3,nan\n", 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\nNaN,0.3\n", 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\n0.3,inf\n", 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\n-Infinity,0.3\n", 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\nabc,0.3\n", 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\n0.3,\n", 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\n1_0,0.3\n", 3, "not a finite number"),
    ('valence,arousal\n0.1,0.2\n"0.3",0.3\n', 3, "not a finite number"),
    ("valence,arousal\n0.1,0.2\n0.3,1.0001\n", 3, "outside [-1, 1]"),
    ("valence,arousal\n0.1,0.2\n-1.5,0.3\n", 3, "outside [-1, 1]"),
    ("valence,arousal\n0.1,0.2\n-5.5,-5.5\n", 3, "outside [-1, 1]"),
    ("valence,arousal\n0.1,0.2\n5,5\n", 3, "outside [-1, 1]"),
    ("valence,arousal\n0.1,0.2\n0.3,0.4,0.5\n", 3, "expected 2 comma-separated values, got 3"),
    ("valence,arousal\n0.1,0.2\n0.3\n", 3, "expected 2 comma-separated values, got 1"),
    ("valence,arousal\n0.1,0.2\n0.3;0.4\n", 3, "got 1"),
    ("valence,arousal\n0.1,0.2\n0.3,0.4,\n", 3, "got 3"),
    ("valence,arousal\n0.1,0.2\n-5,0.3\n", 3, "only one of valence/arousal is -5"),
    ("valence,arousal\n0.1,0.2\n0.3,-5\n", 3, "only one of valence/arousal is -5"),
    ("valence,arousal\n0.1,0.2\n\n0.3,0.4\n", 3, "blank line inside the data"),
    ("valence,arousal\r\n0.1,0.2\r\n\r\n0.3,0.4\r\n", 3, "blank line inside the data"),
    (b"valence,arousal\n0.1,0.2\n0.\xff,0.4\n", 3, "not valid UTF-8"),
]


@pytest.mark.parametrize("content, line, words", BAD, ids=[f"{i}-{b[2][:20]}" for i, b in enumerate(BAD)])
def test_bad_files_name_file_and_line(tmp_path, content, line, words):
    p = _write(tmp_path, content)
    with pytest.raises(AnnotationError) as ei:
        read_annotations(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert words in msg, msg
    assert isinstance(ei.value, ValueError)


def test_bad_line_deep_in_a_long_file_is_located(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.uniform(-1, 1, (20000, 2))
    rows = [f"{a:.4f},{b:.4f}" for a, b in v]
    rows[15000] = "0.5,1.25"  # file line 15002 (header is line 1)
    rows[17000] = "0.5,2"
    p = _write(tmp_path, "valence,arousal\n" + "\n".join(rows) + "\n")
    with pytest.raises(AnnotationError, match=r":15002: value outside .*'0.5,1.25' \(and 1 more bad line"):
        read_annotations(p)
    rows[15000] = rows[17000] = "0.5,0.5"
    a = read_annotations(_write(tmp_path, "valence,arousal\n" + "\n".join(rows) + "\n"))
    assert a.values.shape == (20000, 2) and a.valid.all()
    np.testing.assert_allclose(a.values[:3], np.round(v[:3], 4), atol=1e-6)


def test_missing_file_is_an_annotation_error(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        read_annotations(tmp_path / "nope.txt")


TOKENS = "0.5 -0.5 +0.5 .5 5. -5 -5.0 1e-1 1E+0 0 -0 1. 1.. 1e e1 . - + --1 +-1 1- 1e1e 0x1 1_0 nan inf 1,5 ١".split()
TOKENS += ["", " 0.5", "0.5 ", "0.5\t"]


@pytest.mark.parametrize("tok", TOKENS)
def test_fast_path_never_accepts_what_the_exact_parser_refuses(tok):
    body = f"0.1,0.2\n{tok},0.3\n0.4,{tok}".encode()
    fast = _parse_fast(body)
    try:
        exact = _parse_exact(body, "f")
    except AnnotationError:
        assert fast is None, f"fast path accepted {tok!r}"
        return
    if fast is not None:
        np.testing.assert_array_equal(fast, exact)


def test_fast_and_exact_agree_on_a_valid_file():
    rng = np.random.default_rng(1)
    v = np.round(rng.uniform(-1, 1, (500, 2)), 6)
    v[100:120] = -5
    body = "\r\n".join(f"{a},{b}" for a, b in v).encode()
    fast = _parse_fast(body)
    assert fast is not None
    np.testing.assert_array_equal(fast, _parse_exact(body, "f"))
    np.testing.assert_array_equal(fast, v)


def test_parse_annotations_names_the_given_name():
    with pytest.raises(AnnotationError, match=r"^sub/x\.txt:2: "):
        parse_annotations(b"valence,arousal\n2,2\n", "sub/x.txt")


@pytest.mark.parametrize(
    "mask, runs",
    [
        ([], []),
        ([1, 1, 1], []),
        ([0, 0, 0], [[0, 3]]),
        ([0, 1, 1, 0, 0, 1, 0], [[0, 1], [3, 5], [6, 7]]),
        ([1, 0, 1], [[1, 2]]),
    ],
)
def test_false_runs(mask, runs):
    assert false_runs(np.array(mask, dtype=bool)) == runs
