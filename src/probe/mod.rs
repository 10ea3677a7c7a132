//! The linear probe of MODEL.md §12: organ presence per superpatch tile from a
//! frozen (or fine-tuned) encoder — mean-pooled features → LayerNorm →
//! Linear(E → 8) → BCE — with AUROC and F1 per organ, a report, ROC curves
//! and the validation predictions.

pub mod metrics;
pub mod tiles;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

pub use tiles::{labelled_tiles, VolumeTiles, BTCV_LABELS, ORGANS, PRESENT_VOXELS};

use crate::autograd::{ParamStore, Tape};
use crate::data::{DatasetIndex, Entry};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::io::{Array, ArrayData, TensorFile};
use crate::model::{ModelConfig, Nemesis};
use crate::picture::{line_plot, Axis, PlotSpec, Rgb, Series, PALETTE};
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::Tensor;
use crate::train::{clip_factor, grad_norm, AdamW, AdamWConfig};

/// Settings of one probe run (defaults: MODEL.md §12's recipe).
#[derive(Clone)]
pub struct ProbeOptions {
    pub index: DatasetIndex,
    /// Where the index came from (for the report and the feature cache key).
    pub data_name: String,
    /// The label values a label map may hold (background included).
    pub allowed_labels: Vec<u8>,
    /// A short identity of the encoder weights (file, size, checksum, or the
    /// random-init seed), for the feature cache.
    pub encoder_id: String,
    pub label_fraction: f64,
    pub finetune: bool,
    pub epochs: usize,
    pub eval_every: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    pub out: PathBuf,
    pub device: Option<SharedDevice>,
}

/// Metrics of one evaluation on the validation tiles.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub epoch: usize,
    /// Per organ; `None` where the validation labels hold one class.
    pub auroc: Vec<Option<f64>>,
    pub f1: Vec<f64>,
    pub mean_auroc: Option<f64>,
    pub mean_f1: f64,
    pub scores: Vec<f64>,
}

pub struct ProbeReport {
    pub last: Evaluation,
    pub best: Evaluation,
    pub train_tiles: usize,
    pub val_tiles: usize,
    pub out: PathBuf,
}

fn evaluate(epoch: usize, logits: &[f32], labels: &[u8]) -> Evaluation {
    let k = ORGANS.len();
    let scores: Vec<f64> = logits.iter().map(|&z| 1.0 / (1.0 + (-(z as f64)).exp())).collect();
    let col = |v: &[f64], o: usize| v.iter().skip(o).step_by(k).copied().collect::<Vec<f64>>();
    let lab = |o: usize| labels.iter().skip(o).step_by(k).copied().collect::<Vec<u8>>();
    let auroc: Vec<Option<f64>> = (0..k).map(|o| metrics::auroc(&col(&scores, o), &lab(o))).collect();
    let f1: Vec<f64> = (0..k).map(|o| metrics::f1(&col(&scores, o), &lab(o), 0.5)).collect();
    let defined: Vec<f64> = auroc.iter().flatten().copied().collect();
    Evaluation {
        epoch,
        mean_auroc: (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64),
        mean_f1: f1.iter().sum::<f64>() / k as f64,
        auroc,
        f1,
        scores,
    }
}

/// Binary cross-entropy on logits, averaged over every value, and its
/// gradient with respect to the logits.
fn bce(logits: &[f32], labels: &[u8]) -> (f64, Vec<f32>) {
    let n = logits.len().max(1) as f64;
    let mut loss = 0.0;
    let grad = logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| {
            let (z, y) = (z as f64, y as f64);
            loss += z.max(0.0) - z * y + (1.0 + (-z.abs()).exp()).ln();
            ((1.0 / (1.0 + (-z).exp()) - y) / n) as f32
        })
        .collect();
    (loss / n, grad)
}

