"""Category names from file names: the original's camel-case table, plus what it crashed on."""

from __future__ import annotations

import re

import pytest

from transforms.category import MAX_CATEGORY, UnknownCategory, camel_case, camel_case_glob, category_from_path


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("bi_first_payment.10.log", "biFirstPayment"),
        ("ffs.client.Error.11.log", "ffsClientError"),
        ("session_20131208230103_1", "session"),
        ("check_click_20140101050105_1", "checkClick"),
        ("pv.1.log", "pv"),
        ("a.4.log", "a"),
        ("mongo_slow.0.log", "mongoSlow"),
        ("memcache_to.3.log", "memcacheTo"),
        ("mongo_err.0.log", "mongoErr"),
        ("mongo_err_20131208230103_1", "mongoErr"),
        ("/data2/als/mongo_err/mongo_err_20131208230103_1.gz", "mongoErr"),
        ("s3://bucket/history/pv_20140117230103_1.bz2", "pv"),
        ("hdfs://nn:9870/logs/dau.0.log", "dau"),
    ],
)
def test_category_from_path(path: str, category: str) -> None:
    assert category_from_path(path) == category


@pytest.mark.parametrize("path", ["a.log", "README", "pv.log", "notes.txt", "pv_1", "_12_3", "x/"])
def test_unknown_shapes_are_errors_not_crashes(path: str) -> None:
    with pytest.raises(UnknownCategory, match=r"expected 'name\.N\.log' or 'name_TIMESTAMP_N'"):
        category_from_path(path)


def test_camel_case_keeps_the_first_chunk_and_capitalises_only_first_letters() -> None:
    assert camel_case("ffs.client.Error") == "ffsClientError"
    assert camel_case("rc_detail_xY") == "rcDetailXY"


def test_long_names_are_bounded_distinct_safe_file_names() -> None:
    long_a, long_b = "c" * 234, "c" * 233 + "d"
    a, b = camel_case(long_a), camel_case(long_b)
    assert len(a) == len(b) == MAX_CATEGORY and a != b  # cut, but still one name per category
    assert a.startswith("c" * 80) and re.fullmatch(r"[0-9A-Za-z_]+", a)
    assert camel_case("c" * MAX_CATEGORY) == "c" * MAX_CATEGORY  # up to the bound: unchanged
    assert category_from_path(f"/x/{'a_' * 120}b.0.log") == camel_case("a_" * 120 + "b")
    assert len(f"category={a}") < 255


@pytest.mark.parametrize(("glob", "normalised"), [
    ("mongo_*", "mongo*"), ("mongoErr", "mongoErr"), ("*", "*"), ("pay_[ab]x", "pay[ab]x"), ("a_?_b", "a?B"),
])
def test_globs_are_normalised_like_category_names(glob: str, normalised: str) -> None:
    assert camel_case_glob(glob) == normalised
