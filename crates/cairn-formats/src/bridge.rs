//! The one place where cairn tables and polars meet.
//!
//! A cairn [`Table`] is a list of dense, typed vectors, so it crosses to a
//! polars frame column by column: each vector becomes a polars column of
//! the same type, and back. Nothing goes through an interchange format,
//! which keeps polars' IPC reader and writer, the crates they bring
//! (polars-io, polars-ops) and the lz4 codec out of the build. Tables in
//! cairn are small (indexes, metrics, predictions; never tensors), so the
//! copy costs nothing that matters. Keeping every crossing here means the
//! rest of the code base uses one or the other, never both.

use polars::prelude::{Column as PlColumn, DataFrame, DataType, PolarsError};

use super::table::{Column, Table};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("polars side of the table/polars bridge: {0}")]
    Polars(#[from] PolarsError),
    #[error("table/polars bridge: {0}")]
    Table(String),
}

/// A cairn table as a polars frame (for queries and pretty-printing).
pub fn table_to_polars(table: &Table) -> Result<DataFrame, BridgeError> {
    let columns = table.columns.iter().map(|(name, col)| to_polars_column(name, col)).collect();
    Ok(DataFrame::new_infer_height(columns)?)
}

/// A polars frame as a cairn table; fails on nulls and on column types
/// tables lack, naming the column.
pub fn table_from_polars(df: &DataFrame) -> Result<Table, BridgeError> {
    let mut table = Table::new();
    for col in df.columns() {
        let name = col.name().to_string();
        if col.null_count() > 0 {
            return Err(BridgeError::Table(format!("column `{name}` has nulls, which cairn tables do not hold")));
        }
        table.columns.push((name, from_polars_column(col)?));
    }
    Ok(table)
}

fn to_polars_column(name: &str, col: &Column) -> PlColumn {
    let name = name.into();
    match col {
        Column::I64(v) => PlColumn::new(name, v),
        Column::F64(v) => PlColumn::new(name, v),
        Column::F32(v) => PlColumn::new(name, v),
        Column::Str(v) => PlColumn::new(name, v),
        Column::Bool(v) => PlColumn::new(name, v),
    }
}

fn from_polars_column(col: &PlColumn) -> Result<Column, BridgeError> {
    Ok(match col.dtype() {
        DataType::Int64 => Column::I64(col.i64()?.into_no_null_iter().collect()),
        DataType::Float64 => Column::F64(col.f64()?.into_no_null_iter().collect()),
        DataType::Float32 => Column::F32(col.f32()?.into_no_null_iter().collect()),
        // Nulls were refused above, so `None` never occurs here.
        DataType::String => Column::Str(col.str()?.iter().map(|s| s.unwrap_or_default().to_string()).collect()),
        DataType::Boolean => Column::Bool(col.bool()?.iter().map(|b| b.unwrap_or_default()).collect()),
        other => return Err(BridgeError::Table(format!("column `{}` has unsupported type {other}", col.name()))),
    })
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
        let df = table_to_polars(&table).unwrap();
        assert_eq!(df.shape(), (3, 4));
        assert_eq!(df.column("class_name").unwrap().str().unwrap().get(0), Some("cat"));
        assert_eq!(table_from_polars(&df).unwrap(), table);
    }

    #[test]
    fn polars_results_come_back_as_tables() {
        use polars::prelude::*;
        let df = polars::df!("label" => [2i64, 0, 2, 1], "loss" => [0.5f64, 1.5, 2.5, 3.5]).unwrap();
        let big = df.column("loss").unwrap().f64().unwrap().gt(1.0);
        let rows = df.filter(&big).unwrap().sort(["label"], Default::default()).unwrap();
        let table = table_from_polars(&rows).unwrap();
        assert_eq!(table.column("label"), Some(&crate::table::Column::I64(vec![0, 1, 2])));
        assert_eq!(table.column("loss"), Some(&crate::table::Column::F64(vec![1.5, 3.5, 2.5])));
    }

    #[test]
    fn nulls_and_foreign_types_are_refused_by_column_name() {
        let nulls = polars::df!("ok" => [1i64, 2], "gap" => [Some(1.0f64), None]).unwrap();
        let err = table_from_polars(&nulls).unwrap_err().to_string();
        assert!(err.contains("`gap` has nulls"), "{err}");
        let narrow = polars::df!("ok" => [1i64, 2], "small" => [1i32, 2]).unwrap();
        let err = table_from_polars(&narrow).unwrap_err().to_string();
        assert!(err.contains("`small` has unsupported type i32"), "{err}");
    }

    #[test]
    fn uneven_tables_are_refused() {
        let table = Table::new().with("a", Column::I64(vec![1, 2])).with("b", Column::I64(vec![1]));
        assert!(table_to_polars(&table).is_err());
    }
}
