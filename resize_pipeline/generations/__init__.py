"""Growing datasets: what DEST holds, what changed in SOURCE since, and DEST's generations.

- `records`: the record schemas (the inputs a shard took, generation records, superseded samples)
  and their Parquet files in DEST;
- `partition`: hash partitions on local disk, so that joins over every input keep the driver's
  memory bounded;
- `diff`: held vs listed -> new, changed, unchanged, deleted (a pure function over Arrow batches);
- `dedup`: rows to convert vs samples held, by the sha256 of their bytes (also a pure function);
- `update`: ``convert --update``: the integration point (plan a generation, resume an interrupted
  one, adopt a DEST written before generations existed);
- `view`: which shard files and samples a reader of generation g sees.
"""
