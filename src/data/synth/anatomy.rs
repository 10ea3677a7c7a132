//! The random anatomy of one phantom: where each structure lies, how large it
//! is, and its attenuation.
//!
//! Positions are written in an adult anatomical frame, in millimetres: x
//! towards the patient's left (image columns, radiological convention), y
//! posterior (image rows), z inferior (slices), origin at the volume centre.
//! The scanner frame is this frame shrunk by `K_XY` in-plane and `K_Z` along
//! z. The default volume (160 × 160 columns of 0.8 mm, 96 slices of 2.5 mm)
//! sees 128 mm across but 240 mm along z: shrinking the plane lets a whole
//! abdomen, body outline and the air around it included, fit the default
//! field of view, while the slices still cover lung bases to the aortic
//! bifurcation. The shrink is fixed, so spacing changes voxel counts and never
//! the anatomy.

use super::geom::{frame, v3, Blob, Ripple, Tube, V3};
use crate::rng::RngStream;
use std::f32::consts::TAU;

pub(crate) const K_XY: f32 = 0.355;
pub(crate) const K_Z: f32 = 0.8;

/// Where structures that run the length of the volume (aorta, bowel, back
/// muscles) start and end: past the ±150 mm the default volume spans in this
/// frame, so they never stop inside it.
const Z_END: f32 = 175.0;

/// Consecutive draws from one stream; the order of the calls below is the
/// recipe of a phantom.
pub(crate) struct Draws {
    rng: RngStream,
    next: u64,
}

impl Draws {
    pub fn new(rng: RngStream) -> Draws {
        Draws { rng, next: 0 }
    }

    pub fn u(&mut self) -> f32 {
        let v = self.rng.uniform(self.next);
        self.next += 1;
        v
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.u()
    }

    pub fn sym(&mut self, a: f32) -> f32 {
        self.range(-a, a)
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.u() < p
    }

    fn jitter(&mut self, p: V3, a: f32) -> V3 {
        p + v3(self.sym(a), self.sym(a), self.sym(a))
    }

    /// Three ripples of random direction, spatial frequency and phase: a
    /// smooth, low-order deformation of an ellipsoid.
    fn ripples(&mut self, amp: f32) -> [Ripple; 3] {
        let mut out = [Ripple::default(); 3];
        for r in &mut out {
            let k = v3(self.sym(1.0), self.sym(1.0), self.sym(1.0)).unit() * self.range(1.5, 3.2);
            *r = Ripple {
                k,
                amp: amp * self.range(0.4, 1.0),
                phase: self.range(0.0, TAU),
            };
        }
        out
    }

    /// Control points jittered by up to `a` mm each, radii scaled by `rs`.
    fn path(&mut self, pts: &[(V3, f32)], a: f32, rs: f32) -> Vec<(V3, f32)> {
        pts.iter().map(|&(p, r)| (self.jitter(p, a), r * rs)).collect()
    }
}

/// Rotates `v` about the unit axis `k` by `angle` (Rodrigues).
fn rotate(v: V3, k: V3, angle: f32) -> V3 {
    let (s, c) = (libm::sinf(angle), libm::cosf(angle));
    v * c + k.cross(v) * s + k * (k.dot(v) * (1.0 - c))
}

/// The axes of an organ: the coordinate axes turned by small random angles
/// about each of them.
fn tilted(d: &mut Draws, ax: f32, ay: f32, az: f32) -> [V3; 3] {
    let mut axes = [v3(1.0, 0.0, 0.0), v3(0.0, 1.0, 0.0), v3(0.0, 0.0, 1.0)];
    for (k, a) in [
        (v3(0.0, 0.0, 1.0), az),
        (v3(1.0, 0.0, 0.0), ax),
        (v3(0.0, 1.0, 0.0), ay),
    ] {
        let angle = d.sym(a);
        for e in &mut axes {
            *e = rotate(*e, k, angle);
        }
    }
    axes
}

/// Attenuations of one patient and contrast timing, in HU.
#[derive(Clone, Debug)]
pub(crate) struct Hu {
    pub fat: f32,
    pub muscle: f32,
    pub skin: f32,
    pub liver: f32,
    pub spleen: f32,
    pub cortex: f32,
    pub medulla: f32,
    pub sinus: f32,
    pub aorta: f32,
    pub ivc: f32,
    pub portal: f32,
    pub renal_vein: f32,
    pub hepatic_vein: f32,
    pub stomach_wall: f32,
    pub stomach_fluid: f32,
    pub food: bool,
    pub bile: f32,
    pub gb_wall: f32,
    pub pancreas: f32,
    pub pancreas_fat: f32,
    pub bowel_wall: f32,
    pub bowel_fluid: f32,
    pub lung: f32,
    pub bone: f32,
    pub marrow: f32,
    pub disc: f32,
    pub csf: f32,
    pub blood: f32,
    pub myocardium: f32,
    pub cartilage: f32,
    pub calcium: f32,
}

