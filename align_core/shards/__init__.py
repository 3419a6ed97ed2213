"""Conversation shards: schema, writer, manifest, reader and digest verification."""
