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
