"""Category names from file names: the original's camel-case table, plus what it crashed on."""

from __future__ import annotations

import pytest

from transforms.category import UnknownCategory, camel_case, category_from_path


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
