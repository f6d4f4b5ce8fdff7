"""The movie store: ingest video files into byte-exact JPEG frames with an index."""
