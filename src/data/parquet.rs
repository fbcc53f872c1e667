//! Reading one string column of a Parquet file (Hugging Face datasets' `text` column).

use crate::error::{Error, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use std::path::Path;

/// Calls `f` with the value of column `column` of every row, in order.
pub fn for_each_text(
    path: &Path,
    column: &str,
    mut f: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::bad_file(path, format!("not a readable Parquet file: {e}")))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let fields = schema.root_schema().get_fields();
    let Some(field) = fields.iter().find(|t| t.name() == column) else {
        let names: Vec<&str> = fields.iter().map(|t| t.name()).collect();
        return Err(Error::bad_file(
            path,
            format!(
                "no column '{column}' (columns: {}); choose one with --field",
                names.join(", ")
            ),
        ));
    };
    let projection = parquet::schema::types::Type::group_type_builder("schema")
        .with_fields(vec![field.clone()])
        .build()
        .map_err(|e| Error::bad_file(path, e))?;
    let rows = reader
        .get_row_iter(Some(projection))
        .map_err(|e| Error::bad_file(path, e))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::bad_file(path, format!("row {i}: {e}")))?;
        let text = row.get_string(0).map_err(|_| {
            Error::bad_file(path, format!("row {i}: column '{column}' is not a string"))
        })?;
        f(text.clone())?;
    }
    Ok(())
}
