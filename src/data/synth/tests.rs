use super::*;

/// The default field of view (240 × 128 × 128 mm) at a coarse grid, so tests
/// see the whole anatomy at a fraction of the voxels.
fn small(size: [usize; 3]) -> PhantomOptions {
    let fov = [240.0, 128.0, 128.0];
    PhantomOptions {
        size,
        spacing: [0, 1, 2].map(|a| fov[a] / size[a] as f32),
        ..PhantomOptions::default()
    }
}

fn gen(seed: u64, index: u64, opts: &PhantomOptions) -> Phantom {
    match phantom(seed, index, opts) {
        Ok(p) => p,
        Err(e) => panic!("phantom({seed}, {index}): {e}"),
    }
}

fn count(p: &Phantom, label: u8) -> usize {
    p.labels.iter().filter(|&&l| l == label).count()
}

/// Mean HU over the voxels of `label` whose four in-plane neighbours carry
/// it too, so the blur across organ borders does not pull the mean.
fn interior_mean(p: &Phantom, label: u8) -> Option<f32> {
    let [nz, ny, nx] = p.size;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for z in 0..nz {
        for y in 1..ny - 1 {
            for x in 1..nx - 1 {
                let i = p.offset(z, y, x);
                let inside = [i, i - 1, i + 1, i - nx, i + nx].iter().all(|&j| p.labels[j] == label);
                if inside {
                    sum += p.hu[i] as f64;
                    n += 1;
                }
            }
        }
    }
    (n > 0).then(|| (sum / n as f64) as f32)
}

#[test]
fn same_seed_and_index_give_identical_phantoms() {
    let o = small([32, 48, 48]);
    assert_eq!(gen(7, 3, &o), gen(7, 3, &o));
}

#[test]
fn seeds_and_indices_give_different_phantoms() {
    let o = small([32, 48, 48]);
    let a = gen(1, 0, &o);
    for other in [gen(2, 0, &o), gen(1, 1, &o)] {
        let diff = a.hu.iter().zip(&other.hu).filter(|(x, y)| x != y).count();
        assert!(diff > a.hu.len() / 2, "only {diff} voxels differ");
        assert_ne!(a.labels, other.labels);
    }
}

#[test]
fn phantom_does_not_depend_on_thread_count() {
    let o = small([24, 40, 40]);
    let many = gen(11, 5, &o);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map(|pool| pool.install(|| gen(11, 5, &o)));
    match one {
        Ok(one) => assert_eq!(one, many),
        Err(e) => panic!("thread pool: {e}"),
    }
}

#[test]
fn labels_are_btcv_values() {
    let p = gen(4, 2, &small([32, 48, 48]));
    assert!(p.labels.iter().all(|&l| l == 0 || ORGAN_LABELS.contains(&l)));
    assert!(ORGAN_LABELS.iter().all(|&l| label_name(l).is_some()));
    assert_eq!(label_name(0), None);
}

#[test]
fn every_organ_is_in_every_default_phantom() {
    let o = PhantomOptions::default();
    for seed in 0..4 {
        let p = gen(seed, seed * 17, &o);
        assert_eq!(p.hu.len(), 96 * 160 * 160);
        assert_eq!(p.labels.len(), p.hu.len());
        for l in ORGAN_LABELS {
            let n = count(&p, l);
            // At least about a cubic centimetre of each organ.
            assert!(n > 400, "seed {seed}: {} has {n} voxels", label_name(l).unwrap_or("?"));
        }
    }
}

#[test]
fn hu_values_are_plausible() {
    let o = small([32, 96, 96]);
    for seed in [3, 8] {
        let p = gen(seed, 0, &o);
        let mean = |l: u8| interior_mean(&p, l).unwrap_or(f32::NAN);
        let liver = mean(LABEL_LIVER);
        assert!((40.0..80.0).contains(&liver), "liver {liver}");
        let spleen = mean(LABEL_SPLEEN);
        assert!((30.0..70.0).contains(&spleen), "spleen {spleen}");
        let aorta = mean(LABEL_AORTA);
        assert!(aorta > 150.0, "aorta {aorta}");
        for l in [LABEL_RIGHT_KIDNEY, LABEL_LEFT_KIDNEY] {
            let k = mean(l);
            assert!((60.0..200.0).contains(&k), "kidney {l}: {k}");
        }
        let pancreas = mean(LABEL_PANCREAS);
        assert!((10.0..80.0).contains(&pancreas), "pancreas {pancreas}");
        let gb = mean(LABEL_GALLBLADDER);
        assert!((-20.0..60.0).contains(&gb), "gallbladder {gb}");
        // Bone: vertebrae and ribs, unlabelled.
        let bone = p.hu.iter().zip(&p.labels).filter(|&(&h, &l)| l == 0 && h > 300).count();
        assert!(bone > 100, "{bone} bone voxels");
        assert!(p.hu.iter().all(|&h| (-1024..=3071).contains(&h)));
        // Air in the anterior corners, outside the body.
        let [nz, _, nx] = p.size;
        let mut air = Vec::new();
        for z in 0..nz {
            for y in 0..4 {
                for x in (0..4).chain(nx - 4..nx) {
                    air.push(p.hu[p.offset(z, y, x)] as f32);
                }
            }
        }
        let m = air.iter().sum::<f32>() / air.len() as f32;
        let sd = (air.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / air.len() as f32).sqrt();
        assert!((m + 1000.0).abs() < 4.0, "air mean {m}");
        assert!(sd > 5.0 && sd < 25.0, "air noise {sd}");
    }
}

