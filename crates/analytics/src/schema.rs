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

    /// How `other`'s entry for the same dataset differs from this one, column by column, in
    /// words, the two named `here` and `there` ("column \"x\": bounds [0, 1] at a, [0, 2] at
    /// b"); `None` when they agree.
    pub fn difference(&self, other: &DatasetCatalog, here: &str, there: &str) -> Option<String> {
        let mut differences = Vec::new();
        for c in &self.columns {
            match other.column(&c.name) {
                None => differences.push(format!("column {:?}: at {here}, not at {there}", c.name)),
                Some(o) if o == c => {}
                Some(o) => {
                    let mut what = Vec::new();
                    if o.ty != c.ty {
                        what.push(format!("type {} at {here}, {} at {there}", c.ty, o.ty));
                    }
                    if o.bounds != c.bounds {
                        let b = |b: Option<(f64, f64)>| {
                            b.map_or("none".into(), |(lo, hi)| format!("[{lo}, {hi}]"))
                        };
                        what.push(format!(
                            "bounds {} at {here}, {} at {there}",
                            b(c.bounds),
                            b(o.bounds)
                        ));
                    }
                    if o.domain != c.domain {
                        let d = |d: &Option<Vec<String>>| {
                            d.as_ref().map_or("none".into(), |d| format!("{d:?}"))
                        };
                        what.push(format!(
                            "domain {} at {here}, {} at {there}",
                            d(&c.domain),
                            d(&o.domain)
                        ));
                    }
                    differences.push(format!("column {:?}: {}", c.name, what.join(", ")));
                }
            }
        }
        for o in &other.columns {
            if self.column(&o.name).is_none() {
                differences.push(format!("column {:?}: at {there}, not at {here}", o.name));
            }
        }
        (!differences.is_empty()).then(|| differences.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_difference_names_the_column_and_what_differs() {
        let column = |name: &str, bounds| ColumnInfo {
            name: name.into(),
            ty: ColumnType::Float,
            bounds,
            domain: None,
        };
        let here = DatasetCatalog {
            name: "flights".into(),
            columns: vec![column("dep_delay", Some((-60.0, 600.0))), column("distance", None)],
        };
        assert_eq!(here.difference(&here.clone(), "a", "b"), None);
        let mut there = here.clone();
        there.columns[0].bounds = Some((-60.0, 900.0));
        there.columns.pop();
        there.columns.push(column("arr_delay", None));
        assert_eq!(
            here.difference(&there, "a", "b").unwrap(),
            "column \"dep_delay\": bounds [-60, 600] at a, [-60, 900] at b; \
             column \"distance\": at a, not at b; column \"arr_delay\": at b, not at a"
        );
    }
}
