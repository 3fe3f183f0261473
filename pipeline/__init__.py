"""tracelake: agent session logs -> a signed, content-addressed Parquet lake."""

__version__ = "0.1.0"
