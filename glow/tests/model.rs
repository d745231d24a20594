//! The model's guarantees: exact invertibility, correct log-determinants,
//! ActNorm initialization, LU 1x1 convolutions and a training signal.

mod support;

use std::collections::BTreeMap;

use glow::flow::actnorm::ActNorm;
use glow::flow::coupling::Coupling as CouplingLayer;
use glow::flow::invconv::InvConv1x1;
use glow::preprocess::{self, Dequantize};
use glow::train::{OptimizerKind, TrainConfig, Trainer};
use glow::{Coupling, Glow, GlowConfig, GlowError, Permutation, Precision};
use support::*;
use tch::{nn, Kind, Tensor};

fn rng() -> glow::flow::InitRng {
    rand::SeedableRng::seed_from_u64(5)
}

fn train_config(steps_lr: f64) -> TrainConfig {
    TrainConfig {
        batch_size: 16,
        optimizer: OptimizerKind::Adam,
        learning_rate: steps_lr,
        warmup_images: 0,
        ..TrainConfig::default()
    }
}

#[test]
fn fresh_additive_coupling_is_the_identity() {
    let vs = nn::VarStore::new(cpu());
    let layer = CouplingLayer::new(&vs.root(), 6, 16, Coupling::Additive, &mut rng());
    let x = Tensor::randn([2, 6, 4, 4], (Kind::Float, cpu()));
    let (y, logdet) = layer.forward(&x, true);
    assert!(y.equal(&x), "a fresh additive coupling changed its input");
    assert_eq!(Vec::<f32>::try_from(logdet).unwrap(), vec![0.0, 0.0]);
    assert!(layer.reverse(&y).equal(&x));
}

#[test]
fn fresh_affine_coupling_scales_by_sigmoid_two() {
    let vs = nn::VarStore::new(cpu());
    let layer = CouplingLayer::new(&vs.root(), 6, 16, Coupling::Affine, &mut rng());
    let x = Tensor::randn([2, 6, 4, 4], (Kind::Float, cpu()));
    let (y, logdet) = layer.forward(&x, true);
    let scale = 1.0 / (1.0 + (-2.0f64).exp());
    assert!(
        y.narrow(1, 0, 3).equal(&x.narrow(1, 0, 3)),
        "the first half must pass unchanged"
    );
    let expected = x.narrow(1, 3, 3) * scale;
    assert!(max_abs_diff(&y.narrow(1, 3, 3), &expected) < 1e-6);
    let want = 3.0 * 16.0 * scale.ln();
    for v in Vec::<f32>::try_from(logdet).unwrap() {
        assert!(
            (f64::from(v) - want).abs() < 1e-4,
            "log-det {v}, expected {want}"
        );
    }
    assert!(max_abs_diff(&layer.reverse(&y), &x) < 1e-6);
}

/// Checks `log p(x) = log N(eps(x)) + log|det d eps / dx|` against the full
/// Jacobian from autograd, in f64, on a 4x4x3 image with every layer
/// perturbed away from its initialization.
fn check_jacobian(coupling: Coupling, permutation: Permutation) {
    let cfg = GlowConfig {
        image_size: 4,
        channels: 3,
        n_bits: 5,
        levels: 2,
        depth: 2,
        width: 8,
        coupling,
        permutation,
        learn_top: true,
    };
    tch::manual_seed(7);
    let mut glow = Glow::with_seed(&cfg, cpu(), 7).unwrap();
    glow.var_store_mut().double();
    let init = Tensor::rand([8, 3, 4, 4], (Kind::Double, cpu())) - 0.5;
    glow.initialize_inputs(&init).unwrap();
    perturb(&glow, 0.05);

    let x = (Tensor::rand([1, 3, 4, 4], (Kind::Double, cpu())) - 0.5).set_requires_grad(true);
    let enc = glow.encode(&x).unwrap();
    let model_ll = (&enc.logdet + &enc.log_prior).double_value(&[0]);
    let eps = Glow::flatten_latents(&enc.latents);
    let d = eps.size()[1];
    assert_eq!(d, 48);

    let rows: Vec<Tensor> = (0..d)
        .map(|i| {
            let g = Tensor::run_backward(&[eps.get(0).get(i)], &[&x], true, false);
            g[0].flatten(0, -1)
        })
        .collect();
    let jacobian = Tensor::stack(&rows, 0);
    let (_, logabsdet) = Tensor::linalg_slogdet(&jacobian);
    let log_normal =
        (eps.detach().square() + (2.0 * std::f64::consts::PI).ln()).sum(Kind::Double) * -0.5;
    let expected = log_normal.double_value(&[]) + logabsdet.double_value(&[]);
    assert!(
        (model_ll - expected).abs() < 1e-9 * expected.abs().max(1.0),
        "{coupling:?}/{permutation:?}: model log p {model_ll} vs Jacobian {expected}"
    );
}

