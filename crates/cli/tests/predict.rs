//! `veil predict` scores a local file with a model file, and refuses files it cannot trust.

// Helpers here read the repository's own files; a panic is the test failing.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use ndarray::{Array1, Array2};
use veil_learning::export::{ModelFile, Provenance};
use veil_learning::model::{Model, ModelSpec};
use veil_learning::train::{
    Examples, LocalSettings, Optimizer, Schedule, Standardizer, train_local,
};

const VEIL: &str = env!("CARGO_BIN_EXE_veil");

fn hospital(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/data/breast_cancer/{name}.csv"))
}

/// A logistic regression trained on hospital A alone, on two named features.
fn model_file() -> ModelFile {
    let features = ["mean_radius", "mean_concave_points"];
    let mut r = csv::Reader::from_path(hospital("hospital_a")).unwrap();
    let h = r.headers().unwrap().clone();
    let at = |n: &str| h.iter().position(|c| c == n).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for rec in r.records() {
        let rec = rec.unwrap();
        x.extend(features.iter().map(|f| rec[at(f)].parse::<f64>().unwrap()));
        y.push(rec[at("target")].parse::<f64>().unwrap());
    }
    let mut x = Array2::from_shape_vec((y.len(), 2), x).unwrap();
    let s = Standardizer::from_moments(&Standardizer::local_moments(x.view())).unwrap();
    s.apply(&mut x).unwrap();
    let data = Examples { x, y: Array1::from(y) };
    let model = Model::from_parameters(ModelSpec::LogisticRegression, 2, vec![0.0; 3]).unwrap();
    let settings = LocalSettings {
        epochs: 30,
        batch_size: 16,
        learning_rate: 0.1,
        schedule: Schedule::Constant,
        optimizer: Optimizer::Sgd { momentum: 0.0 },
        l2: 0.0,
    };
    let u = train_local(&model, &data, &settings, 0.1, 0.0, [3; 32]).unwrap();
    let trained = Model::from_parameters(model.spec.clone(), 2, u.delta).unwrap();
    let names = features.iter().map(|f| f.to_string()).collect();
    ModelFile::new(&trained, names, "target".into(), Some(s), Provenance::default()).unwrap()
}

#[test]
fn scores_another_hospitals_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    std::fs::write(&path, model_file().to_json()).unwrap();
    let out = Command::new(VEIL)
        .args(["predict", "--model"])
        .arg(&path)
        .arg(hospital("hospital_b"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut predicted = csv::Reader::from_reader(&out.stdout[..]);
    assert_eq!(predicted.headers().unwrap(), vec!["prediction", "p_0", "p_1"]);
    let mut truth = csv::Reader::from_path(hospital("hospital_b")).unwrap();
    let target = truth.headers().unwrap().iter().position(|c| c == "target").unwrap();
    let (mut rows, mut right) = (0, 0);
    for (p, t) in predicted.records().zip(truth.records()) {
        let (p, t) = (p.unwrap(), t.unwrap());
        let (p0, p1): (f64, f64) = (p[1].parse().unwrap(), p[2].parse().unwrap());
        assert!((p0 + p1 - 1.0).abs() < 1e-5);
        rows += 1;
        right += usize::from(p[0] == t[target]);
    }
    assert_eq!(rows, 170);
    assert!(right as f64 / rows as f64 > 0.85, "{right} of {rows} right");
}

#[test]
fn missing_columns_and_damaged_models_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    let good = model_file().to_json();
    std::fs::write(&path, &good).unwrap();
    let data = dir.path().join("rows.csv");
    let run = |data: &PathBuf| {
        let out = Command::new(VEIL).args(["predict", "--model"]).arg(&path).arg(data).output();
        let out = out.unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    std::fs::write(&data, "mean_radius,target\n12.0,1\n").unwrap();
    assert!(run(&data).contains("mean_concave_points"), "{}", run(&data));
    std::fs::write(&data, "mean_radius,mean_concave_points\n12.0,\n").unwrap();
    assert!(run(&data).contains("line 2"), "{}", run(&data));
    std::fs::write(&data, "mean_radius,mean_concave_points\n12.0,abc\n").unwrap();
    assert!(run(&data).contains("not a number"), "{}", run(&data));
    std::fs::write(&path, good.replacen("\"inputs\": 2", "\"inputs\": 3", 1)).unwrap();
    std::fs::write(&data, "mean_radius,mean_concave_points\n12.0,0.1\n").unwrap();
    assert!(run(&data).contains("layer shapes"), "{}", run(&data));
}
