//! Table artifacts: small column-oriented tables (indexes, class lists,
//! metrics, predictions) stored as Parquet.
//!
//! Stages build tables from plain Rust vectors ([`Column`]) and never touch
//! arrow-rs types. Files are written with Snappy compression, no statistics
//! that depend on the writer's clock, and a fixed row-group size, so equal
//! tables give byte-equal files and therefore equal cache keys.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, LargeStringArray, RecordBatch,
    RecordBatchReader, StringArray, StringViewArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

/// One column's values. Nulls are not supported: every cairn table is dense.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    I64(Vec<i64>),
    F64(Vec<f64>),
    F32(Vec<f32>),
    Str(Vec<String>),
    Bool(Vec<bool>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::I64(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Column::I64(_) => "i64",
            Column::F64(_) => "f64",
            Column::F32(_) => "f32",
            Column::Str(_) => "str",
            Column::Bool(_) => "bool",
        }
    }

    fn to_arrow(&self) -> ArrayRef {
        match self {
            Column::I64(v) => Arc::new(Int64Array::from(v.clone())),
            Column::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Column::F32(v) => Arc::new(Float32Array::from(v.clone())),
            Column::Str(v) => Arc::new(StringArray::from_iter_values(v)),
            Column::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
        }
    }

    /// Converts one arrow-rs array; `None` for types cairn tables never hold.
    fn from_arrow(array: &dyn Array) -> Option<Column> {
        let any = array.as_any();
        let strings = |it: &mut dyn Iterator<Item = Option<&str>>| -> Vec<String> {
            it.map(|s| s.unwrap_or_default().to_string()).collect()
        };
        Some(match array.data_type() {
            DataType::Int64 => Column::I64(any.downcast_ref::<Int64Array>()?.values().to_vec()),
            DataType::Float64 => Column::F64(any.downcast_ref::<Float64Array>()?.values().to_vec()),
            DataType::Float32 => Column::F32(any.downcast_ref::<Float32Array>()?.values().to_vec()),
            DataType::Boolean => Column::Bool(any.downcast_ref::<BooleanArray>()?.iter().map(|b| b.unwrap_or(false)).collect()),
            DataType::Utf8 => Column::Str(strings(&mut any.downcast_ref::<StringArray>()?.iter())),
            DataType::LargeUtf8 => Column::Str(strings(&mut any.downcast_ref::<LargeStringArray>()?.iter())),
            DataType::Utf8View => Column::Str(strings(&mut any.downcast_ref::<StringViewArray>()?.iter())),
            _ => return None,
        })
    }

    fn append(&mut self, other: Column) -> bool {
        match (self, other) {
            (Column::I64(a), Column::I64(b)) => a.extend(b),
            (Column::F64(a), Column::F64(b)) => a.extend(b),
            (Column::F32(a), Column::F32(b)) => a.extend(b),
            (Column::Str(a), Column::Str(b)) => a.extend(b),
            (Column::Bool(a), Column::Bool(b)) => a.extend(b),
            _ => return false,
        }
        true
    }
}

