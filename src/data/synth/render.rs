//! Paints one axial slice: the trunk wall and cavity first, then fixed
//! retroperitoneal structures (muscles, vessels), then the organs in an order
//! that makes each one give way to its anatomical neighbour, then bone.

use super::anatomy::{Anatomy, K_XY, K_Z};
use super::geom::{lerp, smin, smoothstep, v3, wave, Blob, Tube, V3};
use super::texture::Field;
use super::{LABEL_AORTA, LABEL_GALLBLADDER, LABEL_LIVER, LABEL_PANCREAS, LABEL_SPLEEN, LABEL_STOMACH};
use std::f32::consts::TAU;

/// What occupies a pixel so far; later structures only paint over the
/// regions they may displace.
const AIR: u8 = 0;
const TABLE: u8 = 1;
const FAT: u8 = 2;
const MUSCLE: u8 = 3;
const ABDOMEN: u8 = 4;
const THORAX: u8 = 5;
const FIXED: u8 = 6;
const ORGAN: u8 = 7;
const BONE: u8 = 8;

const fn set(regions: &[u8]) -> u16 {
    let mut m = 0;
    let mut i = 0;
    while i < regions.len() {
        m |= 1 << regions[i];
        i += 1;
    }
    m
}

const CAVITY: u16 = set(&[ABDOMEN, THORAX, FIXED]);
const VISCERA: u16 = set(&[ABDOMEN, ORGAN]);

/// Angular resolution of the per-slice body outline tables.
const LUT: usize = 1024;

/// Voxel coordinates along each axis, z first: centred scanner millimetres and
/// the anatomical frame.
pub(crate) struct Grid {
    pub n: [usize; 3],
    pub mm: [Vec<f32>; 3],
    pub an: [Vec<f32>; 3],
}

impl Grid {
    pub fn new(size: [usize; 3], spacing: [f32; 3]) -> Grid {
        let mm = [0, 1, 2].map(|a| {
            let (n, s) = (size[a], spacing[a]);
            (0..n)
                .map(|i| (i as f32 + 0.5) * s - 0.5 * n as f32 * s)
                .collect::<Vec<f32>>()
        });
        let scale = [K_Z, K_XY, K_XY];
        let an = [0, 1, 2].map(|a| mm[a].iter().map(|&v| v / scale[a]).collect());
        Grid { n: size, mm, an }
    }

    /// The indices along in-plane axis `a` (1 = rows, 2 = columns) whose
    /// anatomical coordinate lies in [lo, hi].
    fn span(&self, a: usize, lo: f32, hi: f32) -> (usize, usize) {
        let c = &self.an[a];
        let n = c.len();
        if n == 0 || hi < c[0] || lo > c[n - 1] {
            return (0, 0);
        }
        let step = if n > 1 { c[1] - c[0] } else { 1.0 };
        let start = ((lo - c[0]) / step).ceil().max(0.0) as usize;
        let end = (((hi - c[0]) / step).floor() + 1.0).clamp(0.0, n as f32) as usize;
        (start.min(n), end.max(start.min(n)))
    }
}

/// A rectangle of pixels: rows y0..y1, columns x0..x1.
#[derive(Clone, Copy, Debug)]
struct PixBox {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
}

pub(crate) struct Textures {
    pub fine: Field,
    pub medium: Field,
    pub bowel: Field,
    pub bowel_fine: Field,
    pub gas: Field,
}

/// Per-thread buffers reused from slice to slice.
pub(crate) struct Scratch {
    region: Vec<u8>,
    dist: Vec<f32>,
    arc: Vec<f32>,
    /// Signed radial distance from the cavity wall (negative inside).
    wall: Vec<f32>,
    lut: Vec<[f32; 3]>,
}

impl Scratch {
    pub fn new(plane: usize) -> Scratch {
        Scratch {
            region: vec![0; plane],
            dist: vec![0.0; plane],
            arc: vec![0.0; plane],
            wall: vec![0.0; plane],
            lut: vec![[0.0; 3]; LUT],
        }
    }
}

/// A monotone stand-in for the polar angle (0..4 for one turn) that needs no
/// trigonometry; the body outline tables are indexed by it.
fn diamond(x: f32, y: f32) -> f32 {
    if x == 0.0 && y == 0.0 {
        return 0.0;
    }
    if y >= 0.0 {
        if x >= 0.0 {
            y / (x + y)
        } else {
            1.0 - x / (-x + y)
        }
    } else if x < 0.0 {
        2.0 - y / (-x - y)
    } else {
        3.0 + x / (x - y)
    }
}

