//! Dataset schemas and cell values.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Whole numbers.
    Int,
    /// Real numbers.
    Float,
    /// Text.
    String,
}

impl ColumnType {
    /// Whether values of this type are numbers.
    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Int | ColumnType::Float)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::Int => "an integer column",
            ColumnType::Float => "a float column",
            ColumnType::String => "a string column",
        })
    }
}

/// A dataset's columns, in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSchema {
    /// The dataset's name.
    pub name: String,
    /// `(column, type)` pairs.
    pub columns: Vec<(String, ColumnType)>,
}

impl DatasetSchema {
    /// The position and type of a column.
    pub fn column(&self, name: &str) -> Option<(usize, ColumnType)> {
        self.columns.iter().position(|(c, _)| c == name).map(|i| (i, self.columns[i].1))
    }
}

/// One cell, as the data source read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A missing value.
    Null,
    /// A number (integer and float columns).
    Number(f64),
    /// Text.
    Text(&'a str),
}

/// What a party announces about a dataset it serves: no data, only the schema, the declared
/// bounds of numeric columns and the value domains of categorical ones. Queries are planned
/// against it, so that every party computes the same vector layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetCatalog {
    /// The dataset's name.
    pub name: String,
    /// Its columns.
    pub columns: Vec<ColumnInfo>,
}

/// One column of a catalog entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnInfo {
    /// The column.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Declared clipping bounds `[min, max]` of a numeric column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<(f64, f64)>,
    /// Declared value domain of a categorical column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Vec<String>>,
}

impl DatasetCatalog {
    /// A column's entry.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }
}
