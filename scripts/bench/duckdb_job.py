#!/usr/bin/env python3
"""The nightly job of `segmill run`, written in SQL for DuckDB: the comparison in scripts/bench.sh.

What it does, on a drop folder written by `segmill gen` (one customer-ID data source):

1. reads every ID-sync file (`adobe_id_0_<DPID>_<TS>.sync[.N]`: UUID<TAB>customer ID);
2. reads every trait file (`ftp_dpm_<DPID>_<TS>.sync|.overwrite[.N][.gz]`) as whole lines, in
   AAM's order (timestamp, then part), numbering the lines of each file;
3. counts bad lines (not ID or ID<TAB>ITEMS) and unmatched lines (ID not in the ID sync);
4. splits the items, keeps `d_sid=N` (realize) and `d_unsid=N`, `N:0`, `N:-1` (remove) of traits
   the catalog gives to the file's data source, and applies them in input order: a user keeps a
   trait when its last instruction realizes it. An `.overwrite` file replaces what earlier
   files gave its users (removals in it are ignored);
5. writes one line per user: UUID<TAB>sorted comma-separated trait IDs.

What it does not do, and segmill does: trait rules on key-value and `ic` signals, the 200-lines-
per-user cap, TTL expiry, receipts with samples, segment evaluation, destination exports and a
durable state. Those differences (rules and the cap) are why user counts differ slightly.

Prints one JSON object on stdout: counts and the seconds each step took.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import tomllib
from pathlib import Path

import duckdb

TRAIT_NAME = re.compile(
    r"^ftp_dpm_(?P<dpid>\d+)(?:_(?P<owner>\d+))?_(?P<ts>\d{10})"
    r"\.(?P<mode>sync|overwrite)(?:\.(?P<part>\d+))?(?P<gz>\.gz)?$"
)
IDSYNC_NAME = re.compile(r"^adobe_id_0_(?P<dpid>\d+)_(?P<ts>\d{10})\.sync(?:\.\d+)?$")

# Reading whole lines: a delimiter byte that never occurs in the text, no quoting, no sniffing.
WHOLE_LINES = (
    "delim = '\x01', quote = '', escape = '', header = false, auto_detect = false, "
    "columns = {'line': 'VARCHAR'}"
)


def sql_str(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def find_files(inbound: Path) -> tuple[list[Path], list[tuple[Path, re.Match[str]]]]:
    idsync: list[Path] = []
    traits: list[tuple[Path, re.Match[str]]] = []
    for path in sorted(inbound.rglob("*")):
        if not path.is_file():
            continue
        if IDSYNC_NAME.match(path.name):
            idsync.append(path)
        elif m := TRAIT_NAME.match(path.name):
            traits.append((path, m))
    # AAM applies files by timestamp, split parts in part order.
    traits.sort(key=lambda pm: (pm[1]["ts"], int(pm[1]["part"] or 0), pm[0].name))
    return idsync, traits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop", type=Path, required=True, help="folder written by `segmill gen`")
    ap.add_argument("--out", type=Path, required=True, help="the per-user output file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="12GB")
    ap.add_argument("--temp-dir", type=Path, required=True, help="DuckDB spill folder")
    args = ap.parse_args()

    config = tomllib.loads((args.drop / "segmill.toml").read_text())
    idsync_files, trait_files = find_files(args.drop / "inbound")
    if not idsync_files or not trait_files:
        print(f"duckdb_job: no ID-sync or trait files under {args.drop / 'inbound'}", file=sys.stderr)
        return 2
    targets = {int(m["owner"] or m["dpid"]) for _, m in trait_files}
    if len(targets) != 1:
        print(f"duckdb_job: expected one data source, found {sorted(targets)}", file=sys.stderr)
        return 2
    target = targets.pop()
    own_traits = [int(t["id"]) for t in config.get("trait", []) if int(t["data_source"]) == target]
    if len(trait_files) >= 1 << 15:
        print("duckdb_job: too many trait files for the position encoding", file=sys.stderr)
        return 2

    timings: dict[str, float] = {}
    con = duckdb.connect()  # in-memory database, spills to temp_directory
    con.execute(f"SET threads = {int(args.threads)}")
    con.execute(f"SET memory_limit = {sql_str(args.memory_limit)}")
    con.execute(f"SET temp_directory = {sql_str(str(args.temp_dir))}")

    def step(name: str, sql: str) -> None:
        t = time.perf_counter()
        con.execute(sql)
        timings[name] = round(time.perf_counter() - t, 3)

    con.execute("CREATE TABLE own_traits (trait UINTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO own_traits VALUES (?)", [[t] for t in own_traits])

    # 1. ID sync.
    id_list = "[" + ", ".join(sql_str(str(p)) for p in idsync_files) + "]"
    step(
        "read_idsync",
        f"""CREATE TABLE idsync AS
            SELECT uuid, cid FROM read_csv({id_list}, delim = '\t', quote = '', escape = '',
                header = false, auto_detect = false,
                columns = {{'uuid': 'VARCHAR', 'cid': 'VARCHAR'}})""",
    )

    # 2. Trait files, one INSERT per file so that line numbers restart per file. Line numbers
    # follow the file's order: row_number() OVER () streams with insertion order preserved.
    con.execute(
        "CREATE TABLE lines (file_no USMALLINT, overwrite BOOLEAN, ln UBIGINT, line VARCHAR)"
    )
    t = time.perf_counter()
    for file_no, (path, m) in enumerate(trait_files):
        con.execute(
            f"""INSERT INTO lines
                SELECT {file_no}, {m['mode'] == 'overwrite'}, row_number() OVER (), line
                FROM read_csv({sql_str(str(path))}, {WHOLE_LINES})"""
        )
    timings["read_traits"] = round(time.perf_counter() - t, 3)

    # 3. Records (0 or 1 TAB) resolved through the ID sync; bad and unmatched lines counted.
    step(
        "join",
        """CREATE TABLE resolved AS
           WITH recs AS (
               SELECT file_no, overwrite, ln,
                      trim(split_part(line, chr(9), 1), ' ') AS cid,
                      split_part(line, chr(9), 2) AS items,
                      length(line) - length(replace(line, chr(9), '')) AS tabs
               FROM lines
           )
           SELECT r.file_no, r.overwrite, r.ln, r.tabs, s.uuid, r.items
           FROM recs r LEFT JOIN idsync s ON s.cid = r.cid""",
    )
    counts = con.execute(
        """SELECT count(*),
                  count(*) FILTER (WHERE tabs > 1),
                  count(*) FILTER (WHERE tabs <= 1 AND uuid IS NULL),
                  count(*) FILTER (WHERE tabs <= 1 AND uuid IS NOT NULL)
           FROM resolved"""
    ).fetchone()
    assert counts is not None
    lines, bad, unmatched, matched = counts

    # 4. Items in line order; the last instruction per (user, trait) decides.
    step(
        "explode",
        """CREATE TABLE acts AS
           WITH items AS (
               SELECT uuid, file_no, overwrite, ln, string_split(items, ',') AS parts
               FROM resolved WHERE tabs <= 1 AND uuid IS NOT NULL
           ), split AS (
               SELECT uuid, file_no, overwrite, ln,
                      trim(unnest(parts), ' ') AS item,
                      unnest(range(len(parts))) AS idx
               FROM items
           ), typed AS (
               SELECT uuid, file_no, overwrite,
                      (file_no::UBIGINT << 48) | (ln << 16) | idx::UBIGINT AS pos,
                      CASE WHEN starts_with(item, 'd_sid=') THEN true
                           WHEN starts_with(item, 'd_unsid=') THEN false
                           WHEN ends_with(item, ':0') OR ends_with(item, ':-1') THEN false
                      END AS realize,
                      CASE WHEN starts_with(item, 'd_sid=')
                               THEN TRY_CAST(item[7:] AS UINTEGER)
                           WHEN starts_with(item, 'd_unsid=')
                               THEN TRY_CAST(item[9:] AS UINTEGER)
                           WHEN ends_with(item, ':0') OR ends_with(item, ':-1')
                               THEN TRY_CAST(split_part(item, ':', 1) AS UINTEGER)
                      END AS trait
               FROM split
           )
           SELECT uuid, file_no, pos, realize, trait FROM typed
           WHERE trait IS NOT NULL
             AND trait IN (SELECT trait FROM own_traits)
             AND (realize OR NOT overwrite)""",
    )
    has_overwrite = any(m["mode"] == "overwrite" for _, m in trait_files)
    # An .overwrite file drops what earlier files gave the users it names.
    ow_join, ow_filter = "", ""
    if has_overwrite:
        ow_join = """LEFT JOIN (SELECT uuid, max(file_no) AS ow_file FROM resolved
                                WHERE overwrite AND tabs <= 1 AND uuid IS NOT NULL
                                GROUP BY uuid) o ON o.uuid = a.uuid"""
        ow_filter = "WHERE a.file_no >= coalesce(o.ow_file, 0)"
    step(
        "aggregate_write",
        f"""COPY (
               WITH kept AS (
                   SELECT a.uuid, a.trait FROM acts a {ow_join} {ow_filter}
                   GROUP BY a.uuid, a.trait
                   HAVING arg_max(a.realize, a.pos)
               )
               SELECT uuid, string_agg(trait::VARCHAR, ',' ORDER BY trait) AS traits
               FROM kept GROUP BY uuid
           ) TO {sql_str(str(args.out))} (FORMAT csv, DELIMITER '\t', HEADER false, QUOTE '')""",
    )
    users, pairs = 0, 0
    t = time.perf_counter()
    with open(args.out, "rb") as f:
        for row in f:
            users += 1
            pairs += row.count(b",") + 1
    timings["count_output"] = round(time.perf_counter() - t, 3)

    print(
        json.dumps(
            {
                "lines": lines,
                "bad_lines": bad,
                "unmatched_lines": unmatched,
                "matched_lines": matched,
                "users": users,
                "user_traits": pairs,
                "trait_files": len(trait_files),
                "idsync_files": len(idsync_files),
                "seconds": timings,
                "duckdb_version": duckdb.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
