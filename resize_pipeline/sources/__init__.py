"""Sources: what to read. See `listing.open_source` for the accepted forms."""

from resize_pipeline.sources.base import IMAGE_EXTENSIONS, SourceItem
from resize_pipeline.sources.common import Listing
from resize_pipeline.sources.keys import sanitize_key, unique_keys
from resize_pipeline.sources.listing import list_source, open_source
from resize_pipeline.sources.reader import read_items

__all__ = ["IMAGE_EXTENSIONS", "SourceItem", "Listing", "list_source", "open_source", "read_items", "sanitize_key",
           "unique_keys"]