/// The head's parameters: LayerNorm(E) (ones, zeros) and Linear(E → 8)
/// (truncated normal, std 0.02; bias zero), added to `store`.
fn add_head(store: &mut ParamStore, e: usize, seed: u64) -> Result<()> {
    let k = ORGANS.len();
    let mut w = vec![0f32; k * e];
    RngStream::new(seed, stream_id(Purpose::Init, 0, 0xE0)).fill_normal(0, &mut w);
    w.iter_mut().for_each(|v| *v = (*v * 0.02).clamp(-2.0, 2.0));
    store.add("probe.norm.weight", Tensor::from_vec(vec![1f32; e], [e])?)?;
    store.add("probe.norm.bias", Tensor::zeros([e], crate::tensor::DType::F32))?;
    store.add("probe.head.weight", Tensor::from_vec(w, [k, e])?)?;
    store.add("probe.head.bias", Tensor::zeros([k], crate::tensor::DType::F32))?;
    Ok(())
}

fn head(tape: &Tape, store: &ParamStore, pooled: &crate::autograd::Var) -> Result<crate::autograd::Var> {
    let p = |name: &str| -> Result<crate::autograd::Var> {
        let id = store
            .id(name)
            .ok_or_else(|| Error::invalid("probe", format!("parameter `{name}` is missing")))?;
        Ok(tape.param(store, id))
    };
    let x = tape.layer_norm(pooled, &p("probe.norm.weight")?, &p("probe.norm.bias")?, 1e-5)?;
    tape.linear(&x, &p("probe.head.weight")?, Some(&p("probe.head.bias")?))
}

/// Mean-pooled encoder features (`count × E`) of `values` (`count` tiles of
/// `size`), `batch` tiles at a time, at inference.
pub fn encode_pooled(
    model: &Nemesis,
    store: &ParamStore,
    values: &[f32],
    count: usize,
    batch: usize,
    label: &str,
) -> Result<Vec<f32>> {
    let [d, h, w] = model.config().superpatch_size;
    let per = d * h * w;
    let mut out = Vec::with_capacity(count * model.config().embed_dim);
    let mut progress = crate::progress::Progress::new(label, count as u64);
    for first in (0..count).step_by(batch.max(1)) {
        let b = batch.min(count - first);
        let x = Tensor::from_vec(values[first * per..(first + b) * per].to_vec(), [b, 1, d, h, w])?;
        let tape = Tape::inference();
        let f = model.encode(&tape, store, &x)?;
        let pooled = tape.mean(&f, 1)?;
        out.extend_from_slice(pooled.value().to_cpu()?.cpu_slice::<f32>()?);
        progress.add(b as u64, "tiles encoded");
    }
    progress.finish();
    Ok(out)
}

/// Tiles of a split: per volume, its tiles and labels.
struct Split {
    values: Vec<f32>,
    labels: Vec<u8>,
    volume: Vec<usize>,
}

fn read_split(entries: &[Entry], size: [usize; 3], allowed: &[u8], what: &str) -> Result<Split> {
    let mut s = Split {
        values: Vec::new(),
        labels: Vec::new(),
        volume: Vec::new(),
    };
    let t0 = Instant::now();
    for (v, e) in entries.iter().enumerate() {
        let t = labelled_tiles(e, size, allowed)?;
        s.values.extend_from_slice(&t.values);
        s.labels.extend_from_slice(&t.labels);
        s.volume.extend(std::iter::repeat_n(v, t.count));
        eprintln!(
            "probe: {what} volume {}/{}: {} tiles ({:.1} s)",
            v + 1,
            entries.len(),
            t.count,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(s)
}

/// `0..n` in a seeded order (Fisher–Yates on Philox draws).
fn shuffled(n: usize, rng: RngStream) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((rng.bits(i as u64) as u64 * (i as u64 + 1)) >> 32) as usize;
        order.swap(i, j);
    }
    order
}

/// `max(1, ⌊n·f⌋)` of `n` training volumes, drawn by a seeded shuffle.
pub fn label_subset(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    let keep = ((n as f64 * fraction).floor() as usize).clamp(1, n.max(1));
    let rng = RngStream::new(seed, stream_id(Purpose::Shuffle, 0, 0xF7));
    let order = shuffled(n, rng);
    let mut kept = order[..keep.min(n)].to_vec();
    kept.sort_unstable();
    kept
}

/// Training features, labels and volume of each tile; validation features and labels.
type Features = (Vec<f32>, Vec<u8>, Vec<usize>, Vec<f32>, Vec<u8>);