#[test]
fn log_det_matches_the_full_jacobian() {
    check_jacobian(Coupling::Affine, Permutation::Lu);
    check_jacobian(Coupling::Affine, Permutation::Conv);
    check_jacobian(Coupling::Additive, Permutation::Lu);
}

#[test]
fn lu_conv_log_det_is_hw_log_det_w() {
    let vs = nn::VarStore::new(cpu());
    let conv = InvConv1x1::new(&vs.root(), 6, Permutation::Lu, &mut rng());
    tch::no_grad(|| {
        for mut v in vs.trainable_variables() {
            let noise = v.randn_like() * 0.1;
            let _ = v.g_add_(&noise);
        }
    });
    let w = conv.weight().to_kind(Kind::Double);
    let (_, logabsdet) = Tensor::linalg_slogdet(&w);
    let hw = 5.0 * 7.0;
    let got = conv.logdet(hw).double_value(&[]);
    assert!(
        (got - hw * logabsdet.double_value(&[])).abs() < 1e-4,
        "{got}"
    );

    let x = Tensor::randn([2, 6, 5, 7], (Kind::Float, cpu()));
    let y = conv.forward(&x);
    let direct = w
        .to_kind(Kind::Float)
        .matmul(&x.permute([0, 2, 3, 1]).unsqueeze(-1))
        .squeeze_dim(-1)
        .permute([0, 3, 1, 2]);
    assert!(max_abs_diff(&y, &direct) < 1e-5);
    assert!(max_abs_diff(&conv.reverse(&y), &x) < 1e-5);
}

fn variable(glow: &Glow, name: &str) -> Tensor {
    glow.var_store().variables()[name].copy()
}

