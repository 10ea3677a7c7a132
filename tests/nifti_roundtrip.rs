//! Our NIfTI writer and reader agree, plain and gzipped, i16 and u8.

use nemesis::data::{read_volume, write_volume, AffineSource, VoxelData};

#[test]
fn written_volumes_read_back_in_the_same_orientation() {
    let dir = std::env::temp_dir().join(format!("nemesis-nii-{}", std::process::id()));
    let shape = [5, 6, 7];
    let n = 5 * 6 * 7;
    let hu: Vec<i16> = (0..n as i16).map(|v| v * 7 - 1000).collect();
    let labels: Vec<u8> = (0..n).map(|v| (v % 12) as u8).collect();
    for name in ["v.nii", "v.nii.gz"] {
        let p = dir.join(name);
        write_volume(&p, shape, [2.5, 0.8, 0.7], VoxelData::I16(&hu)).unwrap();
        let v = read_volume(&p).unwrap();
        assert_eq!(v.shape, shape);
        assert_eq!(v.spacing, [2.5, 0.8, 0.7]);
        assert_eq!(v.info.affine_source, AffineSource::Sform);
        assert_eq!(v.info.si_axis, 2);
        assert_eq!(v.hu, hu.iter().map(|&x| x as f32).collect::<Vec<_>>());
    }
    let p = dir.join("l.nii.gz");
    write_volume(&p, shape, [1.0, 1.0, 1.0], VoxelData::U8(&labels)).unwrap();
    let v = read_volume(&p).unwrap();
    assert_eq!(v.info.datatype, "uint8");
    assert_eq!(v.hu, labels.iter().map(|&x| x as f32).collect::<Vec<_>>());
    assert!(write_volume(&p, shape, [1.0; 3], VoxelData::U8(&labels[1..])).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
