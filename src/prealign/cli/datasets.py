"""``prealign datasets list | info NAME | fetch NAME | verify NAME``, each with ``[--root DIR] [--json]``.

``--json`` prints the answer as JSON on stdout and nothing else there; into a pipe the list is
tab-separated lines.
"""
from __future__ import annotations

import dataclasses
import sys

from .args import FOLDER, add_json, console, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("datasets", help="list, describe and download data sets")
    sub = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    ls = sub.add_parser("list", help="every data set: classes, shape, available here?, where")
    ls.add_argument("--root", type=FOLDER, default=None, help="also look in this folder (first)")
    add_json(ls, "every data set")
    ls.set_defaults(func=cmd_list)
    info = sub.add_parser("info", help="one data set: files, URLs, checksums, where it was found")
    info.add_argument("name")
    info.add_argument("--root", type=FOLDER, default=None, help="also look in this folder (first)")
    add_json(info, "the data set's registry entry and where it was found")
    info.set_defaults(func=cmd_info)
    fetch = sub.add_parser("fetch", help="download a data set from its publisher (checksum verified)")
    fetch.add_argument("name")
    fetch.add_argument("--root", type=FOLDER, default=None, help="download into ROOT/NAME (default: the user cache)")
    add_json(fetch, "the data set's name and folder")
    fetch.set_defaults(func=cmd_fetch)
    verify = sub.add_parser("verify", help="check the files found against the publisher's checksums and the registry "
                                           "(counts, shape, labels); exit 2 on any problem")
    verify.add_argument("name")
    verify.add_argument("--root", type=FOLDER, default=None, help="look in this folder first (as load and fetch do)")
    add_json(verify, "the report (problems also on stderr)")
    verify.set_defaults(func=cmd_verify)
    p.set_defaults(func=lambda args: p.print_help() or 2)  # no ACTION named: a usage error, as `runs` and `analyze`


def cmd_list(args) -> int:
    from rich.table import Table

    from ..data import DATASETS, available

    found = {name: available(name, args.root) for name in DATASETS}
    if args.json:
        print_json([{"name": name, "classes": spec.num_classes, "shape": list(spec.shape),
                     "sizes": list(spec.sizes) if spec.sizes else None, "available": found[name][0],
                     "where": found[name][1]} for name, spec in DATASETS.items()])
        return 0
    table = Table(title="prealign data sets")
    for col in ("name", "classes", "shape", "train/test", "here?", "where"):
        table.add_column(col)
    for name, spec in DATASETS.items():
        ok, where = found[name]
        sizes = f"{spec.sizes[0]}/{spec.sizes[1]}" if spec.sizes else "?"
        table.add_row(name, str(spec.num_classes), "x".join(map(str, spec.shape)), sizes,
                      "yes" if ok else "no", where)
    console().print(table)
    return 0


def cmd_info(args) -> int:
    from ..data import available, get_spec, search_dirs

    spec = get_spec(args.name)
    ok, where = available(args.name, args.root)
    if args.json:
        print_json({**dataclasses.asdict(spec), "available": ok, "where": where,
                    "search": [] if spec.offline else [str(d) for _, d in search_dirs(spec.name, args.root)]})
        return 0
    lines = [f"{spec.name}: {spec.description}",
             f"  shape {'x'.join(map(str, spec.shape))}, {spec.num_classes} classes"
             + (f", {spec.sizes[0]} train / {spec.sizes[1]} test" if spec.sizes else ""),
             f"  available here: {'yes, ' + where if ok else 'no'}"]
    if spec.classes:
        lines.append(f"  classes: {', '.join(spec.classes)}")
    if spec.homepage:
        lines.append(f"  homepage: {spec.homepage}")
    for f in spec.files:
        lines.append(f"  file {f.filename}  {f.checksum}" + (f"  (uncompressed {f.content})" if f.content else ""))
        lines += [f"    {url}" for url in f.urls]
    if not spec.offline:
        lines.append("  search order: " + " -> ".join(str(d) for _, d in search_dirs(spec.name, args.root)))
    print("\n".join(lines))
    return 0


def cmd_fetch(args) -> int:
    from ..data import fetch, get_spec

    spec = get_spec(args.name)
    folder = fetch(args.name, args.root)
    if args.json:
        print_json({"name": args.name, "folder": str(folder), "offline": spec.offline})
    elif spec.offline:
        print(f"{args.name} ships with {spec.offline}; nothing to download")
    else:
        print(f"{args.name}: ready in {folder}")
    return 0


def cmd_verify(args) -> int:
    """Per-file OK / MISMATCH lines (stdout), then one line per problem (stderr); 0 when all is good, else 2."""
    from ..data import verify

    report = verify(args.name, args.root)
    if args.json:
        print_json(report)
    else:
        lines = [f"{report['name']} in {report['folder']}"]
        for f in report["files"]:
            lines.append(f"  {f['status'].upper():9s} {f['file']}: {f['detail']}")
        lines.append(f"  {report['contents']['status'].upper():9s} contents: "
                     + ("see below" if report["contents"]["status"] != "ok" else report["contents"]["detail"]))
        if report["fingerprint"]:
            lines.append(f"  fingerprint (part of every run key): sha256 {report['fingerprint']}")
        print("\n".join(lines))
    for problem in report["problems"]:
        print(f"prealign: error: {problem}", file=sys.stderr)
    return 0 if report["ok"] else 2
