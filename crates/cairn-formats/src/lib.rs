//! Artifact file formats: tensors as Arrow IPC files of the canonical
//! `arrow.fixed_shape_tensor` type ([`tensor`]), tables as Parquet
//! ([`table`]), the one bridge between cairn tables and polars ([`bridge`]),
//! PNG image grids for `cairn inspect --grid` ([`grid`]), and the checked
//! header of a safetensors model file ([`safetensors`]). Everything here is
//! libtorch-free so the engine can read and show any artifact.

pub mod bridge;
pub mod grid;
pub mod safetensors;
pub mod table;
pub mod tensor;

pub use table::{Column, Table, TableError};
pub use tensor::{write_tensor, DType, TensorError, TensorFile, TensorWriter};
