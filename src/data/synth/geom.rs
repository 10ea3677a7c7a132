//! Shape primitives of the phantom: deformed ellipsoids and tubes with varying
//! radius. Everything lives in the anatomical frame (see `anatomy`), and every
//! evaluation uses only + − × ÷, `sqrt` and `floor`, which IEEE 754 rounds
//! exactly, so a phantom is bit-identical on every platform.

use std::f32::consts::{PI, TAU};
use std::ops::{Add, Mul, Neg, Sub};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct V3 {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

pub(crate) const fn v3(x: f32, y: f32, z: f32) -> V3 {
    V3 { x, y, z }
}

impl V3 {
    pub fn dot(self, o: V3) -> f32 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }

    pub fn cross(self, o: V3) -> V3 {
        v3(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }

    pub fn norm(self) -> f32 {
        self.dot(self).sqrt()
    }

    /// The unit vector along `self`; a zero vector has no direction, so it
    /// maps to the x axis rather than to NaNs.
    pub fn unit(self) -> V3 {
        let l = self.norm();
        if l > 0.0 {
            self * (1.0 / l)
        } else {
            v3(1.0, 0.0, 0.0)
        }
    }

    pub fn min(self, o: V3) -> V3 {
        v3(self.x.min(o.x), self.y.min(o.y), self.z.min(o.z))
    }

    pub fn max(self, o: V3) -> V3 {
        v3(self.x.max(o.x), self.y.max(o.y), self.z.max(o.z))
    }
}

impl Add for V3 {
    type Output = V3;
    fn add(self, o: V3) -> V3 {
        v3(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl Sub for V3 {
    type Output = V3;
    fn sub(self, o: V3) -> V3 {
        v3(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

impl Mul<f32> for V3 {
    type Output = V3;
    fn mul(self, s: f32) -> V3 {
        v3(self.x * s, self.y * s, self.z * s)
    }
}

impl Neg for V3 {
    type Output = V3;
    fn neg(self) -> V3 {
        v3(-self.x, -self.y, -self.z)
    }
}

/// A sine good to about 1e-3. Shape perturbations need smoothness, not
/// accuracy, and a polynomial is both faster than `sinf` and identical on
/// every platform.
pub(crate) fn wave(t: f32) -> f32 {
    let u = t * (1.0 / TAU);
    let x = (u - (u + 0.5).floor()) * TAU;
    let y = (4.0 / PI) * x - (4.0 / (PI * PI)) * x * x.abs();
    0.225 * (y * y.abs() - y) + y
}

/// Polynomial smooth minimum: unions of lobes without a crease where they meet.
pub(crate) fn smin(a: f32, b: f32, k: f32) -> f32 {
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

pub(crate) fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// An orthonormal frame whose first axis is `primary` and whose second lies in
/// the plane of `primary` and `secondary`.
pub(crate) fn frame(primary: V3, secondary: V3) -> [V3; 3] {
    let e0 = primary.unit();
    let e1 = (secondary - e0 * secondary.dot(e0)).unit();
    [e0, e1, e0.cross(e1)]
}

/// One low-frequency ripple of a surface: `amp · sin(k · n + phase)` in the
/// normalised coordinates of an ellipsoid.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ripple {
    pub k: V3,
    pub amp: f32,
    pub phase: f32,
}

/// An ellipsoid whose radius is modulated by a few ripples. `eval` is below 0
/// inside, 0 on the surface, and grows roughly like the distance in units of
/// the semi-axes, which is what shells (kidney cortex, gallbladder wall) use.
#[derive(Clone, Debug)]
pub(crate) struct Blob {
    pub c: V3,
    /// Rows of the world-to-local map: axis i divided by semi-axis i.
    rows: [V3; 3],
    ripples: [Ripple; 3],
    pub lo: V3,
    pub hi: V3,
}

impl Blob {
    pub fn new(c: V3, axes: [V3; 3], semi: [f32; 3], ripples: [Ripple; 3]) -> Blob {
        let rows = [
            axes[0] * (1.0 / semi[0]),
            axes[1] * (1.0 / semi[1]),
            axes[2] * (1.0 / semi[2]),
        ];
        // The ripples can push the surface out by at most the sum of their amplitudes.
        let grow = 1.0 + ripples.iter().map(|r| r.amp.abs()).sum::<f32>();
        let ext = |pick: fn(V3) -> f32| (0..3).map(|i| (pick(axes[i]) * semi[i]).powi(2)).sum::<f32>().sqrt() * grow;
        let half = v3(ext(|v| v.x), ext(|v| v.y), ext(|v| v.z));
        Blob {
            c,
            rows,
            ripples,
            lo: c - half,
            hi: c + half,
        }
    }

    /// Normalised local coordinates: |n| = 1 on the unperturbed surface.
    pub fn local(&self, p: V3) -> V3 {
        let d = p - self.c;
        v3(self.rows[0].dot(d), self.rows[1].dot(d), self.rows[2].dot(d))
    }

    pub fn eval(&self, p: V3) -> f32 {
        self.eval_local(self.local(p))
    }

    pub fn eval_local(&self, n: V3) -> f32 {
        let mut pert = 0.0;
        for r in &self.ripples {
            pert += r.amp * wave(r.k.dot(n) + r.phase);
        }
        n.norm() - 1.0 - pert
    }

    pub fn contains_z(&self, z: f32) -> bool {
        z >= self.lo.z && z <= self.hi.z
    }
}

/// A conical segment of a tube: radius `ra` at `a`, `ra + dr` at `a + ab`.
#[derive(Clone, Debug)]
pub(crate) struct Seg {
    a: V3,
    ab: V3,
    inv_len2: f32,
    ra: f32,
    dr: f32,
    arc_a: f32,
    darc: f32,
    rmax: f32,
    pub lo: V3,
    pub hi: V3,
}

impl Seg {
    fn new(a: V3, b: V3, ra: f32, rb: f32, arc_a: f32) -> Seg {
        let ab = b - a;
        let len2 = ab.dot(ab);
        let rmax = ra.max(rb);
        let pad = v3(rmax, rmax, rmax);
        Seg {
            a,
            ab,
            inv_len2: if len2 > 0.0 { 1.0 / len2 } else { 0.0 },
            ra,
            dr: rb - ra,
            arc_a,
            darc: len2.sqrt(),
            rmax,
            lo: a.min(b) - pad,
            hi: a.max(b) + pad,
        }
    }

    /// Signed distance (approximate for a cone) to the segment's surface, and
    /// the arc length along the tube of the closest axis point.
    pub fn dist(&self, p: V3) -> (f32, f32) {
        let ap = p - self.a;
        let t = (ap.dot(self.ab) * self.inv_len2).clamp(0.0, 1.0);
        let q = ap - self.ab * t;
        (q.norm() - (self.ra + self.dr * t), self.arc_a + self.darc * t)
    }

    /// The in-plane box (x0, x1, y0, y1) that holds the segment's cross-section
    /// with the plane at height `z`, or None when it misses the plane. Long
    /// oblique segments thereby cost only the pixels near where they cross.
    pub fn plane_box(&self, z: f32) -> Option<[f32; 4]> {
        if z < self.lo.z || z > self.hi.z {
            return None;
        }
        let (mut t0, mut t1) = (0.0f32, 1.0f32);
        if self.ab.z.abs() > 1e-6 {
            let u = (z - self.rmax - self.a.z) / self.ab.z;
            let v = (z + self.rmax - self.a.z) / self.ab.z;
            t0 = u.min(v).max(0.0);
            t1 = u.max(v).min(1.0);
            if t0 > t1 {
                return None;
            }
        }
        let p = self.a + self.ab * t0;
        let q = self.a + self.ab * t1;
        Some([
            p.x.min(q.x) - self.rmax,
            p.x.max(q.x) + self.rmax,
            p.y.min(q.y) - self.rmax,
            p.y.max(q.y) + self.rmax,
        ])
    }
}

/// A tube along a polyline with a radius per vertex.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tube {
    pub segs: Vec<Seg>,
    pub lo: V3,
    pub hi: V3,
}

impl Tube {
    pub fn polyline(pts: &[(V3, f32)]) -> Tube {
        let mut segs = Vec::with_capacity(pts.len().saturating_sub(1));
        let mut arc = 0.0;
        for w in pts.windows(2) {
            let s = Seg::new(w[0].0, w[1].0, w[0].1, w[1].1, arc);
            arc += s.darc;
            segs.push(s);
        }
        let mut lo = v3(f32::MAX, f32::MAX, f32::MAX);
        let mut hi = -lo;
        for s in &segs {
            lo = lo.min(s.lo);
            hi = hi.max(s.hi);
        }
        Tube { segs, lo, hi }
    }

    /// A tube through control points along a Catmull–Rom spline, so organs
    /// such as the stomach or colon bend smoothly instead of at kinks.
    pub fn spline(ctrl: &[(V3, f32)], per_span: usize) -> Tube {
        if ctrl.len() < 2 {
            return Tube::polyline(ctrl);
        }
        let n = ctrl.len();
        let at = |i: isize| ctrl[i.clamp(0, n as isize - 1) as usize];
        let mut pts = Vec::with_capacity((n - 1) * per_span + 1);
        for i in 0..n as isize - 1 {
            let (p0, p1, p2, p3) = (at(i - 1), at(i), at(i + 1), at(i + 2));
            for s in 0..per_span {
                let t = s as f32 / per_span as f32;
                let (t2, t3) = (t * t, t * t * t);
                let w0 = -0.5 * t3 + t2 - 0.5 * t;
                let w1 = 1.5 * t3 - 2.5 * t2 + 1.0;
                let w2 = -1.5 * t3 + 2.0 * t2 + 0.5 * t;
                let w3 = 0.5 * t3 - 0.5 * t2;
                let p = p0.0 * w0 + p1.0 * w1 + p2.0 * w2 + p3.0 * w3;
                // Radii interpolate linearly: a spline could overshoot below zero.
                let r = lerp(p1.1, p2.1, t);
                pts.push((p, r));
            }
        }
        pts.push(ctrl[n - 1]);
        Tube::polyline(&pts)
    }

    pub fn contains_z(&self, z: f32) -> bool {
        !self.segs.is_empty() && z >= self.lo.z && z <= self.hi.z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_tracks_sine() {
        for i in -400..400 {
            let t = i as f32 * 0.05;
            assert!((wave(t) - t.sin()).abs() < 2e-3, "t {t}");
        }
    }

    #[test]
    fn blob_bounds_hold_surface() {
        let axes = frame(v3(1.0, 1.0, 0.3), v3(0.0, 0.0, 1.0));
        let rip = Ripple {
            k: v3(2.0, -1.0, 0.5),
            amp: 0.1,
            phase: 0.3,
        };
        let b = Blob::new(v3(5.0, -3.0, 2.0), axes, [20.0, 8.0, 12.0], [rip; 3]);
        for i in 0..2000 {
            let f = i as f32;
            let p = v3(
                (f * 0.37).sin() * 40.0,
                (f * 0.91).cos() * 40.0,
                (f * 0.13).sin() * 40.0,
            );
            if b.eval(p) < 0.0 {
                assert!(p.x >= b.lo.x && p.x <= b.hi.x && p.y >= b.lo.y && p.y <= b.hi.y);
                assert!(p.z >= b.lo.z && p.z <= b.hi.z);
            }
        }
        assert!(b.eval(b.c) < 0.0);
    }

    #[test]
    fn tube_distance_and_plane_box() {
        let t = Tube::polyline(&[(v3(0.0, 0.0, 0.0), 5.0), (v3(0.0, 0.0, 100.0), 5.0)]);
        let (d, arc) = t.segs[0].dist(v3(8.0, 0.0, 50.0));
        assert!((d - 3.0).abs() < 1e-5 && (arc - 50.0).abs() < 1e-4);
        let b = t.segs[0].plane_box(50.0).unwrap_or([0.0; 4]);
        assert_eq!(b, [-5.0, 5.0, -5.0, 5.0]);
        assert!(t.segs[0].plane_box(106.0).is_none());
    }
}
