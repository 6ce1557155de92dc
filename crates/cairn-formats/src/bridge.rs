//! The one place where arrow-rs and polars meet.
//!
//! The two crates implement Arrow independently and share no types, so data
//! crosses between them as Arrow IPC file bytes: arrow-rs writes, polars
//! reads, and back. IPC is Arrow's own interchange format, so the crossing
//! is lossless for every type cairn tables hold, and it costs one memcpy-like
//! pass, which is nothing next to what tables in cairn are used for
//! (indexes, metrics, predictions; never tensors). Keeping every crossing
//! here means the rest of the code base uses one or the other, never both.

use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::ArrowError;
use polars::prelude::{CompatLevel, DataFrame, IpcReader, IpcWriter, PolarsError, SerReader, SerWriter};

use super::table::Table;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("arrow-rs side of the arrow/polars bridge: {0}")]
    Arrow(#[from] ArrowError),
    #[error("polars side of the arrow/polars bridge: {0}")]
    Polars(#[from] PolarsError),
    #[error("arrow/polars bridge: {0}")]
    Table(String),
}

/// Converts arrow-rs record batches (all of one schema) to a polars frame.
pub fn to_polars(batches: &[RecordBatch]) -> Result<DataFrame, BridgeError> {
    let Some(first) = batches.first() else {
        return Ok(DataFrame::empty());
    };
    let mut bytes = Vec::new();
    let mut writer = FileWriter::try_new(&mut bytes, first.schema().as_ref())?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(IpcReader::new(Cursor::new(bytes)).finish()?)
}

/// Converts a polars frame to arrow-rs record batches.
pub fn from_polars(df: &mut DataFrame) -> Result<Vec<RecordBatch>, BridgeError> {
    let mut bytes = Vec::new();
    // The oldest compat level writes plain (large) strings rather than
    // views, which every arrow-rs reader understands.
    IpcWriter::new(&mut bytes).with_compat_level(CompatLevel::oldest()).finish(df)?;
    let reader = FileReader::try_new(Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// A cairn table as a polars frame (for queries and pretty-printing).
pub fn table_to_polars(table: &Table) -> Result<DataFrame, BridgeError> {
    to_polars(&[table.to_record_batch()?])
}

/// A polars frame as a cairn table; fails on column types tables lack.
pub fn table_from_polars(df: &mut DataFrame) -> Result<Table, BridgeError> {
    let mut table = Table::new();
    for batch in from_polars(df)? {
        table.append_batch(&batch).map_err(BridgeError::Table)?;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Column;

    #[test]
    fn tables_cross_to_polars_and_back_unchanged() {
        let table = Table::new()
            .with("label", Column::I64(vec![3, 1, 2]))
            .with("class_name", Column::Str(vec!["cat".into(), "automobile".into(), "bird".into()]))
            .with("score", Column::F32(vec![0.5, 0.25, 1.0]))
            .with("correct", Column::Bool(vec![true, false, true]));
        let mut df = table_to_polars(&table).unwrap();
        assert_eq!(df.shape(), (3, 4));
        assert_eq!(df.column("class_name").unwrap().str().unwrap().get(0), Some("cat"));
        assert_eq!(table_from_polars(&mut df).unwrap(), table);
    }

    #[test]
    fn polars_results_come_back_as_tables() {
        use polars::prelude::*;
        let df = polars::df!("label" => [2i64, 0, 2, 1], "loss" => [0.5f64, 1.5, 2.5, 3.5]).unwrap();
        let big = df.column("loss").unwrap().f64().unwrap().gt(1.0);
        let mut rows = df.filter(&big).unwrap().sort(["label"], Default::default()).unwrap();
        let table = table_from_polars(&mut rows).unwrap();
        assert_eq!(table.column("label"), Some(&crate::table::Column::I64(vec![0, 1, 2])));
        assert_eq!(table.column("loss"), Some(&crate::table::Column::F64(vec![1.5, 3.5, 2.5])));
    }
}
