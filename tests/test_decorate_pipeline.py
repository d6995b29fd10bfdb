"""The job template of the original's topology, end to end: decorated archive columns, routes, dead letters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED
from transforms.decoration import MoneyOp
from transforms.keys import doc_id
from transforms.money import DEFAULT_RATES, EXPONENTS

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module")
def decorated(sample: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory):
    logs, manifest = sample
    out = tmp_path_factory.mktemp("decorated")
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    summary = run_backfill([str(logs / "*")], str(out), job, PINNED)
    rows = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table().to_pylist()
    return manifest, summary, rows


def test_routes_select_what_the_template_says(decorated) -> None:
    manifest, summary, _ = decorated
    cats = manifest["categories"]
    assert summary["balanced"] and summary["events"] == manifest["valid_lines"]
    assert summary["routes"] == {
        "dau": cats["dau"],
        "indexed": cats["dau"] + cats["pv"] + cats["error"] + cats["mongoErr"],
        "errors": cats["error"] + cats["mongoErr"],
        "pv": cats["pv"],
        "payments": cats["payment"],  # every generated payment has type OK
        "shop": cats["click"],
    }
    assert summary["unmatched"] == cats["session"] + cats["phperror"]


def test_decorations_are_typed_archive_columns(decorated) -> None:
    _, _, rows = decorated
    money = MoneyOp("data.amount", "data.currency", DEFAULT_RATES, EXPONENTS)
    ids = set()
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
        raw_payload = row["payload"].encode()
        ids.add(row["_id"])
        assert row["_index"] == row["ts"].strftime("rs_%Y_%m")
        fields = orjson.loads(raw_payload)
        assert "trace" not in fields
        if row["category"] == "payment":
            data = fields["data"]
            if data.get("currency") in DEFAULT_RATES:
                assert row["_usd"] == round(data["amount"] * money.factor[data["currency"]], 6)
                assert row["_usd_err"] is None
            else:
                assert row["_usd"] is None and row["_usd_err"].startswith("currency ")
    assert len(ids) == len(rows)  # one id per line
    usd = sum(r["_usd"] is not None for r in rows)
    assert decorated[1]["decorations"]["_usd"] == usd > 0  # the summary counts decorated values per column
    pv = by_category["pv"]
    assert sum(r["_cntry"] is not None for r in pv) > 0.9 * len(pv)
    labels = {r["_log_info_level_rg"] for r in pv}
    assert labels <= {None, "1-14", "14-19", "19-23", "23-27", "27-31", "31-36", "36-41", "41-46", "46-51",
                      "51-57", "57-63", "63-69", "69-75", "75-101"} and len(labels) > 5
    assert all(r["_cntry"] is None and r["_usd"] is None for r in by_category["phperror"])  # not selected
    errors = by_category["error"]
    assert all(("?" in r["message_norm"]) or r["message_norm"] == "payment error: OK" for r in errors)
    incident = [r for r in errors if "mysql gone away" in r["payload"]]
    assert incident and len({r["message_fp"] for r in incident}) == 1  # one fingerprint groups the spike
    assert all(r["msg_norm"] and r["msg_fp"] and r["message_norm"] is None for r in by_category["phperror"])


def test_document_ids_are_the_line_hashes(decorated) -> None:
    _, _, rows = decorated
    row = next(r for r in rows if r["source"].endswith(".0.log"))
    data = Path(row["source"]).read_bytes()
    end = data.index(b"\n", row["offset"])
    assert row["_id"] == doc_id(row["source"], row["offset"], data[row["offset"]:end])


def test_an_op_that_cannot_apply_sends_the_line_to_the_dead_letters(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "pv.0.log").write_text(
        'us,1389913256544,{"level":20,"trace":"t"}\n'
        'us,1389913256545,{"level":"twenty"}\n'
        'us,1389913256546,{"level":5}\n'
    )
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    summary = run_backfill([str(logs / "*")], str(tmp_path / "out"), job, PINNED)
    assert (summary["events"], summary["dead_letters"], summary["balanced"]) == (2, 1, True)
    assert summary["dead_letter_reasons"] == {"range: level is not a number": 1}
    [dead] = [json.loads(line) for f in (tmp_path / "out" / "deadletter").glob("*.jsonl") for line in f.open()]
    assert dead["stage"] == "decorate" and dead["raw"] == 'us,1389913256545,{"level":"twenty"}'
    assert dead["offset"] == 42 and dead["detail"] == "got str: 'twenty'"
