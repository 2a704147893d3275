//! Plans a consumer must not be fooled by, and encodings every party and `veil predict`
//! compute alike: each test plays a way it could go wrong and checks that it does not.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use veil_analytics::sql::{SqlOptions, plan_sql_job};
use veil_analytics::{ColumnInfo, ColumnType, DatasetCatalog, Job};
use veil_learning::encode::{Cell, Encoding, LabelMap};
use veil_party_worker::config::DatasetConfig;
use veil_party_worker::data::load_encoded;

fn catalogs() -> Vec<DatasetCatalog> {
    let col = |name: &str, ty, bounds, domain: Option<Vec<String>>| ColumnInfo {
        name: name.into(),
        ty,
        bounds,
        domain,
    };
    let flights = DatasetCatalog {
        name: "flights".into(),
        columns: vec![
            col("carrier", ColumnType::String, None, Some(vec!["AA".into(), "UA".into()])),
            col("dep_delay", ColumnType::Float, Some((-60.0, 1500.0)), None),
            col("tailnum", ColumnType::String, None, None),
        ],
    };
    let planes = DatasetCatalog {
        name: "planes".into(),
        columns: vec![
            col("tailnum", ColumnType::String, None, None),
            col("manufacturer", ColumnType::String, None, Some(vec!["BOEING".into()])),
        ],
    };
    vec![flights, planes]
}

/// The consumer asks for flights counted per plane manufacturer (planes groups, flights are
/// aggregated). A coordinator that plans planes counted per flight carrier instead (sides
/// swapped, another GROUP BY column), or matches keys case-folded, gets no signature.
#[test]
fn a_join_plan_with_swapped_sides_and_another_group_column_is_refused() {
    let asked = "SELECT r.manufacturer, COUNT(*) FROM flights f JOIN planes r \
                 ON f.tailnum = r.tailnum GROUP BY r.manufacturer";
    let other = "SELECT f.carrier, COUNT(*) FROM flights f JOIN planes r \
                 ON f.tailnum = r.tailnum GROUP BY f.carrier";
    let options = SqlOptions::default();
    let Job::Join(honest) = plan_sql_job(asked, &catalogs(), &options).unwrap() else { panic!() };
    let Job::Join(swapped) = plan_sql_job(other, &catalogs(), &options).unwrap() else { panic!() };
    assert_eq!(
        (honest.groups.dataset.as_str(), swapped.groups.dataset.as_str()),
        ("planes", "flights")
    );
    let request = serde_json::json!({ "sql": asked }).to_string();
    let planned = Job::Join(swapped).canonical_json();
    assert!(
        Job::check_plan(&request, &planned).is_err(),
        "a plan grouping flights by carrier and counting planes passed the check of a query \
         grouping by manufacturer and counting flights"
    );
    // case_fold is not compared either.
    let mut folded = honest.clone();
    folded.case_fold = true;
    let planned = Job::Join(folded).canonical_json();
    assert!(Job::check_plan(&request, &planned).is_err(), "case_fold = true passed the check");
}

/// A label map with three classes for a two-class model is refused when the job is checked,
/// not at the parties holding a row of the third class (whose declines would tell who holds
/// it).
#[test]
fn a_label_map_with_more_classes_than_the_model_is_refused_at_validation() {
    let job = r#"
kind = "train"
dataset = "d"
features = ["x"]
label = "y"
rounds = 1
[encode]
label = { classes = ["low", "mid", "high"] }
[model]
kind = "logistic_regression"
[local]
epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = { kind = "sgd" }
"#;
    // The same job with two classes is valid, so only the class count can refuse it.
    Job::parse(&job.replace(", \"high\"", "")).unwrap();
    assert!(Job::parse(job).is_err(), "3 label classes for a 2-class model were accepted");
}

fn dataset(dir: &std::path::Path, ty: ColumnType, label_ty: ColumnType) -> DatasetConfig {
    let path = dir.join("d.csv");
    std::fs::write(&path, "zip,y\n02134,1.0\n").unwrap();
    let mut columns = BTreeMap::new();
    columns.insert("zip".to_string(), ty);
    columns.insert("y".to_string(), label_ty);
    DatasetConfig::csv("d", path, columns)
}

/// The same file gives the same inputs and labels at a party declaring the columns as text,
/// at one declaring them as numbers, and in `veil predict` (which reads any cell that parses
/// as a number as one): values compare by one key ("02134", "2134" and 2134 alike).
#[test]
fn parties_and_predict_encode_the_same_cells_alike_whatever_the_declared_type() {
    let dir = tempfile::tempdir().unwrap();
    let features = ["zip".to_string()];
    let mut categorical = BTreeMap::new();
    categorical.insert("zip".to_string(), vec!["02134".to_string()]);
    let encoding = Encoding {
        categorical,
        label: Some(LabelMap { positive: Some("1.0".into()), classes: None }),
        ..Encoding::default()
    };
    let text = dataset(dir.path(), ColumnType::String, ColumnType::String);
    let (xt, yt) = load_encoded(&text, &features, "y", &encoding).unwrap();
    let numeric = dataset(dir.path(), ColumnType::Int, ColumnType::Float);
    let (xn, yn) = load_encoded(&numeric, &features, "y", &encoding).unwrap();
    // What predict hands the encoding for the cell "02134".
    let mut xp = Vec::new();
    encoding.push_inputs(&features, &[Cell::Number(2134.0)], &mut xp).unwrap();
    assert_eq!(xt.as_slice().unwrap(), &[1.0, 0.0, 0.0], "text party: zip=02134");
    assert_eq!(xp, xt.as_slice().unwrap(), "predict scores the text party's row as (other)");
    assert_eq!(xn, xt, "the int party encodes the same row as (other)");
    assert_eq!(yn, yt, "label \"1.0\": class 1 at the text party, 0 at the float party");
}

/// Both datasets have a `carrier` column; a query that groups by the planes' one and selects
/// the flights' one (not grouped: an error in SQL), or names it bare, is refused rather than
/// answered with the planes' carrier under the flights' name.
#[test]
fn selecting_the_value_sides_column_named_like_the_group_column_is_refused() {
    let mut cats = catalogs();
    let carrier = ColumnInfo {
        name: "carrier".into(),
        ty: ColumnType::String,
        bounds: None,
        domain: Some(vec!["X".into()]),
    };
    cats[1].columns.push(carrier);
    for q in [
        "SELECT f.carrier, COUNT(*) FROM flights f JOIN planes r ON f.tailnum = r.tailnum GROUP BY r.carrier",
        "SELECT carrier, COUNT(*) FROM flights f JOIN planes r ON f.tailnum = r.tailnum GROUP BY r.carrier",
    ] {
        let planned = plan_sql_job(q, &cats, &SqlOptions::default());
        assert!(planned.is_err(), "{q}: planned as {planned:?}");
    }
}
