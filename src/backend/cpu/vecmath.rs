//! `exp` and the normal CDF in f32 as straight-line arithmetic (no table,
//! no branch, no libm call), so loops of them vectorise at the level
//! `dispatched!` compiles them for. The plain ops keep libm's functions and
//! stay the reference; the tests bound these against it.

/// `eˣ` to about 2 ulp for x in [−87, 88] (clamped outside, so the result
/// stays a normal number: ≥ 2⁻¹²⁶, never ∞).
///
/// Cody–Waite reduction x = n·ln 2 + r with |r| ≤ ½ ln 2 (ln 2 split in a
/// short high part, so n·hi is exact, and a low correction), the Taylor
/// series of eʳ to degree 7 (truncation below 6e-9 relative), then the
/// factor 2ⁿ built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 355/512
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − 355/512
    const SHIFTER: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let n_int = t.to_bits() as i32 - SHIFTER.to_bits() as i32;
    p * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// `(Φ(x), φ(x))`: the standard normal CDF and density.
///
/// Φ from Abramowitz & Stegun's formula 7.1.26 for erfc(z), z = |x|/√2
/// (`t·(a₁ + t·(a₂ + …))·e^(−z²)` with t = 1/(1 + p·z); absolute error
/// below 1.5e-7): Φ = ½·erfc(z) for x < 0, 1 − ½·erfc(z) otherwise, so the
/// left tail is not the difference of two numbers near 1. The density
/// shares the exponential: φ(x) = e^(−z²)/√(2π).
#[inline(always)]
pub fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A1 + t * (A2 + t * (A3 + t * (A4 + t * A5))));
    let e = exp(-z * z);
    let half_erfc = 0.5 * poly * e;
    let cdf = if x < 0.0 { half_erfc } else { 1.0 - half_erfc };
    (cdf, INV_SQRT_2PI * e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        // 2 ulp of f32 is 2.4e-7 relative.
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn normal_cdf_and_pdf_match_libm_in_absolute_terms() {
        let (mut worst_cdf, mut worst_pdf) = (0.0f64, 0.0f64);
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4 * 9.0;
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let (c, p) = normal_cdf_pdf(x);
            worst_cdf = worst_cdf.max((c as f64 - cdf).abs());
            worst_pdf = worst_pdf.max((p as f64 - pdf).abs());
        }
        // The formula's 1.5e-7 on erfc is 7.5e-8 on Φ; the f32 evaluation
        // (the polynomial's cancelling terms, 1 − ½erfc) adds as much again.
        assert!(worst_cdf < 3e-7, "worst |ΔΦ| {worst_cdf:e}");
        assert!(worst_pdf < 1e-7, "worst |Δφ| {worst_pdf:e}");
        assert!((normal_cdf_pdf(0.0).0 - 0.5).abs() < 1e-7);
    }
}
