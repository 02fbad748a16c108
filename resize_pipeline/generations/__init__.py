"""Growing datasets: what DEST holds, what changed in SOURCE since, and DEST's generations.

- `records`: the record schemas (the inputs a shard took, generation records, superseded samples)
  and their Parquet files in DEST;
- `partition`: hash partitions on local disk, so that joins over every input keep the driver's
  memory bounded;
- `diff`: held vs listed -> new, changed, unchanged, deleted (a pure function over Arrow batches);
- `dedup`: rows to convert vs samples held, by the sha256 of their bytes (also a pure function);
- `update`: ``convert --update``: the integration point (plan a generation, resume an interrupted
  one); `adopt`: a DEST written before generations existed becomes generation 1;
- `publish`: a generation's records, its superseded samples, then the manifest;
- `verify`: ``inspect --verify`` of every generation's record files.

What a reader of generation g sees (its shard files, the samples superseded up to g) is
`readers.generations`'s: readers never import this package.
"""
