//! Continuing a run (`pretrain --resume`): finding the checkpoint to start
//! from (the newest intact one when the latest is damaged), and the recipe
//! keys a resume may change, each said as a change from a step.

use std::path::{Path, PathBuf};

use super::adamw::AdamW;
use super::config::TrainConfig;
use super::state::{list_checkpoints, load_state_for, state_name, weights_name, Latest, StateMeta};
use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::model::load_checkpoint;
use crate::tensor::DType;

/// The run's record of the data it trains on.
pub const DATA_NOTE: &str = "data.json";

/// A run opened to continue: its folder, the checkpoint it continues from,
/// and what that checkpoint holds.
pub struct Resumed {
    pub dir: PathBuf,
    pub weights: PathBuf,
    pub store: ParamStore,
    pub opt: AdamW,
    pub meta: StateMeta,
}

/// Opens `--resume RUN_DIR|CHECKPOINT`. A run folder continues from its
/// `latest.json`, or, when that checkpoint is damaged, from the newest
/// intact one (each skipped one is passed to `warn`); a checkpoint named
/// directly is used or refused, never replaced. Nothing large is built
/// before the files are known to be there.
pub fn open_resume(p: &Path, warn: &mut dyn FnMut(String)) -> Result<Resumed> {
    if !p.exists() {
        return Err(Error::io(
            p,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or folder; --resume takes a run folder or one of its checkpoints",
            ),
        ));
    }
    if p.is_dir() {
        let latest_path = p.join("latest.json");
        let text = std::fs::read_to_string(&latest_path).map_err(|e| {
            Error::io(
                &latest_path,
                std::io::Error::new(e.kind(), format!("{e}: no checkpoint to resume from in this folder")),
            )
        })?;
        let latest: Option<Latest> = serde_json::from_str(&text).ok();
        let mut candidates: Vec<(PathBuf, PathBuf)> = Vec::new();
        match &latest {
            Some(l) => candidates.push((p.join(&l.weights), p.join(&l.state))),
            None => warn(format!(
                "{} is damaged; looking for the newest intact checkpoint",
                latest_path.display()
            )),
        }
        for s in list_checkpoints(p).into_iter().rev() {
            let pair = (p.join(weights_name(s)), p.join(state_name(s)));
            if !candidates.contains(&pair) {
                candidates.push(pair);
            }
        }
        let mut failures = Vec::new();
        for (weights, state) in candidates {
            match open_checkpoint(&weights, &state) {
                Ok((store, opt, meta)) => {
                    if !failures.is_empty() {
                        warn(format!(
                            "continuing from the newest intact checkpoint, {} (step {}), instead",
                            weights.display(),
                            meta.step
                        ));
                    }
                    return Ok(Resumed {
                        dir: p.to_path_buf(),
                        weights,
                        store,
                        opt,
                        meta,
                    });
                }
                Err(e) => {
                    warn(format!("checkpoint {} is not usable: {e}", weights.display()));
                    failures.push(e.to_string());
                }
            }
        }
        return Err(Error::format(
            p,
            format!("no intact checkpoint to resume from ({} tried)", failures.len()),
        ));
    }
    let name = p.to_string_lossy().to_string();
    let Some(stem) = name.strip_suffix(".safetensors") else {
        return Err(Error::format(p, "expected a run folder or a checkpoint .safetensors"));
    };
    if !p.is_file() {
        return Err(Error::io(p, std::io::Error::from(std::io::ErrorKind::NotFound)));
    }
    let state = PathBuf::from(format!("{stem}.state.safetensors"));
    if !state.is_file() {
        return Err(Error::format(
            p,
            format!(
                "has no training state beside it ({}): --resume takes a run folder or one of its \
                 checkpoints; to start a new run from these weights use --init",
                state.display()
            ),
        ));
    }
    let (store, opt, meta) = open_checkpoint(p, &state)?;
    Ok(Resumed {
        dir: run_dir_of(p),
        weights: p.to_path_buf(),
        store,
        opt,
        meta,
    })
}