/// Frozen features of both splits, from `<out>/features.safetensors` when it
/// was made for the same encoder, data and tile size.
fn features(o: &ProbeOptions, model: &Nemesis, store: &ParamStore) -> Result<Features> {
    let c = model.config();
    let key = format!(
        "{}|{}|{:?}|{:?}|{}",
        o.encoder_id, o.data_name, c.superpatch_size, o.allowed_labels, c.embed_dim
    );
    let path = o.out.join("features.safetensors");
    if let Ok(f) = TensorFile::read(&path) {
        if f.metadata.get("key") == Some(&key) {
            let get_f32 = |n: &str| -> Result<Vec<f32>> {
                match &f.get(n)?.data {
                    ArrayData::F32(v) => Ok(v.clone()),
                    _ => Err(Error::format(&path, format!("`{n}` is not F32"))),
                }
            };
            let get_u8 = |n: &str| -> Result<Vec<u8>> {
                match &f.get(n)?.data {
                    ArrayData::U8(v) => Ok(v.clone()),
                    _ => Err(Error::format(&path, format!("`{n}` is not U8"))),
                }
            };
            let vol = match &f.get("train_volume")?.data {
                ArrayData::I64(v) => v.iter().map(|&x| x as usize).collect(),
                _ => return Err(Error::format(&path, "`train_volume` is not I64")),
            };
            eprintln!("probe: frozen features from {}", path.display());
            return Ok((
                get_f32("train_features")?,
                get_u8("train_labels")?,
                vol,
                get_f32("val_features")?,
                get_u8("val_labels")?,
            ));
        }
    }
    let t0 = Instant::now();
    let mut splits = Vec::new();
    for (entries, what) in [(&o.index.training, "training"), (&o.index.validation, "validation")] {
        let s = read_split(entries, c.superpatch_size, &o.allowed_labels, what)?;
        let count = s.volume.len();
        let f = encode_pooled(
            model,
            store,
            &s.values,
            count,
            4,
            &format!("probe: encoding {what} tiles"),
        )?;
        eprintln!(
            "probe: encoded {count} {what} tiles ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        splits.push((f, s.labels, s.volume));
    }
    let (vf, vl, _) = splits.pop().unwrap_or_default();
    let (tf, tl, tv) = splits.pop().unwrap_or_default();
    let (e, k) = (c.embed_dim, ORGANS.len());
    let mut arrays = BTreeMap::new();
    let arr = |shape: Vec<usize>, data: ArrayData| Array { shape, data };
    arrays.insert(
        "train_features".into(),
        arr(vec![tv.len(), e], ArrayData::F32(tf.clone())),
    );
    arrays.insert("train_labels".into(), arr(vec![tv.len(), k], ArrayData::U8(tl.clone())));
    arrays.insert(
        "train_volume".into(),
        arr(vec![tv.len()], ArrayData::I64(tv.iter().map(|&v| v as i64).collect())),
    );
    arrays.insert(
        "val_features".into(),
        arr(vec![vl.len() / k, e], ArrayData::F32(vf.clone())),
    );
    arrays.insert(
        "val_labels".into(),
        arr(vec![vl.len() / k, k], ArrayData::U8(vl.clone())),
    );
    let mut meta = HashMap::new();
    meta.insert("key".to_string(), key);
    TensorFile::write(&path, &meta, &arrays)?;
    Ok((tf, tl, tv, vf, vl))
}

/// Runs the probe; writes report.json, report.md, roc.png and
/// predictions.safetensors into `o.out`.
pub fn run(o: &ProbeOptions, config: ModelConfig, encoder: ParamStore) -> Result<ProbeReport> {
    if o.index.training.is_empty() || o.index.validation.is_empty() {
        return Err(Error::invalid(
            "probe",
            "the index needs training and validation volumes (with label maps)",
        ));
    }
    if !(o.label_fraction > 0.0 && o.label_fraction <= 1.0) {
        return Err(Error::invalid("--label-fraction", "must be in (0, 1]"));
    }
    if o.epochs == 0 || o.batch == 0 || o.eval_every == 0 {
        return Err(Error::invalid(
            "probe",
            "--epochs, --batch and --eval-every must be at least 1",
        ));
    }
    crate::model::check_fits(
        &config,
        o.batch,
        if o.finetune {
            crate::model::Pass::Train
        } else {
            crate::model::Pass::Infer
        },
        o.device.as_ref(),
        &format!("encoding {} superpatches at once", o.batch),
        "lower --batch",
    )?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let start = Instant::now();
    let model = Nemesis::new(config.clone())?;
    let e = config.embed_dim;
    let k = ORGANS.len();
    let kept_volumes = label_subset(o.index.training.len(), o.label_fraction, o.seed);

    // The encoder (and, fine-tuning, the head) on the chosen device.
    let place = |s: ParamStore| -> Result<ParamStore> {
        match &o.device {
            Some(d) => s.to_device(d),
            None => Ok(s),
        }
    };
    let (mut store, train_x, train_y, val_x, val_y, tiles) = if o.finetune {
        let train = read_split(&o.index.training, config.superpatch_size, &o.allowed_labels, "training")?;
        let val = read_split(
            &o.index.validation,
            config.superpatch_size,
            &o.allowed_labels,
            "validation",
        )?;
        let mut s = encoder;
        add_head(&mut s, e, o.seed)?;
        let keep: Vec<usize> = (0..train.volume.len())
            .filter(|&t| kept_volumes.contains(&train.volume[t]))
            .collect();
        (
            place(s)?,
            Vec::new(),
            train.labels,
            Vec::new(),
            val.labels,
            Some((train.values, val.values, keep)),
        )
    } else {
        let enc = place(encoder)?;
        let (tx, ty, tv, vx, vy) = features(o, &model, &enc)?;
        let keep: Vec<usize> = (0..tv.len()).filter(|&t| kept_volumes.contains(&tv[t])).collect();
        let x: Vec<f32> = keep
            .iter()
            .flat_map(|&t| tx[t * e..(t + 1) * e].iter().copied())
            .collect();
        let y: Vec<u8> = keep
            .iter()
            .flat_map(|&t| ty[t * k..(t + 1) * k].iter().copied())
            .collect();
        let mut s = ParamStore::new();
        add_head(&mut s, e, o.seed)?;
        (s, x, y, vx, vy, None)
    };
    let feature_secs = start.elapsed().as_secs_f64();
    let n_train = match &tiles {
        Some((_, _, keep)) => keep.len(),
        None => train_x.len() / e,
    };
    let n_val = val_y.len() / k;
    if n_train == 0 {
        return Err(Error::invalid("probe", "no training tiles"));
    }
    let mut opt = AdamW::new(
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-5,
        },
        &store,
    );
    let [d, h, w] = config.superpatch_size;
    let per = d * h * w;
    // Pooled features of a batch of training tiles (rows `idx`), on the tape.
    let pooled = |tape: &Tape, store: &ParamStore, idx: &[usize], train: bool| -> Result<crate::autograd::Var> {
        match &tiles {
            Some((tv, vv, keep)) => {
                let (src, rows): (&Vec<f32>, Vec<usize>) = if train {
                    (tv, idx.iter().map(|&i| keep[i]).collect())
                } else {
                    (vv, idx.to_vec())
                };
                let v: Vec<f32> = rows
                    .iter()
                    .flat_map(|&t| src[t * per..(t + 1) * per].iter().copied())
                    .collect();
                let x = Tensor::from_vec(v, [rows.len(), 1, d, h, w])?;
                let f = model.encode(tape, store, &x)?;
                tape.mean(&f, 1)
            }
            None => {
                let src = if train { &train_x } else { &val_x };
                let v: Vec<f32> = idx
                    .iter()
                    .flat_map(|&t| src[t * e..(t + 1) * e].iter().copied())
                    .collect();
                let x = Tensor::from_vec(v, [idx.len(), e])?;
                let x = match store.shared_device() {
                    Some(dev) => x.to_device(&dev)?,
                    None => x,
                };
                Ok(tape.constant(x))
            }
        }
    };
    let labels_of = |idx: &[usize], train: bool| -> Vec<u8> {
        idx.iter()
            .flat_map(|&i| {
                let t = match (&tiles, train) {
                    (Some((_, _, keep)), true) => keep[i],
                    _ => i,
                };
                let src = if train { &train_y } else { &val_y };
                src[t * k..(t + 1) * k].to_vec()
            })
            .collect()
    };
    let val_logits = |store: &ParamStore| -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(n_val * k);
        let all: Vec<usize> = (0..n_val).collect();
        for chunk in all.chunks(o.batch.max(4)) {
            let tape = Tape::inference();
            let x = pooled(&tape, store, chunk, false)?;
            out.extend_from_slice(head(&tape, store, &x)?.value().to_cpu()?.cpu_slice::<f32>()?);
        }
        Ok(out)
    };

    let mut history = Vec::new();
    let mut evals: Vec<Evaluation> = Vec::new();
    let train_start = Instant::now();
    for epoch in 0..o.epochs {
        // Cosine annealing per epoch from lr to 1e-6 (MODEL.md §12).
        let lr = 1e-6 + (o.lr - 1e-6) * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / o.epochs as f64).cos());
        let rng = RngStream::new(o.seed, stream_id(Purpose::Shuffle, epoch as u64, 0xF8));
        let order = shuffled(n_train, rng);
        let mut loss_sum = 0.0;
        for idx in order.chunks(o.batch) {
            let tape = Tape::new();
            let x = pooled(&tape, &store, idx, true)?;
            let logits = head(&tape, &store, &x)?;
            let z = logits.value().to_cpu()?.to_vec::<f32>()?;
            let (loss, grad) = bce(&z, &labels_of(idx, true));
            if !loss.is_finite() {
                return Err(Error::invalid(
                    "probe",
                    format!("the loss became {loss} in epoch {}", epoch + 1),
                ));
            }
            loss_sum += loss * idx.len() as f64;
            let mut seed = Tensor::from_vec(grad, [idx.len(), k])?;
            if let Some(dev) = logits.value().shared_device() {
                seed = seed.to_device(&dev)?;
            }
            tape.backward_with(&logits, seed, &mut store)?;
            let norm = grad_norm(&store)?;
            opt.update_clipped(&mut store, lr, clip_factor(norm, 1.0))?;
            store.zero_grad();
        }
        let mean_loss = loss_sum / n_train as f64;
        let done = epoch + 1;
        if done % o.eval_every == 0 || done == o.epochs {
            let ev = evaluate(done, &val_logits(&store)?, &val_y);
            eprintln!(
                "probe: epoch {done}/{}: loss {mean_loss:.4}, validation mean AUROC {}, mean F1 {:.4} ({:.1} s)",
                o.epochs,
                ev.mean_auroc
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_else(|| "undefined".into()),
                ev.mean_f1,
                train_start.elapsed().as_secs_f64()
            );
            evals.push(ev);
        }
        history.push(json!({"epoch": done, "loss": mean_loss, "lr": lr}));
    }
    let train_secs = train_start.elapsed().as_secs_f64();
    let last = evals
        .last()
        .cloned()
        .ok_or_else(|| Error::invalid("probe", "no evaluation ran"))?;
    let best = evals
        .iter()
        .filter(|e| e.mean_auroc.is_some())
        .max_by(|a, b| {
            a.mean_auroc
                .partial_cmp(&b.mean_auroc)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned()
        .unwrap_or_else(|| last.clone());

    // --- outputs ---
    let organ_rows: Vec<serde_json::Value> = ORGANS
        .iter()
        .enumerate()
        .map(|(i, (name, code))| {
            let positives = val_y.iter().skip(i).step_by(k).filter(|&&l| l != 0).count();
            json!({"organ": name, "label": code, "auroc": last.auroc[i], "f1": last.f1[i],
                   "validation_positives": positives, "validation_tiles": n_val})
        })
        .collect();
    let report = json!({
        "settings": {
            "data": o.data_name, "encoder": o.encoder_id, "label_fraction": o.label_fraction,
            "training_volumes": kept_volumes.len(), "training_volumes_total": o.index.training.len(),
            "finetune": o.finetune, "epochs": o.epochs, "batch": o.batch, "lr": o.lr, "seed": o.seed,
            "tile": config.superpatch_size, "present_voxels": PRESENT_VOXELS,
        },
        "train_tiles": n_train, "val_tiles": n_val,
        "last": {"epoch": last.epoch, "mean_auroc": last.mean_auroc, "mean_f1": last.mean_f1, "organs": organ_rows},
        "best_on_validation": {"epoch": best.epoch, "mean_auroc": best.mean_auroc, "mean_f1": best.mean_f1,
            "note": "chosen on the set it is scored on, as the public trainer does"},
        "evaluations": evals.iter().map(|e| json!({"epoch": e.epoch, "mean_auroc": e.mean_auroc, "mean_f1": e.mean_f1})).collect::<Vec<_>>(),
        "history": history,
        "seconds": {"features": feature_secs, "training": train_secs},
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid("probe", e.to_string()))?;
    crate::io::write_atomic(&o.out.join("report.json"), text.as_bytes())?;
    crate::io::write_atomic(
        &o.out.join("report.md"),
        markdown(o, &last, &best, n_train, n_val, &val_y).as_bytes(),
    )?;
    roc_png(&o.out.join("roc.png"), &last, &val_y)?;
    let mut arrays = BTreeMap::new();
    arrays.insert(
        "scores".to_string(),
        Array {
            shape: vec![n_val, k],
            data: ArrayData::F32(last.scores.iter().map(|&s| s as f32).collect()),
        },
    );
    arrays.insert(
        "labels".to_string(),
        Array {
            shape: vec![n_val, k],
            data: ArrayData::U8(val_y.clone()),
        },
    );
    let mut meta = HashMap::new();
    meta.insert(
        "organs".to_string(),
        ORGANS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(","),
    );
    TensorFile::write(&o.out.join("predictions.safetensors"), &meta, &arrays)?;
    Ok(ProbeReport {
        last,
        best,
        train_tiles: n_train,
        val_tiles: n_val,
        out: o.out.clone(),
    })
}

fn fmt_auroc(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "undefined".into())
}

fn markdown(
    o: &ProbeOptions,
    last: &Evaluation,
    best: &Evaluation,
    n_train: usize,
    n_val: usize,
    val_y: &[u8],
) -> String {
    let k = ORGANS.len();
    let mut s = format!(
        "# Linear probe\n\nEncoder: {} ({}). Data: {}. {} training tiles (label fraction {}), {} validation tiles, {} epochs.\n\n",
        o.encoder_id,
        if o.finetune { "fine-tuned" } else { "frozen" },
        o.data_name,
        n_train,
        o.label_fraction,
        n_val,
        o.epochs
    );
    s += &format!(
        "Last evaluation (epoch {}):\n\n| organ | AUROC | F1 | positive validation tiles |\n|---|---|---|---|\n",
        last.epoch
    );
    for (i, (name, _)) in ORGANS.iter().enumerate() {
        let pos = val_y.iter().skip(i).step_by(k).filter(|&&l| l != 0).count();
        s += &format!(
            "| {name} | {} | {:.4} | {pos} / {n_val} |\n",
            fmt_auroc(last.auroc[i]),
            last.f1[i]
        );
    }
    s += &format!(
        "| **mean** | **{}** | **{:.4}** | |\n\nBest mean AUROC over the evaluations (epoch {}, chosen on the validation set it is scored on): {}, mean F1 {:.4}.\n",
        fmt_auroc(last.mean_auroc),
        last.mean_f1,
        best.epoch,
        fmt_auroc(best.mean_auroc),
        best.mean_f1
    );
    s
}

/// One ROC curve per organ (undefined organs left out).
fn roc_png(path: &Path, last: &Evaluation, val_y: &[u8]) -> Result<()> {
    let k = ORGANS.len();
    let mut series = Vec::new();
    for (i, (name, _)) in ORGANS.iter().enumerate() {
        let scores: Vec<f64> = last.scores.iter().skip(i).step_by(k).copied().collect();
        let labels: Vec<u8> = val_y.iter().skip(i).step_by(k).copied().collect();
        let curve = metrics::roc_curve(&scores, &labels);
        if curve.is_empty() {
            continue;
        }
        series.push(Series::new(
            format!("{name} {}", fmt_auroc(last.auroc[i])),
            PALETTE[i],
            Axis::Left,
            curve,
        ));
    }
    series.push(Series::new(
        "chance",
        Rgb(150, 150, 150),
        Axis::Left,
        vec![(0.0, 0.0), (1.0, 1.0)],
    ));
    let spec = PlotSpec {
        title: format!("organ presence ROC, mean AUROC {}", fmt_auroc(last.mean_auroc)),
        x_label: "false-positive rate".into(),
        left_label: "true-positive rate".into(),
        series,
        width: 720,
        height: 600,
        ..PlotSpec::default()
    };
    line_plot(&spec)?.save_png(path)?;
    Ok(())
}
