//! Artifact file formats (Arrow IPC tensors, Parquet tables).