fn undiamond(a: f32) -> (f32, f32) {
    let q = a.floor();
    let f = a - q;
    match q as i32 {
        0 => (1.0 - f, f),
        1 => (-f, 1.0 - f),
        2 => (f - 1.0, -f),
        _ => (f, f - 1.0),
    }
}

pub(crate) fn render_slice(
    an: &Anatomy,
    g: &Grid,
    tx: &Textures,
    iz: usize,
    hu: &mut [f32],
    lab: &mut [u8],
    scratch: &mut Scratch,
) {
    let mut p = Painter {
        an,
        g,
        tx,
        iz,
        z: g.an[0][iz],
        nx: g.n[2],
        ny: g.n[1],
        hu,
        lab,
        s: scratch,
    };
    p.base();
    p.bowel_tubes();
    p.fixed();
    p.organs();
    p.bone();
}

struct Painter<'a> {
    an: &'a Anatomy,
    g: &'a Grid,
    tx: &'a Textures,
    iz: usize,
    z: f32,
    nx: usize,
    ny: usize,
    hu: &'a mut [f32],
    lab: &'a mut [u8],
    s: &'a mut Scratch,
}

impl Painter<'_> {
    fn fine(&self, iy: usize, ix: usize) -> f32 {
        self.tx.fine.at(self.iz, iy, ix)
    }

    fn medium(&self, iy: usize, ix: usize) -> f32 {
        self.tx.medium.at(self.iz, iy, ix)
    }

    fn point(&self, iy: usize, ix: usize) -> V3 {
        v3(self.g.an[2][ix], self.g.an[1][iy], self.z)
    }

    fn pixbox(&self, x0: f32, x1: f32, y0: f32, y1: f32) -> Option<PixBox> {
        let (cx0, cx1) = self.g.span(2, x0, x1);
        let (cy0, cy1) = self.g.span(1, y0, y1);
        (cx0 < cx1 && cy0 < cy1).then_some(PixBox {
            y0: cy0,
            y1: cy1,
            x0: cx0,
            x1: cx1,
        })
    }

    fn blob_box(&self, b: &Blob) -> Option<PixBox> {
        if !b.contains_z(self.z) {
            return None;
        }
        self.pixbox(b.lo.x, b.hi.x, b.lo.y, b.hi.y)
    }

    /// Distance to `tube` (and arc length along it) over the box where the
    /// tube meets this slice, left in `s.dist` and `s.arc`.
    fn tube_field(&mut self, tube: &Tube) -> Option<PixBox> {
        if !tube.contains_z(self.z) {
            return None;
        }
        let mut boxes = Vec::new();
        let mut all: Option<PixBox> = None;
        for (i, seg) in tube.segs.iter().enumerate() {
            let Some([x0, x1, y0, y1]) = seg.plane_box(self.z) else {
                continue;
            };
            let Some(b) = self.pixbox(x0, x1, y0, y1) else {
                continue;
            };
            boxes.push((i, b));
            all = Some(match all {
                None => b,
                Some(a) => PixBox {
                    y0: a.y0.min(b.y0),
                    y1: a.y1.max(b.y1),
                    x0: a.x0.min(b.x0),
                    x1: a.x1.max(b.x1),
                },
            });
        }
        let all = all?;
        let nx = self.nx;
        for iy in all.y0..all.y1 {
            self.s.dist[iy * nx + all.x0..iy * nx + all.x1].fill(f32::MAX);
        }
        for (i, b) in boxes {
            let seg = &tube.segs[i];
            for iy in b.y0..b.y1 {
                for ix in b.x0..b.x1 {
                    let (d, arc) = seg.dist(self.point(iy, ix));
                    let k = iy * nx + ix;
                    if d < self.s.dist[k] {
                        self.s.dist[k] = d;
                        self.s.arc[k] = arc;
                    }
                }
            }
        }
        Some(all)
    }

    /// Calls `f(painter, iy, ix, k, distance, arc)` for every pixel of an
    /// allowed region inside `tube` (distance < `reach`).
    fn each_in_tube(
        &mut self,
        tube: &Tube,
        reach: f32,
        allowed: u16,
        mut f: impl FnMut(&mut Self, usize, usize, usize, f32, f32),
    ) {
        let Some(b) = self.tube_field(tube) else {
            return;
        };
        for iy in b.y0..b.y1 {
            for ix in b.x0..b.x1 {
                let k = iy * self.nx + ix;
                let d = self.s.dist[k];
                if d < reach && allowed & (1 << self.s.region[k]) != 0 {
                    let arc = self.s.arc[k];
                    f(self, iy, ix, k, d, arc);
                }
            }
        }
    }

    fn put(&mut self, k: usize, hu: f32, label: u8, region: u8) {
        self.hu[k] = hu;
        self.lab[k] = label;
        self.s.region[k] = region;
    }

    /// Air, couch, skin, fat, muscle wall, and inside it lung above the
    /// diaphragm and bowel in fat below it.
    fn base(&mut self) {
        let an = self.an;
        for (k, e) in self.s.lut.iter_mut().enumerate() {
            let (c, s) = undiamond(4.0 * k as f32 / LUT as f32);
            *e = an.body.radii(libm::atan2f(s, c), self.z);
        }
        let h = &an.hu;
        let dia = &an.diaphragm;
        for iy in 0..self.ny {
            let y = self.g.an[1][iy];
            for ix in 0..self.nx {
                let x = self.g.an[2][ix];
                let k = iy * self.nx + ix;
                let r = (x * x + y * y).sqrt();
                let u = diamond(x, y) * (LUT as f32 / 4.0);
                let i0 = (u as usize) % LUT;
                let t = u - u.floor();
                let (a, b) = (self.s.lut[i0], self.s.lut[(i0 + 1) % LUT]);
                let rs = lerp(a[0], b[0], t);
                let rl = lerp(a[1], b[1], t);
                let rc = lerp(a[2], b[2], t);
                self.lab[k] = 0;
                self.s.wall[k] = r - rc;
                if r >= rs {
                    let (v, reg) = match an.table.hu(x, y) {
                        Some(v) => (v, TABLE),
                        None => (-1000.0, AIR),
                    };
                    self.hu[k] = v;
                    self.s.region[k] = reg;
                } else if r >= rl {
                    let v = if rs - r < an.body.skin {
                        h.skin
                    } else {
                        h.fat + 8.0 * self.medium(iy, ix)
                    };
                    self.put(k, v, 0, FAT);
                } else if r >= rc {
                    // The linea alba parts the two rectus muscles in front.
                    let v = if y < 0.0 && x.abs() < 3.0 {
                        h.fat + 8.0 * self.medium(iy, ix)
                    } else {
                        h.muscle + 5.0 * self.medium(iy, ix)
                    };
                    self.put(k, v, 0, MUSCLE);
                } else {
                    let sd = dia.height(x, y);
                    if self.z < sd {
                        let v = self.lung(iy, ix, y);
                        self.put(k, v, 0, THORAX);
                    } else {
                        // Distance below the dome along its normal, so the
                        // muscle sheet keeps its thickness where it is steep.
                        let (gx, gy) = dia.gradient(x, y);
                        let depth = (self.z - sd) / (1.0 + gx * gx + gy * gy).sqrt();
                        if depth < dia.thick {
                            let v = h.muscle + 4.0 * self.medium(iy, ix);
                            self.put(k, v, 0, FIXED);
                        } else {
                            let v = self.abdomen(iy, ix, x, y);
                            self.put(k, v, 0, ABDOMEN);
                        }
                    }
                }
            }
        }
        self.heart();
    }

    fn lung(&self, iy: usize, ix: usize, y: f32) -> f32 {
        // Dependent (posterior) lung is denser; vessels are the high peaks of
        // the fine field.
        let base = self.an.hu.lung + 30.0 * (y / 90.0);
        let v = self.fine(iy, ix);
        lerp(base, 30.0, smoothstep(0.5, 0.75, v))
    }

    /// Mesenteric fat with small-bowel loops, the loops crowding the lower
    /// abdomen and sparing the retroperitoneum.
    fn abdomen(&self, iy: usize, ix: usize, x: f32, y: f32) -> f32 {
        let an = self.an;
        let h = &an.hu;
        let dome = an.diaphragm.right.z;
        let low = smoothstep(dome + 70.0, dome + 170.0, self.z);
        let back = smoothstep(an.spine.y0 - 30.0, an.spine.y0 + 5.0, y);
        let side = smoothstep(60.0, 110.0, x.abs()) * 0.5;
        let crowd = an.bowel * (0.25 + 0.75 * low) * (1.0 - back) * (1.0 - side);
        let b = self.tx.bowel.at(self.iz, iy, ix) + 0.35 * self.tx.bowel_fine.at(self.iz, iy, ix);
        let thr = 0.6 - 0.8 * crowd;
        let fat = h.fat + 8.0 * self.medium(iy, ix);
        if b <= thr {
            // Small mesenteric vessels.
            let v = self.fine(iy, ix);
            return lerp(fat, 90.0, smoothstep(0.62, 0.8, v) * (1.0 - back));
        }
        let depth = b - thr;
        if depth < 0.07 {
            return lerp(fat, h.bowel_wall, smoothstep(0.0, 0.03, depth));
        }
        let gas = self.tx.gas.at(self.iz, iy, ix);
        if gas > 0.75 - 0.45 * an.bowel_gas {
            return -990.0;
        }
        if an.oral_contrast > 0.0 {
            return lerp(h.bowel_fluid, an.oral_contrast, smoothstep(-0.2, 0.2, gas));
        }
        h.bowel_fluid + 10.0 * self.fine(iy, ix)
    }

    fn heart(&mut self) {
        let an = self.an;
        let Some(b) = self.blob_box(&an.heart) else {
            return;
        };
        for iy in b.y0..b.y1 {
            for ix in b.x0..b.x1 {
                let k = iy * self.nx + ix;
                if self.s.region[k] != THORAX {
                    continue;
                }
                let f = an.heart.eval(self.point(iy, ix));
                if f < 0.0 {
                    let v = if f > -0.16 { an.hu.myocardium } else { an.hu.blood };
                    self.put(k, v, 0, FIXED);
                } else if f < 0.06 {
                    let v = an.hu.fat + 5.0 * self.medium(iy, ix);
                    self.put(k, v, 0, FIXED);
                }
            }
        }
    }

    /// Colon and duodenum: hollow bowel with its own wall and contents, drawn
    /// over the mesentery and under everything else.
    fn bowel_tubes(&mut self) {
        let an = self.an;
        let h = &an.hu;
        let allowed = set(&[ABDOMEN]);
        let (period, depth) = an.haustra;
        self.each_in_tube(&an.colon, 6.0, allowed, |p, iy, ix, k, d, arc| {
            // Haustral folds: the lumen narrows periodically along the colon.
            let d = d + depth * 20.0 * (0.5 + 0.5 * wave(TAU * arc / period));
            if d >= 0.0 {
                return;
            }
            let y = p.g.an[1][iy];
            let v = if d > -2.5 {
                h.bowel_wall
            } else if y < an.colon_air {
                -1000.0
            } else {
                // Stool: soft matter mottled with gas bubbles.
                let m = p.fine(iy, ix);
                if m > 0.3 {
                    -900.0
                } else {
                    lerp(-60.0, 40.0, smoothstep(-0.4, 0.2, m))
                }
            };
            p.put(k, v, 0, ABDOMEN);
        });
        self.each_in_tube(&an.duodenum, 0.0, allowed, |p, iy, ix, k, d, _| {
            let v = if d > -2.5 {
                h.bowel_wall
            } else if p.tx.gas.at(p.iz, iy, ix) > 0.6 {
                -990.0
            } else {
                h.bowel_fluid + 8.0 * p.fine(iy, ix)
            };
            p.put(k, v, 0, ABDOMEN);
        });
    }

    /// Retroperitoneal muscles and the great vessels. They are painted before
    /// the organs and marked FIXED, so organs mould around them.
    fn fixed(&mut self) {
        let an = self.an;
        let h = &an.hu;
        let muscles = set(&[MUSCLE, ABDOMEN, THORAX, FIXED]);
        for t in &an.paraspinal {
            self.each_in_tube(t, 0.0, muscles, |p, iy, ix, k, _, _| {
                let v = h.muscle + 5.0 * p.medium(iy, ix);
                p.put(k, v, 0, FIXED);
            });
        }
        for t in &an.psoas {
            self.each_in_tube(t, 0.0, muscles, |p, iy, ix, k, _, _| {
                let v = h.muscle - 2.0 + 5.0 * p.medium(iy, ix);
                p.put(k, v, 0, FIXED);
            });
        }
        // A fat plane around the aorta keeps organs off it.
        let fat_plane = set(&[ABDOMEN]);
        self.each_in_tube(&an.aorta, an.aorta_margin, fat_plane, |p, iy, ix, k, _, _| {
            let v = h.fat + 6.0 * p.medium(iy, ix);
            p.put(k, v, 0, FIXED);
        });
        self.each_in_tube(&an.esophagus, 0.0, CAVITY, |p, _, _, k, d, _| {
            let v = if d < -4.0 { -900.0 } else { h.muscle };
            p.put(k, v, 0, FIXED);
        });
        let veins: [(&Tube, f32); 3] = [(&an.ivc, h.ivc), (&an.portal, h.portal), (&an.splenic_vein, h.portal)];
        for (t, v) in veins {
            self.each_in_tube(t, 0.0, CAVITY, |p, _, _, k, _, _| p.put(k, v, 0, FIXED));
        }
        for t in &an.renal_veins {
            self.each_in_tube(t, 0.0, CAVITY, |p, _, _, k, _, _| p.put(k, h.renal_vein, 0, FIXED));
        }
        self.each_in_tube(&an.sma, 0.0, CAVITY, |p, _, _, k, _, _| p.put(k, h.aorta, 0, FIXED));
        for t in &an.iliac {
            self.each_in_tube(t, 0.0, CAVITY, |p, _, _, k, _, _| p.put(k, h.aorta, 0, FIXED));
        }
        self.each_in_tube(&an.aorta, 0.0, CAVITY, |p, iy, ix, k, d, _| {
            let q = p.point(iy, ix);
            let calcified = d > -4.0 && an.calcium.iter().any(|&(c, r)| (q - c).norm() < r);
            let v = if calcified { h.calcium } else { h.aorta };
            p.put(k, v, LABEL_AORTA, FIXED);
        });
    }

    /// The order settles overlaps the way neighbours press on each other:
    /// the stomach dents the left lobe, the spleen the fundus, the kidneys the
    /// liver, and the gallbladder sits in its fossa under the liver.
    fn organs(&mut self) {
        self.liver();
        self.stomach();
        self.spleen();
        for i in 0..2 {
            self.kidney(i);
        }
        self.pancreas();
        self.gallbladder();
    }

    fn liver(&mut self) {
        let an = self.an;
        let [r, l] = &an.liver;
        let boxes = [self.blob_box(r), self.blob_box(l)];
        let Some(b) = union(boxes[0], boxes[1]) else {
            return;
        };
        let (cx, cy, ca, cb) = an.liver_carve;
        for iy in b.y0..b.y1 {
            for ix in b.x0..b.x1 {
                let k = iy * self.nx + ix;
                if VISCERA & (1 << self.s.region[k]) == 0 {
                    continue;
                }
                let q = self.point(iy, ix);
                let m = self.medium(iy, ix);
                let f = smin(r.eval(q), l.eval(q), 0.3) + 0.03 * m;
                let (u, w) = ((q.x - cx) / ca, (q.y - cy) / cb);
                let carve = (u * u + w * w).sqrt() - 1.0;
                if f.max(-carve) < 0.0 {
                    let v = an.hu.liver + 4.0 * m + 2.0 * self.fine(iy, ix);
                    self.put(k, v, LABEL_LIVER, ORGAN);
                }
            }
        }
        // Vessels inside the liver keep its label, as in the BTCV masks.
        let in_liver = set(&[ORGAN]);
        let hv = an.hu.liver + an.hu.hepatic_vein;
        for t in &an.hepatic_veins {
            self.each_in_tube(t, 0.0, in_liver, |p, _, _, k, _, _| {
                if p.lab[k] == LABEL_LIVER {
                    p.hu[k] = hv;
                }
            });
        }
        for t in &an.portal_branches {
            self.each_in_tube(t, 0.0, in_liver, |p, _, _, k, _, _| {
                if p.lab[k] == LABEL_LIVER {
                    p.hu[k] = an.hu.portal;
                }
            });
        }
    }

    fn spleen(&mut self) {
        let an = self.an;
        let Some(b) = self.blob_box(&an.spleen) else {
            return;
        };
        for iy in b.y0..b.y1 {
            for ix in b.x0..b.x1 {
                let k = iy * self.nx + ix;
                if VISCERA & (1 << self.s.region[k]) == 0 {
                    continue;
                }
                let q = self.point(iy, ix);
                let m = self.medium(iy, ix);
                let f = an.spleen.eval(q).max(-an.spleen_cut.eval(q)) + 0.02 * m;
                if f < 0.0 {
                    let v = an.hu.spleen + 3.0 * m + 2.0 * self.fine(iy, ix);
                    self.put(k, v, LABEL_SPLEEN, ORGAN);
                }
            }
        }
    }

    fn stomach(&mut self) {
        let an = self.an;
        let h = &an.hu;
        self.each_in_tube(&an.stomach, 2.0, VISCERA, |p, iy, ix, k, d, _| {
            let m = p.medium(iy, ix);
            // Rugal folds: the wall thickens and thins irregularly.
            let d = d + 1.5 * p.fine(iy, ix);
            if d >= 0.0 {
                return;
            }
            let y = p.g.an[1][iy];
            let v = if d > -an.stomach_wall * (1.0 + 0.7 * m.max(0.0)) {
                h.stomach_wall
            } else if y < an.stomach_air {
                -1000.0
            } else if h.food {
                h.stomach_fluid + 25.0 + 40.0 * p.fine(iy, ix)
            } else {
                h.stomach_fluid + 3.0 * m
            };
            p.put(k, v, LABEL_STOMACH, ORGAN);
        });
    }

    fn kidney(&mut self, i: usize) {
        let an = self.an;
        let kid = &an.kidneys[i];
        let h = &an.hu;
        let Some(b) = self.blob_box(&kid.outer) else {
            return;
        };
        for iy in b.y0..b.y1 {
            for ix in b.x0..b.x1 {
                let k = iy * self.nx + ix;
                if VISCERA & (1 << self.s.region[k]) == 0 {
                    continue;
                }
                let q = self.point(iy, ix);
                let n = kid.outer.local(q);
                let fo = kid.outer.eval_local(n);
                if fo.max(-kid.notch.eval(q)) >= 0.0 {
                    continue;
                }
                let fine = self.fine(iy, ix);
                let rho = n.norm();
                let v = if fo > -0.27 + 0.05 * fine {
                    h.cortex
                } else if rho < 0.42 {
                    // Renal sinus: fat around the collecting system.
                    lerp(h.medulla - 5.0, h.sinus, smoothstep(-0.2, 0.3, fine))
                } else if wave(9.0 * n.x + 2.5 * n.z) > 0.55 {
                    // Columns of cortex between the medullary pyramids.
                    h.cortex
                } else {
                    h.medulla
                };
                self.put(k, v + 3.0 * fine, kid.label, ORGAN);
            }
        }
    }

    fn pancreas(&mut self) {
        let an = self.an;
        let h = &an.hu;
        self.each_in_tube(&an.pancreas, 3.0, VISCERA, |p, iy, ix, k, d, _| {
            // A lobulated outline and fat between the lobules.
            let fine = p.fine(iy, ix);
            if d + 2.5 * fine >= 0.0 {
                return;
            }
            let cleft = smoothstep(0.25, 0.55, -fine) * h.pancreas_fat;
            let v = lerp(h.pancreas + 4.0 * p.medium(iy, ix), h.fat, cleft);
            p.put(k, v, LABEL_PANCREAS, ORGAN);
        });
    }

    fn gallbladder(&mut self) {
        let an = self.an;
        let gb = &an.gallbladder;
        let Some(b) = self.blob_box(gb) else {
            return;
        };
        for iy in b.y0..b.y1 {
            for ix in b.x0..b.x1 {
                let k = iy * self.nx + ix;
                if VISCERA & (1 << self.s.region[k]) == 0 {
                    continue;
                }
                let f = gb.eval(self.point(iy, ix));
                if f < 0.0 {
                    let v = if f > -0.12 {
                        an.hu.gb_wall
                    } else {
                        an.hu.bile + 2.0 * self.medium(iy, ix)
                    };
                    self.put(k, v, LABEL_GALLBLADDER, ORGAN);
                }
            }
        }
    }

    fn bone(&mut self) {
        self.spine();
        self.ribs();
    }

    fn spine(&mut self) {
        let an = self.an;
        let sp = &an.spine;
        let h = &an.hu;
        let z = self.z;
        let yv = sp.y(z);
        let (a, b) = sp.semi(z);
        let cy = sp.canal_y(z);
        let [crx, cry] = sp.canal;
        let reach = crx + sp.arch + sp.transverse;
        let Some(bx) = self.pixbox(-reach, reach, yv - b, cy + cry + sp.arch + sp.spinous) else {
            return;
        };
        let u = (z - sp.phase) / sp.period;
        let f = u - u.floor();
        let disc = f > 1.0 - sp.disc;
        let end_plate = sp.cortex / sp.period;
        let plate = f < end_plate || f > 1.0 - sp.disc - end_plate;
        // The posterior elements sit a little lower than the body they belong to.
        let fp = (u + 0.12) - (u + 0.12).floor();
        let arch = fp < 0.8;
        let transverse = (0.2..0.5).contains(&fp);
        let thin_bone = lerp(h.marrow, h.bone, 0.7);
        for iy in bx.y0..bx.y1 {
            let y = self.g.an[1][iy];
            for ix in bx.x0..bx.x1 {
                let x = self.g.an[2][ix];
                let k = iy * self.nx + ix;
                let reg = self.s.region[k];
                if reg == AIR || reg == TABLE {
                    continue;
                }
                let (bu, bw) = (x / a, (y - yv) / b);
                let qb = bu * bu + bw * bw;
                if qb < 1.0 {
                    let v = if disc {
                        h.disc + if qb > 0.5 { 15.0 } else { 0.0 }
                    } else if plate || qb.sqrt() > 1.0 - sp.cortex / b {
                        h.bone
                    } else {
                        h.marrow + 60.0 * self.fine(iy, ix)
                    };
                    self.put(k, v, 0, BONE);
                    continue;
                }
                let (cu, cw) = (x / crx, (y - cy) / cry);
                let qc = cu * cu + cw * cw;
                if qc < 1.0 {
                    self.put(k, h.csf, 0, BONE);
                    continue;
                }
                if !arch {
                    continue;
                }
                let (ou, ow) = (x / (crx + sp.arch), (y - cy) / (cry + sp.arch));
                let ring = ou * ou + ow * ow < 1.0 && y > yv + 0.3 * b;
                let tip = cy + cry + sp.arch + sp.spinous;
                let spinous = y > cy && y < tip && x.abs() < 3.0 * (1.0 - 0.4 * (y - cy) / (tip - cy));
                // Transverse processes taper towards their tips.
                let tp_t = ((x.abs() - crx) / (reach - crx)).clamp(0.0, 1.0);
                let tp = transverse
                    && x.abs() > crx
                    && x.abs() < reach
                    && (y - (cy - 0.3 * cry)).abs() < 3.0 * (1.0 - 0.5 * tp_t);
                if ring || spinous || tp {
                    self.put(k, thin_bone, 0, BONE);
                }
            }
        }
    }

    fn ribs(&mut self) {
        let an = self.an;
        let ribs = &an.ribs;
        let z = self.z;
        if z < ribs.zmin || z > ribs.zmax {
            return;
        }
        let h = &an.hu;
        for iy in 0..self.ny {
            let y = self.g.an[1][iy];
            for ix in 0..self.nx {
                let k = iy * self.nx + ix;
                let w = self.s.wall[k] - ribs.offset;
                if w.abs() > ribs.half_radial {
                    continue;
                }
                let reg = self.s.region[k];
                if reg == AIR || reg == TABLE || reg == BONE {
                    continue;
                }
                let x = self.g.an[2][ix];
                let side = if x < 0.0 { -1.0 } else { 1.0 };
                // Angle round the body from the back (0) to the front (π).
                let phi = libm::atan2f(x.abs(), y);
                if phi < 0.35 {
                    continue;
                }
                for rib in ribs.list.iter().filter(|r| r.side == side && phi <= r.end) {
                    let dz = (z - (rib.z0 + rib.slope * phi)) / ribs.half_height;
                    let dr = w / ribs.half_radial;
                    let q = dz * dz + dr * dr;
                    if q < 1.0 {
                        let v = if phi > rib.end - ribs.cartilage {
                            h.cartilage
                        } else if q > 0.35 {
                            h.bone
                        } else {
                            h.marrow
                        };
                        self.put(k, v, 0, BONE);
                        break;
                    }
                }
            }
        }
    }
}

fn union(a: Option<PixBox>, b: Option<PixBox>) -> Option<PixBox> {
    match (a, b) {
        (Some(a), Some(b)) => Some(PixBox {
            y0: a.y0.min(b.y0),
            y1: a.y1.max(b.y1),
            x0: a.x0.min(b.x0),
            x1: a.x1.max(b.x1),
        }),
        (a, None) => a,
        (None, b) => b,
    }
}
