"""Data shapes every layer above shares: prompt sources (hh-rlhf transcripts, JSONL, Parquet, text),
response pairs, and the TRL preference row. Pure: no grpc, no generated code."""