#[test]
fn lung_bases_sit_in_the_top_slices() {
    let (mut top, mut bottom, mut plane) = (0, 0, 0);
    for seed in 0..4 {
        let p = gen(seed, 0, &small([32, 64, 64]));
        plane = p.size[1] * p.size[2];
        // Lung attenuation above the couch (whose foam core is as dark);
        // bowel gas blurred into its surroundings falls in this window too,
        // but sparsely.
        let rows = p.size[1] * 3 / 4 * p.size[2];
        let lung = |z: usize| {
            p.hu[z * plane..z * plane + rows]
                .iter()
                .filter(|&&h| (-920..-700).contains(&h))
                .count()
        };
        top += lung(0);
        bottom += lung(p.size[0] - 1);
    }
    assert!(top > plane / 5, "top slices: {top} lung voxels");
    assert!(bottom * 3 < top, "bottom slices {bottom}, top {top}");
}

#[test]
fn spacing_changes_voxel_counts_not_anatomy() {
    let base = small([32, 48, 48]);
    let finer_z = small([64, 48, 48]);
    let finer_y = small([32, 96, 48]);
    let a = gen(9, 1, &base);
    for (o, what) in [(finer_z, "z"), (finer_y, "y")] {
        let b = gen(9, 1, &o);
        let total = |p: &Phantom| ORGAN_LABELS.iter().map(|&l| count(p, l)).sum::<usize>() as f32;
        let ratio = total(&b) / total(&a);
        assert!((ratio - 2.0).abs() < 0.2, "{what}: all organs ×{ratio}");
        for l in [LABEL_LIVER, LABEL_STOMACH] {
            let r = count(&b, l) as f32 / count(&a, l) as f32;
            assert!((r - 2.0).abs() < 0.3, "{what}: label {l} ×{r}");
        }
    }
    // Same size, coarser spacing: a larger field of view around the same body.
    let wide = PhantomOptions {
        spacing: [7.5, 4.0, 4.0],
        ..base.clone()
    };
    let w = gen(9, 1, &wide);
    let r = count(&w, LABEL_LIVER) as f32 / count(&a, LABEL_LIVER) as f32;
    let expect = (2.667f32 / 4.0).powi(2);
    assert!((r / expect - 1.0).abs() < 0.2, "wide: liver ×{r}, expected ×{expect}");
}

#[test]
fn crops_see_different_organ_sets() {
    // The organ-presence probe needs organs that come and go between tiles.
    let o = small([48, 32, 32]);
    let mut sets = std::collections::BTreeSet::new();
    for seed in 0..6 {
        let p = gen(seed, 0, &o);
        let plane = p.size[1] * p.size[2];
        for tile in 0..3 {
            let labels = &p.labels[tile * 16 * plane..(tile + 1) * 16 * plane];
            let present: Vec<u8> = ORGAN_LABELS.iter().copied().filter(|l| labels.contains(l)).collect();
            sets.insert(present);
        }
    }
    assert!(sets.len() >= 5, "only {} distinct organ sets: {sets:?}", sets.len());
}

#[test]
fn bad_options_are_rejected() {
    let ok = PhantomOptions::default();
    let bad = [
        PhantomOptions {
            size: [0, 16, 16],
            ..ok.clone()
        },
        PhantomOptions {
            size: [16, 1025, 16],
            ..ok.clone()
        },
        PhantomOptions {
            spacing: [2.5, 0.0, 0.8],
            ..ok.clone()
        },
        PhantomOptions {
            spacing: [-1.0, 0.8, 0.8],
            ..ok.clone()
        },
        PhantomOptions {
            spacing: [2.5, 0.8, f32::NAN],
            ..ok.clone()
        },
        PhantomOptions {
            spacing: [2.5, 1e30, 0.8],
            ..ok.clone()
        },
        PhantomOptions {
            noise_hu: -1.0,
            ..ok.clone()
        },
        PhantomOptions {
            blur_sigma_vox: f32::INFINITY,
            ..ok.clone()
        },
    ];
    for o in &bad {
        let e = phantom(0, 0, o).err();
        assert!(e.is_some(), "accepted {o:?}");
        assert!(!e.map(|e| e.to_string()).unwrap_or_default().is_empty());
    }
    assert_eq!(
        phantom(0, MAX_INDEX + 1, &small([4, 4, 4])).err(),
        Some(SynthError::IndexTooLarge(MAX_INDEX + 1))
    );
}

#[test]
fn tiny_and_unblurred_volumes_work() {
    for size in [[1, 1, 1], [1, 7, 3], [5, 1, 9]] {
        let o = PhantomOptions {
            noise_hu: 0.0,
            blur_sigma_vox: 0.0,
            ..small(size)
        };
        let p = gen(1, 2, &o);
        assert_eq!(p.hu.len(), size.iter().product::<usize>());
    }
}
