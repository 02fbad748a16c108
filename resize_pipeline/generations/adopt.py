"""Adopting a DEST written before DEST recorded what it holds (no input records, no generations).

Its shards are generation 1. Their keys are read back from the shard files (`held.legacy_batches`,
generation-0 rows), the diff matches them to SOURCE's rows (`Diff.adopted`), and `adopt` turns that
into generation 1's records (``_generations/000001.records.parquet``): each input's identity from
the listing, and its stamp when the earlier run's listing and stamps digests, recomputed over those
rows in listing order, prove that nothing changed since (else stamp 0: kept, never seen as changed,
counted as unchecked).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from resize_pipeline.generations.held import Published, legacy_shards
from resize_pipeline.generations.records import Spool, held_schema, plan_schema, to_columns

log = logging.getLogger(__name__)


def adopt(d, published: Published, old: dict[str, Any] | None, report: dict[str, int]) -> Spool | None:
    """Records for the shards of a DEST written before input records: matched to the listed rows
    (identity from the listing), stamped when the earlier run's digests prove nothing changed since."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not legacy_shards(published):
        return None
    h_listing, h_stamps = hashlib.sha256(), hashlib.sha256()
    matched = unmatched = written = 0
    for b in d.adopted():  # first pass: do the earlier run's digests still hold?
        t = pa.Table.from_batches([b])
        m = t.filter(pc.greater_equal(t.column("pos"), 0))
        unmatched += t.num_rows - m.num_rows
        matched += m.num_rows
        written += int(pc.sum(pc.equal(t.column("status"), "written")).as_py() or 0)
        if m.num_rows:
            cols = to_columns(m.select(plan_schema().names).combine_chunks().to_batches()[0])
            h_listing.update("".join(f"{k}\t{u}\t{o}\t{n}\t{r}\t{la}\n" for k, u, o, n, r, la in zip(
                cols["key"], cols["url"], cols["offset"], cols["length"], cols["row"], cols["label"], strict=True))
                .encode("utf-8", "surrogatepass"))
            h_stamps.update(np.asarray(cols["stamp"], dtype=np.int64).astype("<i4").tobytes())
    verified = old is not None and unmatched == 0 and matched == int(old.get("inputs", -1)) and \
        h_listing.hexdigest()[:16] == old.get("listing") and h_stamps.hexdigest()[:16] == old.get("stamps")
    if verified:
        report["unchecked"] -= written
        report["unchanged"] += written
    else:
        log.warning("%d sample(s) converted before DEST recorded what it holds cannot be checked for changes (the "
                    "earlier run's listing or stamps differ from SOURCE's now): they are kept as they are and "
                    "counted as unchecked; --overwrite converts everything again", written)
    spool = Spool(held_schema())
    for b in d.adopted():  # second pass: the records
        spool.write(adopted_table(pa.Table.from_batches([b]), verified))
    return spool


def adopted_table(t: Any, verified: bool) -> Any:
    import pyarrow as pa

    n = t.num_rows
    table = pa.table({
        "key": t.column("key"), "url": t.column("url"), "offset": t.column("offset"),
        "length": t.column("length"), "row": t.column("row"), "label": t.column("label"),
        "stamp": t.column("stamp") if verified else pa.array([0] * n, pa.int64()),
        "status": t.column("status"), "generation": pa.array([1] * n, pa.int64()), "shard": t.column("shard"),
        "sample": t.column("sample"), "sha256": pa.nulls(n, pa.binary(32)),
        "of_key": pa.nulls(n, pa.large_string()), "target": pa.nulls(n, pa.int64()), "stage": t.column("stage"),
    }, schema=held_schema())
    return table
