//! Whole-scan prediction and evaluation (SPEC §14): sliding windows over a
//! scan of any size, the label map written back in the scan's own voxel
//! order and affine, and per-class Dice and HD95 over a labelled dataset
//! with a report and a picture.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checkpoint::SegCheckpoint;
use super::data::{check_fits_window, read_labelled, ClassTable, LabelledVolume};
use super::metrics::{dice, hd95};
use super::model::SegModel;
use super::picture::overlay_png;
use super::window::predict_classes;
use crate::data::{hu_window, read_volume, write_label_map_like, Entry, Volume};
use crate::error::{Error, Result};
use crate::io::write_atomic;

/// A loaded model ready to predict.
pub struct Predictor {
    pub model: SegModel,
    pub ck: SegCheckpoint,
    /// Windows per forward pass.
    pub batch: usize,
}

impl Predictor {
    pub fn new(ck: SegCheckpoint, batch: usize) -> Result<Self> {
        Ok(Predictor {
            model: SegModel::new(ck.config.clone())?,
            ck,
            batch,
        })
    }

    /// The class table: the checkpoint's, or class k = label value k.
    pub fn classes(&self) -> ClassTable {
        self.ck.classes.clone().unwrap_or_else(|| ClassTable {
            values: (0..self.ck.config.num_classes).map(|k| k as u8).collect(),
            names: (0..self.ck.config.num_classes)
                .map(|k| {
                    if k == 0 {
                        "background".into()
                    } else {
                        format!("class {k}")
                    }
                })
                .collect(),
        })
    }

    fn window(&self) -> [usize; 3] {
        self.ck.config.encoder.superpatch_size
    }

    /// The class of every voxel of windowed `image`.
    pub fn classes_of(&self, image: &[f32], shape: [usize; 3], label: &str) -> Result<Vec<u8>> {
        predict_classes(
            &self.model,
            &self.ck.store,
            &self.ck.stats,
            image,
            shape,
            self.batch,
            label,
        )
    }

    /// Reads a scan (NIfTI or a DICOM series folder) and predicts it:
    /// the volume and each voxel's class.
    pub fn predict_scan(&self, scan: &Path) -> Result<(Volume, Vec<f32>, Vec<u8>)> {
        let v = read_volume(scan)?;
        v.check_ct_range()?;
        check_fits_window(&scan.display().to_string(), v.shape, self.window())?;
        let image: Vec<f32> = v.hu.iter().map(|&h| hu_window(h)).collect();
        let classes = self.classes_of(&image, v.shape, "segment predict")?;
        Ok((v, image, classes))
    }
}

/// Class indices to the dataset's label values.
pub fn label_values(classes: &[u8], table: &ClassTable) -> Vec<u8> {
    classes.iter().map(|&c| table.values[c as usize]).collect()
}

/// Writes `classes` of a scan read as `v` as a label map lying on it.
pub fn write_prediction(path: &Path, v: &Volume, classes: &[u8], table: &ClassTable) -> Result<()> {
    write_label_map_like(path, &label_values(classes, table), v.shape, &v.info)
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub label: u8,
    /// `None` where neither map holds the class.
    pub dice: Option<f64>,
    /// mm; `None` where either map lacks the class.
    pub hd95: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VolumeScore {
    pub image: String,
    pub prediction: String,
    pub classes: Vec<ClassScore>,
    pub mean_dice: Option<f64>,
    pub mean_hd95: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub volumes: Vec<VolumeScore>,
    /// Per class over volumes (where defined).
    pub classes: Vec<ClassScore>,
    pub mean_dice: Option<f64>,
    pub mean_hd95: Option<f64>,
}

fn mean(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let d: Vec<f64> = v.flatten().collect();
    (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
}

/// Scores of each foreground class between two class maps.
pub fn score(pred: &[u8], truth: &[u8], v: &LabelledVolume, table: &ClassTable) -> Vec<ClassScore> {
    (1..table.len())
        .map(|k| ClassScore {
            class: table.names[k].clone(),
            label: table.values[k],
            dice: dice(pred, truth, k as u8),
            hd95: hd95(pred, truth, k as u8, v.shape, v.spacing),
        })
        .collect()
}

/// Predicts every entry, writes each label map into `out/labels/`, scores
/// it against its truth, and writes report.json, report.md and
/// overlay.png (the first volume).
pub fn evaluate(p: &Predictor, entries: &[Entry], model_name: &str, data_name: &str, out: &Path) -> Result<EvalReport> {
    let table = p.classes();
    std::fs::create_dir_all(out.join("labels")).map_err(|e| Error::io(out, e))?;
    let mut volumes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let v = read_labelled(e, &table, p.window())?;
        let pred = p.classes_of(&v.image, v.shape, &format!("segment eval {}/{}", i + 1, entries.len()))?;
        let stem = v.name.trim_end_matches(".gz").trim_end_matches(".nii").to_string();
        let rel = PathBuf::from("labels").join(format!("{stem}.nii.gz"));
        write_label_map_like(&out.join(&rel), &label_values(&pred, &table), v.shape, &v.info)?;
        if i == 0 {
            overlay_png(&out.join("overlay.png"), &v.image, &pred, Some(&v.classes), v.shape)?;
        }
        let classes = score(&pred, &v.classes, &v, &table);
        volumes.push(VolumeScore {
            image: e.image.display().to_string(),
            prediction: rel.display().to_string(),
            mean_dice: mean(classes.iter().map(|c| c.dice)),
            mean_hd95: mean(classes.iter().map(|c| c.hd95)),
            classes,
        });
        eprintln!(
            "segment eval: {} mean Dice {}",
            v.name,
            volumes[i]
                .mean_dice
                .map(|d| format!("{d:.4}"))
                .unwrap_or_else(|| "undefined".into())
        );
    }
    let classes: Vec<ClassScore> = (1..table.len())
        .map(|k| ClassScore {
            class: table.names[k].clone(),
            label: table.values[k],
            dice: mean(volumes.iter().map(|v| v.classes[k - 1].dice)),
            hd95: mean(volumes.iter().map(|v| v.classes[k - 1].hd95)),
        })
        .collect();
    let report = EvalReport {
        model: model_name.to_string(),
        data: data_name.to_string(),
        mean_dice: mean(classes.iter().map(|c| c.dice)),
        mean_hd95: mean(classes.iter().map(|c| c.hd95)),
        classes,
        volumes,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid("report", e.to_string()))?;
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    write_atomic(&out.join("report.md"), markdown(&report).as_bytes())?;
    Ok(report)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into())
}

fn markdown(r: &EvalReport) -> String {
    let mut s = format!(
        "# Segmentation evaluation\n\nModel `{}` on `{}`: {} volume{}. Mean Dice **{}**, mean HD95 **{} mm** \
         (over the classes where each is defined; background left out).\n\n| class | label | Dice | HD95 (mm) |\n|---|---|---|---|\n",
        r.model,
        r.data,
        r.volumes.len(),
        if r.volumes.len() == 1 { "" } else { "s" },
        fmt(r.mean_dice, 4),
        fmt(r.mean_hd95, 2)
    );
    for c in &r.classes {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            c.class,
            c.label,
            fmt(c.dice, 4),
            fmt(c.hd95, 2)
        );
    }
    s += "\n| volume | prediction | mean Dice | mean HD95 (mm) |\n|---|---|---|---|\n";
    for v in &r.volumes {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            v.image,
            v.prediction,
            fmt(v.mean_dice, 4),
            fmt(v.mean_hd95, 2)
        );
    }
    s += "\nA class absent from both maps has no Dice; a class absent from either has no HD95 (shown –).\n";
    s
}
