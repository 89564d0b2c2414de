"""Tyk's analytics records: built after each response, queued, batched, written to a sink.

`record` builds the record (Tyk's JSON names), `tyk_format` encodes it as Tyk's
gateway writes it to Redis, `pipeline` queues and batches (with the seam where
analytics plugins transform records: `plugins`), `sinks` writes them (file, stdout,
Redis), `observer` gathers each request's facts for the record and the metrics.
"""
