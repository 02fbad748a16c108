"""Sinks: what to write. WebDataset tar shards and Parquet shards, rolled and committed atomically."""

from resize_pipeline.sinks.base import FormatWriter, RollingShardWriter, Sample, ShardFile
from resize_pipeline.sinks.parquet import ParquetWriter
from resize_pipeline.sinks.webdataset import WebDatasetWriter

__all__ = ["FormatWriter", "RollingShardWriter", "Sample", "ShardFile", "WebDatasetWriter", "ParquetWriter"]