/// The run folder of `--resume P`: P itself, or the run a checkpoint
/// (`RUN/checkpoints/step-N.safetensors`) belongs to.
pub fn run_dir_of(p: &Path) -> PathBuf {
    if p.is_dir() {
        return p.to_path_buf();
    }
    p.parent()
        .and_then(|c| c.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Weights and training state, checked to belong together.
fn open_checkpoint(weights: &Path, state: &Path) -> Result<(ParamStore, AdamW, StateMeta)> {
    let (config, store) = load_checkpoint(weights, DType::F32)?;
    let (opt, meta) = load_state_for(state, &store, &config, weights)?;
    Ok((store, opt, meta))
}

/// The cache a run was trained on, from its `data.json`: required, since a
/// resumed run must see the same data.
pub fn run_cache(run_dir: &Path) -> Result<PathBuf> {
    let path = run_dir.join(DATA_NOTE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::io(
            &path,
            std::io::Error::new(
                e.kind(),
                format!("{e}: the run's record of its data; give --data to name it"),
            ),
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))?;
    v["cache"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| Error::format(&path, "no `cache` key; give --data to name the run's data"))
}

/// A recipe key given anew with `--resume`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub key: &'static str,
    pub from: String,
    pub to: String,
}

/// The keys a resumed run may change: its length, the learning rate and
/// regularisation from the step it continues at, and bookkeeping. All
/// others (batch, masking, noise, seed, schedule shape, validation set)
/// would make it another run.
#[derive(Clone, Debug, Default)]
pub struct ResumeFlags {
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    pub lr: Option<f64>,
    pub min_lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub clip: Option<f64>,
    pub val_every: Option<u64>,
    pub keep_last: Option<usize>,
    pub log_every: Option<u64>,
}

/// A resume on `world` ranks of a run that trained on `meta.world`: the
/// global batch (batch × accum × ranks) stays, through accum, or the resume
/// is refused with the reason.
pub fn keep_global_batch(meta: &mut StateMeta, world: usize) -> Result<Option<Change>> {
    let (old, c) = (meta.world.max(1), &mut meta.config);
    if old == world {
        return Ok(None);
    }
    let micro = c.accum * old;
    if micro % world != 0 {
        return Err(Error::invalid(
            "--resume",
            format!(
                "the run took {micro} micro-batches of {} a step on {old} rank(s); {world} ranks cannot share \
                 them evenly (resume on a number of ranks that divides {micro})",
                c.batch
            ),
        ));
    }
    let change = Change {
        key: "accum",
        from: c.accum.to_string(),
        to: (micro / world).to_string(),
    };
    c.accum = micro / world;
    meta.world = world;
    Ok(Some(change))
}

/// Applies `f` to `c` (validated afterwards) and lists what changed.
pub fn apply_changes(c: &mut TrainConfig, f: &ResumeFlags) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    let mut note = |key: &'static str, from: String, to: String| {
        if from != to {
            changes.push(Change { key, from, to });
        }
    };
    let steps = |s: Option<u64>| s.map(|v| v.to_string()).unwrap_or_else(|| "by epochs".into());
    if let Some(s) = f.steps {
        note("steps", steps(c.steps), s.to_string());
        c.steps = Some(s);
    }
    macro_rules! set {
        ($($k:ident),*) => {$(
            if let Some(v) = f.$k {
                note(stringify!($k), format!("{}", c.$k), format!("{}", v));
                c.$k = v;
            }
        )*};
    }
    set!(epochs, lr, min_lr, weight_decay, clip, val_every, keep_last, log_every);
    c.validate()?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_listed_and_validated() {
        let mut c = TrainConfig::default();
        let f = ResumeFlags {
            lr: Some(1e-2),
            steps: Some(300),
            clip: Some(1.0),
            ..Default::default()
        };
        let ch = apply_changes(&mut c, &f).unwrap();
        assert_eq!(c.lr, 1e-2);
        assert_eq!(c.steps, Some(300));
        // The same value is no change.
        assert_eq!(ch.iter().map(|c| c.key).collect::<Vec<_>>(), ["steps", "lr"]);
        assert_eq!(ch[1].from, "0.0001");
        let bad = ResumeFlags {
            weight_decay: Some(f64::NAN),
            ..Default::default()
        };
        assert!(apply_changes(&mut c, &bad).is_err());
    }

    #[test]
    fn another_world_keeps_the_global_batch_or_says_why_not() {
        let mut meta = StateMeta {
            step: 10,
            position: Default::default(),
            best_val: None,
            config: TrainConfig {
                accum: 1,
                ..TrainConfig::default()
            },
            elapsed: 0.0,
            world: 4,
        };
        let ch = keep_global_batch(&mut meta, 2).unwrap().unwrap();
        assert_eq!(
            (ch.from.as_str(), ch.to.as_str(), meta.config.accum, meta.world),
            ("1", "2", 2, 2)
        );
        assert_eq!(keep_global_batch(&mut meta, 2).unwrap(), None);
        let e = keep_global_batch(&mut meta, 3).unwrap_err().to_string();
        assert!(e.contains("4 micro-batches") && e.contains("divides 4"), "{e}");
    }
}
