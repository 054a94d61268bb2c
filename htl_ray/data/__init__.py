"""Data: ingestion of real layouts, the synthetic generator, splits and Ray Dataset loading."""
