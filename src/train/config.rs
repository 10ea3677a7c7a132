//! The run configuration: the model (a preset or explicit keys) and the
//! recipe of MODEL.md §11. Read from JSON or TOML; flags override; the effective
//! configuration is printed and saved with the run.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub lr: f64,
    pub min_lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub clip: f64,
    pub batch: usize,
    pub accum: usize,
    /// Epochs of one crop per training volume (MODEL.md §11); ignored when `steps` is set.
    pub epochs: u64,
    pub steps: Option<u64>,
    pub warmup_epochs: f64,
    pub lr_schedule: LrSchedule,
    pub noise_levels: Vec<f64>,
    pub seed: u64,
    /// Validate (and checkpoint) every this many optimizer steps.
    pub val_every: u64,
    /// Fixed validation superpatches.
    pub val_superpatches: usize,
    /// Checkpoints kept besides the best.
    pub keep_last: usize,
    pub crops_per_volume: usize,
    pub loader_threads: usize,
    /// A metrics line on stderr every this many steps when not on a terminal.
    pub log_every: u64,
}

/// More loader threads than this would only contend for the same disk.
pub const MAX_LOADER_THREADS: usize = 256;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelConfig::paper(),
            lr: 1e-4,
            min_lr: 1e-6,
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.05,
            clip: 1.0,
            batch: 4,
            accum: 1,
            epochs: 50,
            steps: None,
            warmup_epochs: 5.0,
            lr_schedule: LrSchedule::Recipe,
            noise_levels: vec![0.0, 0.01, 0.03, 0.05],
            seed: 42,
            val_every: 100,
            val_superpatches: 8,
            keep_last: 3,
            crops_per_volume: 1,
            loader_threads: 1,
            log_every: 10,
        }
    }
}

impl TrainConfig {
    /// The optimizer's settings of this recipe.
    pub fn adamw(&self) -> super::AdamWConfig {
        super::AdamWConfig {
            betas: (self.betas[0], self.betas[1]),
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// The recipe with a preset's model.
    pub fn with_preset(name: &str) -> Result<Self> {
        Ok(TrainConfig {
            model: ModelConfig::preset(name)?,
            ..Self::default()
        })
    }

    /// Reads a JSON or TOML file (by extension). `"preset": NAME` picks the
    /// base model; `"model": {...}` overrides its keys; the other keys are
    /// the recipe's.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        let mut v: Value = if is_toml {
            let t: toml::Value = toml::from_str(&text).map_err(|e| Error::format(path, format!("not TOML ({e})")))?;
            serde_json::to_value(t).map_err(|e| Error::format(path, e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON ({e})")))?
        };
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::format(path, "must be an object/table"))?;
        let base = match obj.remove("preset") {
            Some(Value::String(p)) => ModelConfig::preset(&p).map_err(|e| Error::format(path, e.to_string()))?,
            Some(_) => return Err(Error::format(path, "`preset` must be a name")),
            None => ModelConfig::paper(),
        };
        let mut model = serde_json::to_value(&base).map_err(|e| Error::format(path, e.to_string()))?;
        if let Some(over) = obj.remove("model") {
            let Value::Object(over) = over else {
                return Err(Error::format(path, "`model` must be an object/table"));
            };
            for (k, val) in over {
                model[k] = val;
            }
        }
        obj.insert("model".into(), model);
        let c: TrainConfig = serde_json::from_value(v).map_err(|e| Error::format(path, e.to_string()))?;
        c.validate().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(c)
    }

    /// Every key checked where it enters: a NaN, an infinity or a value out
    /// of range is refused here, naming the key, rather than found steps later.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |m: String| Err(Error::Config(m));
        let finite = |name: &str, v: f64| -> Result<()> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::Config(format!("{name} must be a finite number, got {v}")))
            }
        };
        for (name, v) in [
            ("lr", self.lr),
            ("min_lr", self.min_lr),
            ("betas[0]", self.betas[0]),
            ("betas[1]", self.betas[1]),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("clip", self.clip),
            ("warmup_epochs", self.warmup_epochs),
        ] {
            finite(name, v)?;
        }
        for (k, s) in self.noise_levels.iter().enumerate() {
            finite(&format!("noise_levels[{k}]"), *s)?;
        }
        if self.batch == 0 || self.accum == 0 || self.crops_per_volume == 0 {
            return bad("batch, accum and crops_per_volume must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 ≤ min_lr ≤ lr and lr > 0 (lr {}, min_lr {})",
                self.lr, self.min_lr
            ));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) || self.eps <= 0.0 || self.weight_decay < 0.0 {
            return bad(format!(
                "betas must be in [0, 1), eps > 0, weight_decay ≥ 0 (betas {:?}, eps {}, weight_decay {})",
                self.betas, self.eps, self.weight_decay
            ));
        }
        if self.clip <= 0.0 {
            return bad(format!("clip must be > 0, got {}", self.clip));
        }
        if self.warmup_epochs < 0.0 {
            return bad(format!("warmup_epochs must be ≥ 0, got {}", self.warmup_epochs));
        }
        if self.noise_levels.is_empty() || self.noise_levels.iter().any(|s| *s < 0.0) {
            return bad(format!(
                "noise_levels must be a non-empty list of σ ≥ 0, got {:?}",
                self.noise_levels
            ));
        }
        if self.steps == Some(0) || (self.steps.is_none() && self.epochs == 0) {
            return bad("nothing to train: steps or epochs is 0".into());
        }
        if self.val_every == 0 || self.val_superpatches == 0 {
            return bad("val_every and val_superpatches must be at least 1".into());
        }
        if self.loader_threads > MAX_LOADER_THREADS {
            return bad(format!(
                "loader_threads must be at most {MAX_LOADER_THREADS}, got {}",
                self.loader_threads
            ));
        }
        Ok(())
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_with_preset_and_model_overrides() {
        let dir = std::env::temp_dir().join(format!("nemesis-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("run.toml");
        std::fs::write(
            &toml_path,
            "preset = \"tiny\"\nlr = 3e-4\nsteps = 50\nnoise_levels = [0.0, 0.02]\n[model]\ndropout = 0.0\n",
        )
        .unwrap();
        let c = TrainConfig::from_file(&toml_path).unwrap();
        assert_eq!(
            c.model,
            ModelConfig {
                dropout: 0.0,
                ..ModelConfig::tiny()
            }
        );
        assert_eq!(
            (c.lr, c.steps, c.noise_levels.clone()),
            (3e-4, Some(50), vec![0.0, 0.02])
        );
        let json_path = dir.join("run.json");
        std::fs::write(&json_path, c.to_json_pretty()).unwrap();
        assert_eq!(
            TrainConfig::from_file(&json_path).unwrap(),
            c,
            "the saved effective config reads back"
        );
        std::fs::write(&json_path, r#"{"model": {"embed_dim": 770}}"#).unwrap();
        let e = TrainConfig::from_file(&json_path).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("num_heads"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