/// The trunk wall: a lean body (superellipse, flatter at the back) under a
/// fat layer, lined inside by muscle.
#[derive(Clone, Debug)]
pub(crate) struct Body {
    pub a: f32,
    pub b_ant: f32,
    pub b_post: f32,
    pub p_ant: f32,
    pub p_post: f32,
    /// Subcutaneous fat laterally, anteriorly, posteriorly.
    pub fat: [f32; 3],
    pub muscle: [f32; 3],
    /// Amplitude and phase of the angular harmonics of order 2, 3, 4.
    pub harm: [(f32, f32); 3],
    pub groove: f32,
    pub taper: [f32; 2],
    pub skin: f32,
}

impl Body {
    /// Radii of the skin, the lean body (fat/muscle) and the cavity (muscle/
    /// inside) along the in-plane direction `theta` at height `z`.
    pub fn radii(&self, theta: f32, z: f32) -> [f32; 3] {
        let (s, c) = (libm::sinf(theta), libm::cosf(theta));
        let zt = z / 150.0;
        let zf = 1.0 + self.taper[0] * zt + self.taper[1] * zt * zt;
        let b = if s < 0.0 { self.b_ant } else { self.b_post };
        let p = super::geom::lerp(self.p_ant, self.p_post, super::geom::smoothstep(-0.3, 0.3, s));
        let se = libm::powf(libm::powf(c.abs() / self.a, p) + libm::powf(s.abs() / b, p), -1.0 / p);
        let mut h = 1.0;
        for (m, &(amp, ph)) in self.harm.iter().enumerate() {
            h += amp * libm::cosf((m + 2) as f32 * theta + ph);
        }
        // The spinous processes sit in a midline groove between the back muscles.
        let mid = if s > 0.0 {
            libm::expf(-(c / 0.16) * (c / 0.16)) * s
        } else {
            0.0
        };
        let lean = se * h * zf * (1.0 - self.groove * mid);
        let side = |v: [f32; 3]| v[0] * c * c + if s < 0.0 { v[1] } else { v[2] } * s * s;
        let fat = side(self.fat) * (1.0 - 0.5 * mid);
        let muscle = side(self.muscle);
        [lean + fat, lean, lean - muscle]
    }
}

/// The curved scanner couch under the patient.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    pub y_top: f32,
    pub curv: f32,
    pub thick: f32,
    pub half_w: f32,
    pub shell_hu: f32,
    pub core_hu: f32,
}

impl Table {
    pub fn hu(&self, x: f32, y: f32) -> Option<f32> {
        if x.abs() > self.half_w {
            return None;
        }
        let d = y - (self.y_top - self.curv * x * x);
        if !(0.0..self.thick).contains(&d) {
            return None;
        }
        let shell = 6.0;
        Some(if d < shell || d > self.thick - shell {
            self.shell_hu
        } else {
            self.core_hu
        })
    }
}

/// Two domes; lung lies above (smaller z than) the higher of them.
#[derive(Clone, Debug)]
pub(crate) struct Diaphragm {
    pub right: V3,
    pub left: V3,
    pub curv: f32,
    pub post: f32,
    pub thick: f32,
}

impl Diaphragm {
    pub fn height(&self, x: f32, y: f32) -> f32 {
        dome(self, self.right, x, y).0.min(dome(self, self.left, x, y).0)
    }

    /// Slope of the surface (z per mm along x and y) under the dome that is
    /// highest at (x, y).
    pub fn gradient(&self, x: f32, y: f32) -> (f32, f32) {
        let (r, l) = (dome(self, self.right, x, y), dome(self, self.left, x, y));
        if r.0 <= l.0 {
            (r.1, r.2)
        } else {
            (l.1, l.2)
        }
    }
}

/// Height and slope of one dome. It falls off faster behind its top than in
/// front: the diaphragm hangs from the low back ribs but from the xiphoid in
/// front, so lung reaches far lower posteriorly.
fn dome(dia: &Diaphragm, d: V3, x: f32, y: f32) -> (f32, f32, f32) {
    let (dx, dy) = (x - d.x, y - d.y);
    let (w, post) = if dy > 0.0 { (1.0, dia.post) } else { (0.35, 0.0) };
    (
        d.z + dia.curv * (dx * dx + w * dy * dy) + post * dy,
        2.0 * dia.curv * dx,
        2.0 * dia.curv * w * dy + post,
    )
}

