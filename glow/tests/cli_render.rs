//! `glow directions` and `glow render` run as a user runs them: on a small
//! CelebA-style folder of generated faces and a tiny model made on the spot.
//! Checks that the directions are the difference of the two attribute means
//! of the training faces, and that a spec file renders with them and its
//! relative input paths, or fails with one clear line.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{photo, save_tiny_model, MODEL_SIZE};
use contract::spec::CELEBA_ATTRIBUTES;
use glow::directions::Directions;
use glow::Glow;
use tch::{Device, Kind, Tensor};

/// Training faces of the generated data set; two more are its test split.
const TRAIN: usize = 10;

/// Index of `Smiling` in CelebA's attribute list.
const SMILING: usize = 31;

/// Writes a CelebA-style folder: `images/`, `list_eval_partition.txt` and
/// `list_attr_celeba.txt`, where face `i` smiles when `i` is even and every
/// other attribute alternates with `i + a`.
fn write_celeba(root: &Path) -> Vec<[i8; 40]> {
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut partitions = String::new();
    let mut attributes = format!("{}\n{}\n", TRAIN + 2, CELEBA_ATTRIBUTES.join(" "));
    let mut labels = Vec::new();
    for i in 0..TRAIN + 2 {
        let name = format!("{:06}.jpg", i + 1);
        photo(i as u32 % 7, 89, 109)
            .save(root.join("images").join(&name))
            .unwrap();
        partitions += &format!("{name} {}\n", if i < TRAIN { 0 } else { 2 });
        let row: [i8; 40] = std::array::from_fn(|a| match a {
            SMILING => {
                if i % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => {
                if (i + a) % 3 == 0 {
                    1
                } else {
                    -1
                }
            }
        });
        let values: Vec<String> = row.iter().map(|v| format!("{v:>2}")).collect();
        attributes += &format!("{name} {}\n", values.join(" "));
        labels.push(row);
    }
    std::fs::write(root.join("list_eval_partition.txt"), partitions).unwrap();
    std::fs::write(root.join("list_attr_celeba.txt"), attributes).unwrap();
    labels
}

fn glow(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glow"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the glow binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn directions_then_an_edit_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let labels = write_celeba(&root.join("celeba"));
    save_tiny_model(&root.join("tiny.safetensors"));

    let out = glow(
        &[
            "directions",
            "--data",
            "celeba",
            "--model",
            "tiny.safetensors",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
        root,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 faces encoded"));
    let table_path = root.join("tiny.directions.safetensors");
    let table = Directions::load(&table_path).unwrap();
    assert_eq!(table.images(), TRAIN as u64);
    assert_eq!(table.counts(SMILING), (5, 5));

    // The Smiling direction by hand: mean latent of smiling training faces
    // minus mean latent of the others.
    let model = Glow::load(root.join("tiny.safetensors"), Device::Cpu).unwrap();
    let faces: Vec<Tensor> = (0..TRAIN)
        .map(|i| {
            let img = image::open(root.join(format!("celeba/images/{:06}.jpg", i + 1))).unwrap();
            glow::data::face_tensor(&img.to_rgb8(), MODEL_SIZE)
        })
        .collect();
    let z = model.encode_images(&Tensor::stack(&faces, 0)).unwrap();
    let mean_of = |smiling: bool| {
        let rows: Vec<i64> = (0..TRAIN)
            .filter(|&i| (labels[i][SMILING] == 1) == smiling)
            .map(|i| i as i64)
            .collect();
        z.index_select(0, &Tensor::from_slice(&rows))
            .mean_dim(0, false, Kind::Float)
    };
    let expected = mean_of(true) - mean_of(false);
    let difference = (table.vector("smiling").unwrap() - &expected)
        .abs()
        .max()
        .double_value(&[]);
    assert!(difference < 1e-4, "max difference {difference}");

    std::fs::create_dir_all(root.join("job")).unwrap();
    std::fs::copy(
        root.join("celeba/images/000011.jpg"),
        root.join("job/face.jpg"),
    )
    .unwrap();
    std::fs::write(
        root.join("job/edit.json"),
        r#"{"version": 1, "operation": {"kind": "edit", "input": "face.jpg",
            "attributes": {"smiling": 1.0, "age": 0.5}}, "output": {"size": 48},
            "alignment": {"skip": true}}"#,
    )
    .unwrap();
    let out = glow(
        &[
            "render",
            "job/edit.json",
            "--out",
            "edited",
            "--model",
            "tiny.safetensors",
            "--device",
            "cpu",
        ],
        root,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        image::open(root.join("edited/result.png")).unwrap().width(),
        48
    );
    let report = std::fs::read_to_string(root.join("edited/report.json")).unwrap();
    assert!(report.contains(&table.model_sha256().to_string()));
}

#[test]
fn render_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save_tiny_model(&root.join("tiny.safetensors"));
    let run = |spec: &str| {
        std::fs::write(root.join("job.json"), spec).unwrap();
        let out = glow(
            &[
                "render",
                "job.json",
                "--out",
                "out",
                "--model",
                "tiny.safetensors",
                "--device",
                "cpu",
            ],
            root,
        );
        assert!(!out.status.success());
        stderr(&out)
    };

    let text = run(
        r#"{"version": 1, "operation": {"kind": "edit", "input": "nothere.jpg", "attributes": {"smiling": 1}}, "colour": 1}"#,
    );
    assert!(
        text.contains("job.json") && text.contains("unknown field `colour`"),
        "{text}"
    );

    let text = run(
        r#"{"version": 1, "operation": {"kind": "mix", "from": "nothere.jpg", "to": "nothere.jpg", "alpha": 0.5}}"#,
    );
    assert!(text.contains("nothere.jpg: cannot read"), "{text}");

    let text = run(
        r#"{"version": 1, "operation": {"kind": "edit", "input": "nothere.jpg", "attributes": {"smiling": 1}}}"#,
    );
    assert!(
        text.contains("needs the model's attribute directions"),
        "{text}"
    );

    let missing_model = glow(
        &[
            "render",
            "job.json",
            "--out",
            "out",
            "--model",
            "absent.safetensors",
        ],
        root,
    );
    assert!(stderr(&missing_model).contains("absent.safetensors: no such model file"));
}