#[test]
fn lu_permutation_and_signs_stay_fixed_and_reload_exactly() {
    let faces = example_faces(16);
    let cfg = GlowConfig {
        image_size: 16,
        ..small_config(16, Coupling::Affine)
    };
    let mut trainer = Trainer::new(
        Glow::new(&cfg, cpu()).unwrap(),
        train_config(1e-2),
        "test".into(),
    );
    trainer.step(&faces).unwrap();
    let names = [
        "level0.step0.invconv.p",
        "level0.step0.invconv.sign_s",
        "level0.step0.invconv.lower",
    ];
    let before: Vec<Tensor> = names.iter().map(|n| variable(&trainer.glow, n)).collect();
    for _ in 0..3 {
        trainer.step(&faces).unwrap();
    }
    assert!(
        variable(&trainer.glow, names[0]).equal(&before[0]),
        "the permutation changed"
    );
    assert!(
        variable(&trainer.glow, names[1]).equal(&before[1]),
        "the signs changed"
    );
    assert!(
        !variable(&trainer.glow, names[2]).equal(&before[2]),
        "L did not train"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    trainer
        .glow
        .save(&path, Precision::F32, &BTreeMap::new())
        .unwrap();
    let loaded = Glow::load(&path, cpu()).unwrap();
    for (name, v) in trainer.glow.var_store().variables() {
        assert!(
            variable(&loaded, &name).equal(&v),
            "{name} differs after reload"
        );
    }
    let a = trainer.glow.encode_images(&faces).unwrap();
    let b = loaded.encode_images(&faces).unwrap();
    assert!(a.equal(&b), "a reloaded model encodes differently");
}

#[test]
fn actnorm_initializes_once_from_data() {
    let vs = nn::VarStore::new(cpu());
    let norm = ActNorm::new(&vs.root(), 4);
    assert!(!norm.is_initialized());
    let x = Tensor::randn([16, 4, 8, 8], (Kind::Float, cpu())) * 3.0 + 2.0;
    let y = norm.forward(&x, true);
    assert!(norm.is_initialized());
    let dims = [0i64, 2, 3];
    let mean = y.mean_dim(dims.as_slice(), false, Kind::Float);
    let std = (y - &mean.view([1, 4, 1, 1]))
        .square()
        .mean_dim(dims.as_slice(), false, Kind::Float)
        .sqrt();
    assert!(mean.abs().max().double_value(&[]) < 1e-4, "{mean:?}");
    assert!((std - 1.0).abs().max().double_value(&[]) < 1e-4);

    let other = Tensor::randn([16, 4, 8, 8], (Kind::Float, cpu())) * 0.1 - 5.0;
    let y2 = norm.forward(&other, true);
    let expected = norm.forward(&other, false);
    assert!(y2.equal(&expected));
    assert!(
        y2.mean(Kind::Float).abs().double_value(&[]) > 1.0,
        "the second batch re-initialized ActNorm"
    );
}

#[test]
fn loaded_models_never_reinitialize_and_fresh_ones_refuse_to_encode() {
    let faces = example_faces(16);
    let cfg = small_config(16, Coupling::Affine);
    let fresh = Glow::new(&cfg, cpu()).unwrap();
    assert!(matches!(
        fresh.encode_images(&faces),
        Err(GlowError::Uninitialized)
    ));

    fresh.initialize(&faces).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    fresh.save(&path, Precision::F32, &BTreeMap::new()).unwrap();
    let loaded = Glow::load(&path, cpu()).unwrap();
    assert!(loaded.is_initialized());
    let before = variable(&loaded, "level0.step0.actnorm.bias");
    let shifted = (faces.to_kind(Kind::Float) * 0.5).to_kind(Kind::Uint8);
    loaded.initialize(&shifted).unwrap();
    assert!(variable(&loaded, "level0.step0.actnorm.bias").equal(&before));
}

fn round_trip(image_size: i64, coupling: Coupling) {
    let faces = example_faces(image_size);
    let cfg = small_config(image_size, coupling);
    let mut trainer = Trainer::new(
        Glow::new(&cfg, cpu()).unwrap(),
        train_config(2e-3),
        "test".into(),
    );
    for _ in 0..5 {
        trainer.step(&faces).unwrap();
    }
    let glow = &trainer.glow;
    let x = preprocess::to_model_input(&faces, cfg.n_bits, Dequantize::Center, cpu()).unwrap();
    let enc = tch::no_grad(|| glow.encode(&x)).unwrap();
    let back = tch::no_grad(|| glow.decode(&enc.latents)).unwrap();
    let err = max_abs_diff(&back, &x);
    assert!(
        err < 1e-4,
        "{coupling:?} at {image_size}: decode(encode(x)) off by {err}"
    );

    let images = glow
        .decode_images(&glow.encode_images(&faces).unwrap())
        .unwrap();
    let quantized = preprocess::to_images(&x, cfg.n_bits);
    assert!(
        images.equal(&quantized),
        "the images did not come back bin for bin"
    );
}

#[test]
fn decode_inverts_encode_on_faces() {
    for coupling in [Coupling::Affine, Coupling::Additive] {
        for size in [32, 64] {
            round_trip(size, coupling);
        }
    }
}

#[test]
fn training_lowers_bits_per_dim() {
    let faces = example_faces(32);
    let cfg = small_config(32, Coupling::Affine);
    let mut trainer = Trainer::new(
        Glow::new(&cfg, cpu()).unwrap(),
        train_config(2e-3),
        "test".into(),
    );
    let first = trainer.step(&faces).unwrap().bits_per_dim;
    let mut last = first;
    for _ in 0..35 {
        let s = trainer.step(&faces).unwrap();
        assert!(s.bits_per_dim.is_finite() && s.grad_norm.is_finite());
        last = s.bits_per_dim;
    }
    assert!(last < first - 0.3, "bits/dim went from {first} to {last}");
}

#[test]
fn a_nan_stops_training_naming_the_step() {
    let faces = example_faces(16);
    let cfg = small_config(16, Coupling::Affine);
    let mut trainer = Trainer::new(
        Glow::new(&cfg, cpu()).unwrap(),
        train_config(1e-3),
        "test".into(),
    );
    trainer.step(&faces).unwrap();
    trainer.step(&faces).unwrap();
    tch::no_grad(|| {
        let _ = trainer.glow.var_store().variables()["top.logs"]
            .shallow_clone()
            .fill_(f64::NAN);
    });
    let err = trainer.step(&faces).unwrap_err();
    assert!(matches!(err, GlowError::NonFinite { step: 3, .. }), "{err}");
    assert!(err.to_string().contains("step 3"), "{err}");
}

#[test]
fn a_config_mismatch_is_a_clear_error() {
    let faces = example_faces(16);
    let cfg = small_config(16, Coupling::Affine);
    let glow = Glow::new(&cfg, cpu()).unwrap();
    glow.initialize(&faces).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    glow.save(&path, Precision::F16, &BTreeMap::new()).unwrap();
    let other = Glow::new(
        &GlowConfig {
            width: 16,
            ..cfg.clone()
        },
        cpu(),
    )
    .unwrap();
    let file = glow::checkpoint::ModelFile::read(&path).unwrap();
    let err = file.load_into(&other, &path).unwrap_err().to_string();
    assert!(err.contains("width is 32 in the file but 16"), "{err}");
    // The f16 file alone rebuilds its model.
    let reloaded = Glow::load(&path, cpu()).unwrap();
    assert_eq!(reloaded.config(), &cfg);
}
