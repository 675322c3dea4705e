"""Calls: domain types, admission, the decode-infer-results pipeline, streams, long recordings."""
