//! Artifact file formats, from the `cairn-formats` crate (shared with the
//! worker): tensors as Arrow IPC, tables as Parquet, the polars bridge and
//! PNG grids.

pub use cairn_formats::*;
