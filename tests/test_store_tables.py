"""The store as tables (issue #16): filters, one row per run or per run and epoch with the config
columns, and ``Store.to_dataframe()`` for notebooks (pandas an optional extra)."""
import sys

import pytest

from prealign.errors import PrealignError
from prealign.run.config import RunConfig
from prealign.run.store import Store

CONFIGS = [RunConfig(method="fa", dataset="digits", hidden=(8,), epochs=2, lr=1e-3),
           RunConfig(method="ifa@30", dataset="digits", hidden=(16, 16), epochs=1),
           RunConfig(method="bp", dataset="mnist5k", hidden=(8,), epochs=1, seed=4)]


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path)
    for cfg in CONFIGS:
        run_id = store.start(cfg)
        for e in range(cfg.epochs + 1):
            store.log_epoch(run_id, {"epoch": e, "test_acc": 0.25 * e, "train_loss": 2.0 - e})
    store.fail(3, "ValueError: boom")
    yield store
    store.close()


@pytest.mark.parametrize("filters, ids", [
    ({}, [1, 2, 3]), ({"method": "ifa"}, [2]), ({"method": "ifa@30"}, [2]), ({"method": "ifa@60"}, []),
    ({"method": "fa"}, [1]), ({"model": "mlp", "dataset": "digits"}, [1, 2]), ({"status": "failed"}, [3]),
    ({"status": "running", "method": "bp"}, []), ({"runs": ["2", "3"]}, [2, 3]),
])
def test_select_filters(store, filters, ids):
    runs = filters.pop("runs", None)
    assert [r["id"] for r in store.select(runs, **filters)] == ids


def test_an_unknown_status_is_an_error_not_an_empty_table(store):
    with pytest.raises(PrealignError, match="unknown run status 'done'.*finished"):
        store.select(status="done")


def test_summaries_and_records_carry_the_config(store):
    rows = store.summaries()
    assert [(r["id"], r["method"], r["hidden"], r["lr"], r["epochs"], r["angle"], r["status"]) for r in rows] == [
        (1, "fa", "8", 1e-3, 2, None, "running"), (2, "ifa@30", "16-16", 1e-4, 1, 30.0, "running"),
        (3, "bp", "8", 1e-4, 1, None, "failed")]
    assert rows[2]["error"] == "ValueError: boom"
    records = store.records(method="fa")
    assert [(r["run_id"], r["epoch"], r["test_acc"], r["optimizer"], r["seed"]) for r in records] == [
        (1, e, 0.25 * e, "adam", 0) for e in range(3)]


def test_to_dataframe_per_epoch_and_per_run(store):
    pd = pytest.importorskip("pandas", reason="the pandas extra (pip install 'prealign[pandas]')")
    epochs = store.to_dataframe()
    assert isinstance(epochs, pd.DataFrame) and len(epochs) == 3 + 2 + 2
    assert epochs.groupby("method")["test_acc"].max().to_dict() == {"bp": 0.25, "fa": 0.5, "ifa@30": 0.25}
    runs = store.to_dataframe(per="run", dataset="digits")
    assert list(runs["id"]) == [1, 2] and list(runs["hidden"]) == ["8", "16-16"]
    with pytest.raises(PrealignError, match="per must be"):
        store.to_dataframe(per="seed")


def test_to_dataframe_without_pandas_is_one_clear_error(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if the extra were not installed
    with pytest.raises(PrealignError, match=r"pip install 'prealign\[pandas\]'"):
        store.to_dataframe()
