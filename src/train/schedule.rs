//! Learning-rate schedules, per optimizer step (MODEL.md §11).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// What the recipe describes: linear warm-up, then cosine to the minimum.
    #[default]
    Recipe,
    /// What the public script does: 5 warm-up steps, then
    /// `lr·max(0.01, ½(1 + cos(π·(step − 5)/45)))`, a 90-step cycle.
    Public,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: LrSchedule,
    pub base: f64,
    pub min: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        match self.kind {
            LrSchedule::Recipe => {
                if step < self.warmup_steps {
                    return self.base * (step + 1) as f64 / self.warmup_steps as f64;
                }
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min + (self.base - self.min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Public => {
                if step < 5 {
                    return self.base * (step + 1) as f64 / 5.0;
                }
                let c = 0.5 * (1.0 + (std::f64::consts::PI * (step - 5) as f64 / 45.0).cos());
                self.base * c.max(0.01)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_warms_up_then_decays_to_the_minimum() {
        let s = Schedule {
            kind: LrSchedule::Recipe,
            base: 1e-4,
            min: 1e-6,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert!((s.lr(0) - 1e-5).abs() < 1e-18);
        assert!((s.lr(9) - 1e-4).abs() < 1e-18);
        assert!((s.lr(10) - 1e-4).abs() < 1e-12);
        assert!((s.lr(60) - (1e-6 + (1e-4 - 1e-6) * 0.5)).abs() < 1e-12);
        assert!((s.lr(110) - 1e-6).abs() < 1e-15);
        assert!((s.lr(500) - 1e-6).abs() < 1e-15);
        assert!((1..110).all(|k| s.lr(k) <= s.lr(k - 1) + 1e-18 || k <= 10));
    }

    #[test]
    fn public_schedule_cycles_every_90_steps() {
        let s = Schedule {
            kind: LrSchedule::Public,
            base: 1e-4,
            min: 1e-6,
            warmup_steps: 0,
            total_steps: 0,
        };
        assert!((s.lr(5) - 1e-4).abs() < 1e-18);
        assert!((s.lr(50) - 1e-6).abs() < 1e-12, "bottom of the cycle: {}", s.lr(50));
        assert!((s.lr(95) - 1e-4).abs() < 1e-12, "back at the top: {}", s.lr(95));
        assert!((s.lr(27) - s.lr(117)).abs() < 1e-15);
    }
}
