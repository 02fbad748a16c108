"""``resize-pipeline inspect OUT``: what a conversion wrote (thin layer over `resize_pipeline.inspection`)."""

from __future__ import annotations

import argparse
import json

#: samples a contact sheet may hold (4 columns of 160 px cells: 1024 make a 640x48,128 PNG, ~90 MB in memory)
MAX_SHEET_SAMPLES = 1024


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="summarise a conversion's output: counts, shards, labels, sizes, errors",
        description="Summarise OUT (a convert DEST, local or fsspec URL): counts (total, written, failed by "
        "stage), shards with sizes, label histogram, output size distribution, most common errors. "
        "Exit status: 0, 1 when --verify finds a shard that does not match the manifest, 2 when OUT "
        "is not a finished conversion.",
    )
    p.add_argument("out", metavar="OUT", help="the DEST of a finished convert (folder or fsspec URL)")
    p.add_argument("--verify", action="store_true", help=(
        "recompute every shard's sha256 against _manifest.json, and every generation's records"))
    p.add_argument("--generation", type=int, metavar="G",
                   help="inspect generation G of a DEST grown by convert --update (default: the latest)")
    p.add_argument("--sheet", metavar="PATH", help="write a contact-sheet PNG of random samples (keys, labels)")
    p.add_argument("--samples", type=int, default=16, help="samples on the contact sheet (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking the sheet's samples (default 0)")
    p.add_argument("--dali-index", action="store_true",
                   help="also write DALI index files (shard-NNNNN.idx) beside the tars, for fn.readers.webdataset")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resize_pipeline.errors import ConfigError, OutputError
    from resize_pipeline.generations.verify import verify_generations
    from resize_pipeline.inspection import contact_sheet, inspect_output, verify_shards

    if not 1 <= args.samples <= MAX_SHEET_SAMPLES:
        raise ConfigError(f"--samples must be an integer in 1..{MAX_SHEET_SAMPLES}, not {args.samples}")
    verify = verify_shards(args.out) if args.verify else None
    bad = {v["name"] for v in verify or [] if not v["ok"]}
    generations = verify_generations(args.out) if args.verify else None
    try:
        report = inspect_output(args.out, sample_count=args.samples, seed=args.seed, skip=bad,
                                generation=args.generation)
    except OutputError as exc:
        if not any(not v["ok"] for v in generations or []):
            raise
        print(f"{args.out}: cannot be read ({exc})")  # a generation's records are damaged: say which
        print("\n".join(f"MISMATCH generation {v['generation']}: {v['reason']}" for v in generations or []
                        if not v["ok"]))
        return 1
    report.verify = verify
    report.verify_generations = generations
    if args.sheet:
        report.sheet = contact_sheet(args.out, report.samples, args.sheet, encode=report.encode)
    if args.dali_index:
        from resize_pipeline.readers.dali import write_dali_indexes

        report_indexes = write_dali_indexes(args.out)
    print(json.dumps(report.to_dict(), indent=1, sort_keys=True) if args.json else report.text())
    if args.dali_index and not args.json:
        print(f"DALI index files: {len(report_indexes)} written beside the tars")
    return 1 if report.verified_ok is False else 0