/// A named, ordered set of equally long columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: Parquet error: {source}")]
    Parquet { path: PathBuf, source: ParquetError },
    #[error("{path}: Arrow error: {source}")]
    Arrow { path: PathBuf, source: ArrowError },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a column (builder style).
    pub fn with(mut self, name: impl Into<String>, column: Column) -> Self {
        self.columns.push((name.into(), column));
        self
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    pub fn num_rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, c)| c.len())
    }

    /// The table as one arrow-rs record batch (what Parquet writes).
    fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(name, col)| Field::new(name, col.to_arrow().data_type().clone(), false))
            .collect();
        let arrays = self.columns.iter().map(|(_, c)| c.to_arrow()).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
    }

    /// Appends a record batch's rows; the error names the offending column.
    fn append_batch(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let schema = batch.schema();
        for (i, field) in schema.fields().iter().enumerate() {
            let array = batch.column(i);
            if array.null_count() > 0 {
                return Err(format!("column `{}` has nulls, which cairn tables do not hold", field.name()));
            }
            let col = Column::from_arrow(array.as_ref())
                .ok_or_else(|| format!("column `{}` has unsupported type {}", field.name(), field.data_type()))?;
            match self.columns.get_mut(i) {
                Some((name, existing)) if name == field.name() => {
                    if !existing.append(col) {
                        return Err(format!("column `{name}` changes type between batches"));
                    }
                }
                Some((name, _)) => return Err(format!("column {i} is `{}` in one batch and `{name}` in another", field.name())),
                None => self.columns.push((field.name().clone(), col)),
            }
        }
        Ok(())
    }

    /// Writes the table as Parquet.
    pub fn write(&self, path: &Path) -> Result<(), TableError> {
        let invalid = |reason: String| TableError::Invalid { path: path.into(), reason };
        let rows = self.num_rows();
        if let Some((name, col)) = self.columns.iter().find(|(_, c)| c.len() != rows) {
            return Err(invalid(format!("column `{name}` has {} rows, the first column {rows}", col.len())));
        }
        let batch = self.to_record_batch().map_err(|source| TableError::Arrow { path: path.into(), source })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(concat!("cairn ", env!("CARGO_PKG_VERSION")).to_string())
            .build();
        let file = File::create(path).map_err(|source| TableError::Io { path: path.into(), source })?;
        let parquet = |source| TableError::Parquet { path: path.into(), source };
        let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet)?;
        writer.write(&batch).map_err(|source| TableError::Parquet { path: path.into(), source })?;
        writer.close().map_err(|source| TableError::Parquet { path: path.into(), source })?;
        Ok(())
    }

    /// Reads a Parquet table written by [`Table::write`] (or any Parquet
    /// file whose columns are all of the supported types, without nulls).
    pub fn read(path: &Path) -> Result<Table, TableError> {
        let file = File::open(path).map_err(|source| TableError::Io { path: path.into(), source })?;
        let parquet = |source| TableError::Parquet { path: path.into(), source };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?.build().map_err(parquet)?;
        let mut table = Table::new();
        // Keep the column names even when the file has no rows.
        for field in reader.schema().fields() {
            let empty = arrow_array::new_empty_array(field.data_type());
            let col = Column::from_arrow(empty.as_ref()).ok_or_else(|| TableError::Invalid {
                path: path.into(),
                reason: format!("column `{}` has unsupported type {}", field.name(), field.data_type()),
            })?;
            table.columns.push((field.name().clone(), col));
        }
        for batch in reader {
            let batch = batch.map_err(|source| TableError::Arrow { path: path.into(), source })?;
            table.append_batch(&batch).map_err(|reason| TableError::Invalid { path: path.into(), reason })?;
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table::new()
            .with("label", Column::I64(vec![0, 1, 2]))
            .with("name", Column::Str(vec!["airplane".into(), "automobile".into(), "bird".into()]))
            .with("p", Column::F32(vec![0.5, 0.25, 0.125]))
            .with("loss", Column::F64(vec![1.0, f64::MAX, -0.0]))
            .with("ok", Column::Bool(vec![true, false, true]))
    }

    #[test]
    fn round_trips_every_column_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        sample().write(&path).unwrap();
        assert_eq!(Table::read(&path).unwrap(), sample());
    }

    #[test]
    fn equal_tables_give_equal_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        sample().write(&a).unwrap();
        sample().write(&b).unwrap();
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn empty_table_keeps_its_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let t = Table::new().with("label", Column::I64(vec![])).with("name", Column::Str(vec![]));
        t.write(&path).unwrap();
        assert_eq!(Table::read(&path).unwrap(), t);
    }

    #[test]
    fn ragged_columns_and_garbage_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let ragged = Table::new().with("a", Column::I64(vec![1, 2])).with("b", Column::I64(vec![1]));
        let err = ragged.write(&path).unwrap_err().to_string();
        assert!(err.contains("column `b` has 1 rows"), "{err}");
        std::fs::write(&path, b"not parquet at all").unwrap();
        let err = Table::read(&path).unwrap_err().to_string();
        assert!(err.contains("t.parquet"), "{err}");
    }
}