#[derive(Clone, Debug)]
pub(crate) struct Spine {
    pub y0: f32,
    pub lord: f32,
    pub period: f32,
    pub phase: f32,
    pub disc: f32,
    pub body_a: [f32; 2],
    pub body_b: [f32; 2],
    pub canal: [f32; 2],
    pub arch: f32,
    pub spinous: f32,
    pub transverse: f32,
    pub cortex: f32,
}

impl Spine {
    fn t(z: f32) -> f32 {
        ((z + Z_END) / (2.0 * Z_END)).clamp(0.0, 1.0)
    }

    /// Centre row of the vertebral body: the lumbar lordosis brings it forward
    /// going down.
    pub fn y(&self, z: f32) -> f32 {
        let t = Spine::t(z);
        self.y0 - self.lord * t * t
    }

    /// Semi-axes of the vertebral body, which widens going down.
    pub fn semi(&self, z: f32) -> (f32, f32) {
        let t = Spine::t(z);
        (
            super::geom::lerp(self.body_a[0], self.body_a[1], t),
            super::geom::lerp(self.body_b[0], self.body_b[1], t),
        )
    }

    pub fn canal_y(&self, z: f32) -> f32 {
        self.y(z) + self.semi(z).1 + self.canal[1] + 1.0
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Rib {
    pub side: f32,
    /// Height of the rib at the posterior end, its descent per radian going
    /// round the body, and the angle (from the back) where it ends.
    pub z0: f32,
    pub slope: f32,
    pub end: f32,
}

#[derive(Clone, Debug)]
pub(crate) struct Ribs {
    pub list: Vec<Rib>,
    pub half_radial: f32,
    pub half_height: f32,
    pub offset: f32,
    pub cartilage: f32,
    pub zmin: f32,
    pub zmax: f32,
}

#[derive(Clone, Debug)]
pub(crate) struct Kidney {
    pub outer: Blob,
    pub notch: Blob,
    pub label: u8,
}

#[derive(Clone, Debug)]
pub(crate) struct Anatomy {
    pub hu: Hu,
    pub body: Body,
    pub table: Table,
    pub diaphragm: Diaphragm,
    pub spine: Spine,
    pub ribs: Ribs,
    pub heart: Blob,
    pub paraspinal: [Tube; 2],
    pub psoas: [Tube; 2],
    pub aorta: Tube,
    pub aorta_margin: f32,
    pub iliac: [Tube; 2],
    pub calcium: Vec<(V3, f32)>,
    pub ivc: Tube,
    pub portal: Tube,
    pub splenic_vein: Tube,
    pub sma: Tube,
    pub renal_veins: [Tube; 2],
    pub hepatic_veins: Vec<Tube>,
    pub portal_branches: Vec<Tube>,
    pub liver: [Blob; 2],
    /// The column around the spine and aorta that the liver must leave free.
    pub liver_carve: (f32, f32, f32, f32),
    pub spleen: Blob,
    pub spleen_cut: Blob,
    pub kidneys: [Kidney; 2],
    pub stomach: Tube,
    pub stomach_air: f32,
    pub stomach_wall: f32,
    pub esophagus: Tube,
    pub pancreas: Tube,
    pub gallbladder: Blob,
    pub duodenum: Tube,
    pub colon: Tube,
    pub colon_air: f32,
    pub haustra: (f32, f32),
    /// Small-bowel crowding, gas and positive oral contrast (HU, 0 if none).
    pub bowel: f32,
    pub bowel_gas: f32,
    pub oral_contrast: f32,
}

impl Anatomy {
    pub fn sample(rng: RngStream) -> Anatomy {
        let d = &mut Draws::new(rng);
        let food = d.chance(0.3);
        let hu = Hu {
            fat: d.range(-112.0, -88.0),
            muscle: d.range(42.0, 56.0),
            skin: d.range(20.0, 50.0),
            liver: d.range(55.0, 65.0),
            spleen: d.range(45.0, 50.0),
            cortex: d.range(150.0, 180.0),
            medulla: d.range(30.0, 40.0),
            sinus: d.range(-90.0, -60.0),
            aorta: d.range(200.0, 300.0),
            ivc: d.range(80.0, 130.0),
            portal: d.range(110.0, 160.0),
            renal_vein: d.range(130.0, 180.0),
            hepatic_vein: d.range(-20.0, -8.0),
            stomach_wall: d.range(45.0, 70.0),
            stomach_fluid: d.range(8.0, 20.0),
            food,
            bile: d.range(0.0, 20.0),
            gb_wall: d.range(30.0, 50.0),
            pancreas: d.range(40.0, 50.0),
            pancreas_fat: d.range(0.0, 0.5),
            bowel_wall: d.range(35.0, 60.0),
            bowel_fluid: d.range(5.0, 25.0),
            lung: d.range(-880.0, -830.0),
            bone: d.range(950.0, 1200.0),
            marrow: d.range(160.0, 280.0),
            disc: d.range(70.0, 100.0),
            csf: d.range(10.0, 30.0),
            blood: d.range(180.0, 280.0),
            myocardium: d.range(70.0, 100.0),
            cartilage: d.range(90.0, 200.0),
            calcium: d.range(500.0, 900.0),
        };

        let body = Body {
            a: d.range(118.0, 132.0),
            b_ant: d.range(78.0, 95.0),
            b_post: d.range(75.0, 85.0),
            p_ant: d.range(2.1, 2.6),
            p_post: d.range(2.8, 3.6),
            fat: [d.range(6.0, 26.0), d.range(8.0, 35.0), d.range(6.0, 20.0)],
            muscle: [d.range(9.0, 14.0), d.range(8.0, 12.0), d.range(10.0, 14.0)],
            harm: [
                (d.sym(0.015), d.range(0.0, TAU)),
                (d.sym(0.012), d.range(0.0, TAU)),
                (d.sym(0.01), d.range(0.0, TAU)),
            ],
            groove: d.range(0.01, 0.035),
            taper: [d.range(-0.03, 0.04), d.range(-0.03, 0.015)],
            skin: 3.0,
        };
        // The patient lies on the couch: its top touches the lowest point of
        // the back.
        let mut back = 0.0f32;
        for iz in -7..=7 {
            for it in -10..=10 {
                let theta = std::f32::consts::FRAC_PI_2 + 0.05 * it as f32;
                let r = body.radii(theta, 25.0 * iz as f32)[0];
                back = back.max(r * libm::sinf(theta));
            }
        }
        let table = Table {
            y_top: back + d.range(0.5, 2.0),
            curv: d.range(0.0002, 0.0006),
            thick: d.range(30.0, 40.0),
            half_w: d.range(140.0, 175.0),
            shell_hu: d.range(200.0, 400.0),
            core_hu: d.range(-960.0, -900.0),
        };

        // Everything below the thorax moves together with the patient's
        // position on the couch and breathing: this is what makes crops see
        // different organ sets.
        let shift = d.sym(32.0);
        let dome = -122.0 + shift;
        let diaphragm = Diaphragm {
            right: v3(d.range(-65.0, -50.0), d.range(-5.0, 10.0), dome),
            left: v3(d.range(45.0, 60.0), d.range(0.0, 15.0), dome + d.range(4.0, 18.0)),
            curv: d.range(0.007, 0.01),
            post: d.range(0.25, 0.4),
            thick: d.range(3.5, 5.0),
        };

        let body_a = [d.range(18.0, 21.0), d.range(23.0, 26.0)];
        let body_b = [d.range(13.5, 15.5), d.range(15.5, 17.5)];
        let canal = [d.range(8.5, 10.0), d.range(6.5, 8.0)];
        let arch = d.range(5.0, 6.5);
        let spinous = d.range(12.0, 16.0);
        let period = d.range(31.0, 36.0);
        // Spinous process tips lie just under the lean back.
        let spine = Spine {
            y0: body.b_post - 4.0 - (spinous + arch + 2.0 * canal[1] + 1.0 + body_b[0]),
            lord: d.range(3.0, 12.0),
            period,
            phase: d.range(0.0, period),
            disc: d.range(0.2, 0.26),
            body_a,
            body_b,
            canal,
            arch,
            spinous,
            transverse: d.range(14.0, 20.0),
            cortex: d.range(3.0, 4.0),
        };

        // Rib 12 leaves the spine near the level of the first lumbar disc; the
        // ribs above follow one vertebra apart, each reaching further round.
        let rib12 = dome + d.range(95.0, 112.0);
        let slope = d.range(30.0, 42.0);
        let ends = [
            d.range(1.2, 1.6),
            d.range(1.8, 2.1),
            d.range(2.3, 2.6),
            d.range(2.6, 2.8),
            d.range(2.75, 2.95),
            d.range(2.8, 3.0),
        ];
        let mut list = Vec::new();
        for side in [-1.0f32, 1.0] {
            let dz = d.sym(5.0);
            for (k, &end) in ends.iter().enumerate() {
                list.push(Rib {
                    side,
                    z0: rib12 + dz - k as f32 * period,
                    slope: slope + d.sym(3.0),
                    end,
                });
            }
        }
        let half_height = d.range(4.5, 6.0);
        let zmin = list.iter().map(|r| r.z0).fold(f32::MAX, f32::min) - half_height;
        let zmax = list.iter().map(|r| r.z0 + r.slope * r.end).fold(f32::MIN, f32::max) + half_height;
        let ribs = Ribs {
            list,
            half_radial: d.range(3.5, 4.5),
            half_height,
            offset: d.range(1.5, 3.5),
            cartilage: d.range(0.4, 0.6),
            zmin,
            zmax,
        };

        // The heart lies in front of the descending aorta, its lower wall on
        // the central part of the diaphragm.
        let heart_axes = tilted(d, 0.15, 0.15, 0.4);
        let heart_ap = d.range(42.0, 50.0);
        let heart = Blob::new(
            v3(
                d.range(15.0, 30.0),
                -heart_ap - d.range(10.0, 16.0),
                dome - d.range(15.0, 30.0),
            ),
            heart_axes,
            [d.range(65.0, 80.0), heart_ap, d.range(48.0, 58.0)],
            d.ripples(0.04),
        );

        // Back muscles beside the spinous processes, and the psoas muscles,
        // which appear at the first lumbar vertebra and thicken going down.
        let sy = |z: f32| spine.y(z);
        let para_x = canal[0] + arch + d.range(11.0, 15.0);
        let para_r = d.range(17.0, 21.0);
        let para_y = |z: f32| spine.canal_y(z) + 8.0;
        let paraspinal = [-1.0f32, 1.0].map(|s| {
            Tube::polyline(&[
                (v3(s * para_x, para_y(-Z_END), -Z_END), para_r * 0.85),
                (v3(s * para_x, para_y(0.0), 0.0), para_r),
                (v3(s * para_x, para_y(Z_END), Z_END), para_r * 1.05),
            ])
        });
        let psoas_top = rib12 + d.range(-5.0, 15.0);
        let psoas_r = d.range(17.0, 23.0);
        let psoas = [-1.0f32, 1.0].map(|s| {
            let mid = psoas_top + 0.55 * (Z_END - psoas_top);
            let (a0, _) = spine.semi(psoas_top);
            let (a1, _) = spine.semi(mid);
            let (a2, _) = spine.semi(Z_END);
            Tube::polyline(&[
                (v3(s * (a0 + 2.0), sy(psoas_top) + 4.0, psoas_top), 2.0),
                (v3(s * (a1 + 0.6 * psoas_r), sy(mid), mid), 0.7 * psoas_r),
                (v3(s * (a2 + 0.9 * psoas_r), sy(Z_END) - 8.0, Z_END), psoas_r),
            ])
        });

        // The aorta runs down anterior-left of the spine and divides near L4.
        let ar = d.range(9.5, 12.5);
        let gap = d.range(1.0, 4.0);
        let front = |z: f32| spine.y(z) - spine.semi(z).1;
        let (atop, btop) = spine.semi(-Z_END);
        let bif = dome + d.range(235.0, 265.0);
        let ax = [d.range(16.0, 22.0), d.range(9.0, 15.0), d.range(4.0, 10.0)];
        let zmid = dome + 80.0;
        let aorta_pts = [
            (
                v3(0.75 * atop + 0.9 * ar, sy(-Z_END) - 0.75 * btop - 0.5 * ar, -Z_END),
                ar * 1.05,
            ),
            (v3(ax[0], front(dome) - 0.6 * ar, dome), ar),
            (v3(ax[1], front(zmid) - ar - gap, zmid), ar * 0.95),
            (v3(ax[2], front(bif) - ar - gap, bif), ar * 0.85),
        ];
        let aorta = Tube::spline(&aorta_pts, 6);
        let bif_pt = aorta_pts[3].0;
        let iliac = [-1.0f32, 1.0].map(|s| {
            Tube::polyline(&[
                (bif_pt, ar * 0.65),
                (bif_pt + v3(s * 14.0, -2.0, 30.0), ar * 0.6),
                (bif_pt + v3(s * 40.0, -4.0, 80.0), ar * 0.55),
            ])
        });
        let mut calcium = Vec::new();
        let n_calc = (d.u() * d.u() * 8.0) as usize;
        for _ in 0..n_calc {
            let z = d.range(dome + 60.0, bif);
            let ang = d.range(0.0, TAU);
            let y_c = front(z) - ar - gap;
            let x_c = super::geom::lerp(ax[1], ax[2], ((z - zmid) / (bif - zmid)).clamp(0.0, 1.0));
            calcium.push((
                v3(x_c + ar * libm::cosf(ang), y_c + ar * libm::sinf(ang), z),
                d.range(2.0, 4.0),
            ));
        }

        // The inferior vena cava: right of the spine, then forward through the
        // back of the liver into the heart.
        let vr = d.range(8.5, 11.5);
        let vx = d.range(-28.0, -20.0);
        let ivc = Tube::spline(
            &[
                (v3(vx + 4.0, front(Z_END) - vr - 2.0, Z_END), vr * 0.9),
                (v3(vx, front(dome + 110.0) - vr - 3.0, dome + 110.0), vr),
                (v3(vx + 2.0, front(dome + 50.0) - vr - 14.0, dome + 50.0), vr * 1.1),
                (v3(vx + 8.0, -12.0, dome - 20.0), vr * 1.2),
                (v3(vx + 16.0, -25.0, dome - 60.0), vr * 1.2),
            ],
            6,
        );

        // Portal system: superior mesenteric vein up to the confluence behind
        // the pancreatic neck, the portal vein on to the liver hilum, and the
        // splenic vein along the back of the pancreas.
        let pz = dome + d.range(120.0, 135.0);
        let conf = v3(d.range(-9.0, -3.0), front(pz) - ar - gap - d.range(6.0, 9.0), pz);
        let hilum = v3(d.range(-42.0, -32.0), d.range(-22.0, -12.0), pz - d.range(25.0, 35.0));
        let pr = d.range(5.0, 7.0);
        let portal = Tube::spline(
            &[
                (v3(conf.x + 2.0, conf.y - 8.0, Z_END), pr * 0.8),
                (v3(conf.x + 1.0, conf.y - 4.0, pz + 40.0), pr * 0.9),
                (conf, pr),
                (hilum, pr * 1.1),
            ],
            5,
        );
        let splenic_vein = Tube::spline(
            &[
                (conf, pr * 0.8),
                (v3(18.0, conf.y - 2.0, pz - 6.0), pr * 0.75),
                (v3(46.0, 0.0, pz - 18.0), pr * 0.7),
                (v3(62.0, 20.0, pz - 28.0), pr * 0.65),
            ],
            5,
        );
        let sma_z = pz - d.range(12.0, 22.0);
        let sma_r = d.range(3.5, 4.5);
        let sma_x = ax[1] + d.range(-4.0, 0.0);
        let sma_y = front(sma_z) - 2.0 * ar - gap - d.range(6.0, 10.0);
        let sma = Tube::spline(
            &[
                (v3(sma_x, front(sma_z) - ar - gap, sma_z - 6.0), sma_r),
                (v3(sma_x, sma_y, sma_z + 10.0), sma_r),
                (v3(sma_x - 4.0, sma_y - 4.0, sma_z + 70.0), sma_r * 0.85),
                (v3(sma_x - 10.0, sma_y - 10.0, Z_END), sma_r * 0.7),
            ],
            5,
        );

        // Liver: a large right lobe and a flatter left lobe reaching across
        // the midline in front of the stomach.
        let right = Blob::new(
            v3(d.range(-62.0, -50.0), d.range(-8.0, 6.0), dome + d.range(68.0, 85.0)),
            tilted(d, 0.12, 0.12, 0.2),
            [d.range(72.0, 84.0), d.range(78.0, 92.0), d.range(70.0, 98.0)],
            d.ripples(0.06),
        );
        let left = Blob::new(
            v3(d.range(5.0, 22.0), d.range(-52.0, -38.0), dome + d.range(38.0, 55.0)),
            tilted(d, 0.1, 0.25, 0.2),
            [d.range(50.0, 68.0), d.range(26.0, 36.0), d.range(30.0, 45.0)],
            d.ripples(0.07),
        );
        let liver_carve = (4.0, spine.y0 + 12.0, 30.0, 40.0);
        let rc = right.c;
        let hv_z = dome + d.range(30.0, 40.0);
        let hv_root = v3(vx + 3.0, front(hv_z) - vr - 12.0, hv_z);
        let hepatic_veins = vec![
            Tube::polyline(&[
                (hv_root, 5.5),
                (v3(rc.x - 35.0, rc.y + 5.0, hv_z + 20.0), 3.0),
                (v3(rc.x - 55.0, rc.y + 10.0, hv_z + 35.0), 1.5),
            ]),
            Tube::polyline(&[
                (hv_root, 5.0),
                (v3(rc.x + 10.0, -45.0, hv_z + 22.0), 2.8),
                (v3(rc.x + 15.0, -62.0, hv_z + 35.0), 1.5),
            ]),
            Tube::polyline(&[(hv_root, 4.5), (v3(left.c.x - 5.0, left.c.y - 8.0, hv_z + 12.0), 2.0)]),
        ];
        let portal_branches = vec![
            Tube::polyline(&[
                (hilum, pr * 0.9),
                (v3(rc.x - 20.0, rc.y - 5.0, hilum.z - 12.0), pr * 0.6),
                (v3(rc.x - 45.0, rc.y, hilum.z - 10.0), 1.5),
            ]),
            Tube::polyline(&[
                (hilum, pr * 0.8),
                (v3(left.c.x - 15.0, left.c.y, left.c.z + 10.0), pr * 0.45),
                (v3(left.c.x + 20.0, left.c.y - 5.0, left.c.z + 5.0), 1.5),
            ]),
        ];

        // Spleen: a crescent against the left posterolateral wall, its long
        // axis running down and forward along the ribs.
        let sc = v3(d.range(60.0, 72.0), d.range(26.0, 40.0), dome + d.range(50.0, 70.0));
        let radial = v3(sc.x, sc.y, 0.0).unit();
        let sp_axes = frame(v3(0.25 + d.sym(0.15), -0.35 + d.sym(0.15), 1.0), radial);
        let big = if d.chance(0.1) { 1.3 } else { 1.0 };
        let sp_semi = [
            d.range(55.0, 70.0) * big,
            d.range(20.0, 26.0) * big,
            d.range(36.0, 46.0) * big,
        ];
        let spleen = Blob::new(sc, sp_axes, sp_semi, d.ripples(0.06));
        let spleen_cut = Blob::new(
            sc - sp_axes[1] * (2.6 * sp_semi[1]),
            sp_axes,
            [sp_semi[0] * 1.3, sp_semi[1] * 1.8, sp_semi[2] * 1.3],
            d.ripples(0.05),
        );

        // Kidneys: the right one lower, upper poles medial and posterior,
        // hilum turned forward and in.
        let kidneys = [-1.0f32, 1.0].map(|s| {
            let z = dome
                + if s < 0.0 {
                    d.range(128.0, 150.0)
                } else {
                    d.range(115.0, 137.0)
                };
            let c = v3(s * d.range(62.0, 72.0), d.range(38.0, 50.0), z);
            let long = v3(s * (0.2 + d.sym(0.08)), -0.15 + d.sym(0.08), 1.0);
            let ang = d.range(0.4, 0.7);
            let toward_hilum = v3(-s * libm::cosf(ang), -libm::sinf(ang), 0.0);
            let axes = frame(long, toward_hilum);
            let semi = [d.range(48.0, 58.0), d.range(26.0, 31.0), d.range(20.0, 24.0)];
            let outer = Blob::new(c, axes, semi, d.ripples(0.04));
            let notch = Blob::new(
                c + axes[1] * (semi[1] * 0.95),
                axes,
                [semi[0] * 0.38, semi[1] * 0.45, semi[2] * 0.42],
                d.ripples(0.05),
            );
            Kidney {
                outer,
                notch,
                label: if s < 0.0 {
                    super::LABEL_RIGHT_KIDNEY
                } else {
                    super::LABEL_LEFT_KIDNEY
                },
            }
        });
        let renal_veins = [0usize, 1].map(|i| {
            let k = &kidneys[i].outer;
            let h = k.c + (kidneys[i].notch.c - k.c) * 1.3;
            let ivc_pt = v3(vx + 2.0, front(k.c.z) - vr - 3.0, k.c.z - 4.0);
            if i == 0 {
                Tube::polyline(&[(h, 4.5), (ivc_pt, 5.0)])
            } else {
                let over = v3(ax[1], front(k.c.z) - 2.0 * ar - gap - 3.0, k.c.z - 4.0);
                Tube::spline(
                    &[
                        (h, 4.5),
                        (v3(over.x + 15.0, over.y + 2.0, over.z), 4.5),
                        (over, 4.0),
                        (ivc_pt, 5.0),
                    ],
                    4,
                )
            }
        });

        // Stomach: fundus under the left dome, body curving forward and down,
        // antrum crossing to the pylorus right of the midline.
        let dist = d.range(0.65, 1.1);
        let stomach_pts = d.path(
            &[
                (v3(40.0, 0.0, dome + 22.0), 30.0),
                (v3(56.0, -18.0, dome + 52.0), 34.0),
                (v3(46.0, -42.0, dome + 85.0), 31.0),
                (v3(18.0, -56.0, dome + 112.0), 23.0),
                (v3(-8.0, -52.0, dome + 124.0), 15.0),
                (v3(-22.0, -42.0, dome + 128.0), 10.0),
            ],
            6.0,
            dist,
        );
        let ymin = stomach_pts.iter().map(|(p, r)| p.y - r).fold(f32::MAX, f32::min);
        let ymax = stomach_pts.iter().map(|(p, r)| p.y + r).fold(f32::MIN, f32::max);
        let stomach_air = ymin + d.range(0.05, 0.45) * (ymax - ymin);
        let stomach = Tube::spline(&stomach_pts, 6);
        let esophagus = Tube::spline(
            &[
                (v3(8.0, sy(-Z_END) - btop - 8.0, -Z_END), 6.0),
                (v3(16.0, front(dome) - 2.0 * ar - 2.0, dome - 5.0), 6.0),
                (stomach_pts[0].0 + v3(-20.0, -5.0, 0.0), 7.0),
            ],
            5,
        );
        let stomach_wall = d.range(4.0, 6.0);

        // Pancreas: head in the duodenal loop, neck over the portal
        // confluence, body over the aorta, tail to the splenic hilum.
        let pzs = pz + d.sym(6.0);
        let pr_ = [
            d.range(14.0, 17.0),
            d.range(8.5, 10.5),
            d.range(9.5, 12.0),
            d.range(8.5, 10.0),
            d.range(6.5, 8.0),
        ];
        let pancreas_pts = d.path(
            &[
                (v3(-32.0, -14.0, pzs + 14.0), pr_[0]),
                (v3(-10.0, conf.y - 14.0, pzs), pr_[1]),
                (v3(16.0, conf.y - 14.0, pzs - 8.0), pr_[2]),
                (v3(46.0, -6.0, pzs - 20.0), pr_[3]),
                (v3(64.0, 14.0, pzs - 28.0), pr_[4]),
            ],
            3.0,
            1.0,
        );
        let pancreas = Tube::spline(&pancreas_pts, 5);

        // Gallbladder: under the right lobe where it meets the left, its
        // fundus poking below the liver edge.
        let gb_c = rc + v3(d.range(18.0, 30.0), -0.5 * 80.0 + d.sym(6.0), d.range(45.0, 60.0));
        let gb_axes = frame(v3(0.3 + d.sym(0.2), -0.6 + d.sym(0.2), 1.0), v3(1.0, 0.0, 0.0));
        let gb_long = d.range(28.0, 42.0);
        let gb_w = d.range(11.0, 17.0);
        let gallbladder = Blob::new(
            gb_c,
            gb_axes,
            [gb_long, gb_w, gb_w * d.range(0.8, 1.0)],
            d.ripples(0.08),
        );

        let duo_scale = d.range(0.85, 1.15);
        let duodenum = Tube::spline(
            &d.path(
                &[
                    (stomach_pts[5].0, 10.0),
                    (v3(-46.0, -30.0, pz + 6.0), 11.0),
                    (v3(-52.0, -8.0, pz + 22.0), 11.0),
                    (v3(-50.0, -6.0, pz + 50.0), 11.0),
                    (v3(-32.0, -18.0, pz + 68.0), 10.0),
                    (v3(4.0, -34.0, pz + 72.0), 9.0),
                    (v3(30.0, -28.0, pz + 62.0), 9.0),
                    (v3(40.0, -34.0, pz + 45.0), 9.0),
                ],
                4.0,
                duo_scale,
            ),
            5,
        );

        // Colon: ascending on the right, the transverse colon sagging in
        // front, the splenic flexure high on the left, then descending.
        let cr = d.range(0.8, 1.15);
        let sag = d.range(0.0, 40.0);
        let colon_pts = d.path(
            &[
                (v3(-86.0, 0.0, Z_END), 24.0),
                (v3(-90.0, 4.0, dome + 175.0), 22.0),
                (v3(-82.0, -32.0, dome + 148.0), 20.0),
                (v3(-42.0, -62.0, dome + 160.0 + 0.5 * sag), 19.0),
                (v3(0.0, -68.0, dome + 170.0 + sag), 19.0),
                (v3(42.0, -60.0, dome + 150.0 + 0.5 * sag), 19.0),
                (v3(80.0, -24.0, dome + 105.0), 19.0),
                (v3(94.0, 10.0, dome + 150.0), 17.0),
                (v3(92.0, 14.0, Z_END), 17.0),
            ],
            6.0,
            cr,
        );
        let colon = Tube::spline(&colon_pts, 6);
        let colon_air = d.range(-70.0, 0.0);
        let haustra = (d.range(16.0, 24.0), d.range(0.12, 0.3));

        let bowel = d.range(0.4, 1.0);
        let bowel_gas = d.range(0.0, 1.0);
        let oral_contrast = if d.chance(0.3) { d.range(150.0, 350.0) } else { 0.0 };

        Anatomy {
            hu,
            body,
            table,
            diaphragm,
            spine,
            ribs,
            heart,
            paraspinal,
            psoas,
            aorta,
            aorta_margin: d.range(2.0, 4.0),
            iliac,
            calcium,
            ivc,
            portal,
            splenic_vein,
            sma,
            renal_veins,
            hepatic_veins,
            portal_branches,
            liver: [right, left],
            liver_carve,
            spleen,
            spleen_cut,
            kidneys,
            stomach,
            stomach_air,
            stomach_wall,
            esophagus,
            pancreas,
            gallbladder,
            duodenum,
            colon,
            colon_air,
            haustra,
            bowel,
            bowel_gas,
            oral_contrast,
        }
    }
}
