#!/usr/bin/env python3
"""Write the DICOM fixtures of tests/dicom.rs with pydicom (and GDCM for the
JPEG transfer syntaxes), and beside each good series the same volume as
NIfTI written by hand from the same array and the affine SPEC §2 gives, so
the test compares the DICOM reader with the NIfTI reader:

    python3 tools/make_dicom_fixtures.py tests/fixtures/dicom

A small phantom volume (12 rows × 10 columns × 7 slices, int16 with a
rescale, or uint16), written as a series per case:

- axial_implicit, axial_explicit, axial_deflate, axial_rle,
  axial_jpegll (JPEG lossless, process 14 SV1), axial_j2k (JPEG 2000
  lossless: read only in a build with the jpeg2000 feature):
  the transfer syntaxes real CT comes in; file names and InstanceNumbers
  shuffled so neither gives the slice order.
- coronal: slices along anterior–posterior; tilted: a gantry tilt of
  15° about the x axis.
- unsigned: uint16 pixels, RescaleIntercept -1024.
- two_series: two series in one folder.
- with_localizer: a series plus a localizer image (ImageType LOCALIZER) and
  a non-image object.
- multiframe: one enhanced CT object, its frames in shuffled order, the
  geometry in the per-frame and shared functional groups.
- bad_spacing: one slice missing in the middle.
- bad_truncated: one file cut short; bad_notdicom: a text file among them.
"""
import os
import random
import shutil
import struct
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                         RLELossless, JPEGLosslessSV1, JPEG2000Lossless, CTImageStorage, generate_uid)

ROWS, COLS, SLICES = 12, 10, 7


def phantom(seed, unsigned=False):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(SLICES), np.arange(ROWS), np.arange(COLS), indexing="ij")
    hu = -1000 + 1000 * (((i - 4.5) ** 2 / 16 + (j - 5.5) ** 2 / 25) < 1) + 40 * k + rng.integers(-20, 20, (SLICES, ROWS, COLS))
    hu = hu.astype(np.int32)
    if unsigned:
        return (hu + 1024).astype(np.uint16), 1.0, -1024.0
    # Stored = (HU + 1000) / 2 with slope 2, intercept -1000 (stored as int16).
    return ((hu + 1000) // 2).astype(np.int16), 2.0, -1000.0


def series(stored, slope, inter, row_dir, col_dir, origin, spacing, slice_step, study, uid=None, desc="CT"):
    """Datasets of one series: slice k at origin + k·slice_step."""
    uid = uid or generate_uid()
    out = []
    for k in range(stored.shape[0]):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid
        ds.SeriesDescription = desc
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = "Phantom"
        ds.PatientID = "0"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.ImageOrientationPatient = list(row_dir) + list(col_dir)
        ds.ImagePositionPatient = [float(x) for x in np.asarray(origin) + k * np.asarray(slice_step)]
        ds.SliceThickness = 99.0  # deliberately wrong: spacing comes from positions
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0 if stored.dtype == np.uint16 else 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = inter
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out


def save(datasets, folder, ts, shuffle_seed=0):
    os.makedirs(folder, exist_ok=True)
    order = list(range(len(datasets)))
    random.Random(shuffle_seed).shuffle(order)
    numbers = list(range(1, len(datasets) + 1))
    random.Random(shuffle_seed + 1).shuffle(numbers)
    for n, k in enumerate(order):
        ds = datasets[k]
        ds.InstanceNumber = numbers[k]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = os.path.join(folder, f"img{n:03d}.dcm")
        if ts in (JPEGLosslessSV1, JPEG2000Lossless):
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(path, enforce_file_format=True)
            gdcm_transcode(path, ts)
        elif ts == RLELossless:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(RLELossless)
            ds.save_as(path, enforce_file_format=True)
        else:
            ds.file_meta.TransferSyntaxUID = ts
            ds.save_as(path, enforce_file_format=True)


def gdcm_transcode(path, ts):
    import gdcm
    r = gdcm.ImageReader()
    r.SetFileName(path)
    assert r.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(
        gdcm.TransferSyntax.JPEGLosslessProcess14_1 if ts == JPEGLosslessSV1 else gdcm.TransferSyntax.JPEG2000Lossless))
    change.SetInput(r.GetImage())
    assert change.Change(), path
    w = gdcm.ImageWriter()
    w.SetFileName(path)
    w.SetFile(r.GetFile())
    w.SetImage(change.GetOutput())
    assert w.Write(), path


def nifti(path, stored, slope, inter, row_dir, col_dir, origin, spacing, slice_step):
    """The series as NIfTI: data[i, j, k] = column i, row j, slice k of the
    stored values (slope/intercept in the header), affine in RAS."""
    r, c = np.asarray(row_dir, float), np.asarray(col_dir, float)
    lps = np.eye(4)
    lps[:3, 0] = r * spacing[1]
    lps[:3, 1] = c * spacing[0]
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = origin
    ras = np.diag([-1, -1, 1, 1]) @ lps
    data = np.transpose(stored, (2, 1, 0))  # [k, j, i] → [i, j, k]
    code = {np.dtype(np.int16): 4, np.dtype(np.uint16): 512}[stored.dtype]
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *data.shape, 1, 1, 1, 1)
    struct.pack_into("<h", hdr, 70, code)
    struct.pack_into("<h", hdr, 72, 16)
    struct.pack_into("<8f", hdr, 76, 1.0, *np.linalg.norm(lps[:3, :3], axis=0), 0, 0, 0, 0)
    struct.pack_into("<f", hdr, 108, 352.0)
    struct.pack_into("<f", hdr, 112, slope)
    struct.pack_into("<f", hdr, 116, inter)
    struct.pack_into("<h", hdr, 254, 1)  # sform_code
    for n, off in enumerate((280, 296, 312)):
        struct.pack_into("<4f", hdr, off, *ras[n])
    hdr[344:348] = b"n+1\0"
    with open(path, "wb") as f:
        f.write(bytes(hdr) + b"\0\0\0\0" + data.astype(data.dtype.newbyteorder("<")).tobytes(order="F"))


def case(out, name, ts, seed=1, unsigned=False, row_dir=(1, 0, 0), col_dir=(0, 1, 0),
         step=(0, 0, 2.5), spacing=(0.8, 0.7), drop=None):
    stored, slope, inter = phantom(seed, unsigned)
    origin = (-4.0, -5.0, 30.0)
    study = generate_uid()
    ds = series(stored, slope, inter, row_dir, col_dir, origin, spacing, step, study)
    if drop is not None:
        ds = [d for k, d in enumerate(ds) if k != drop]
    save(ds, os.path.join(out, name), ts, seed)
    if drop is None:
        nifti(os.path.join(out, f"{name}.nii"), stored, slope, inter, row_dir, col_dir, origin, spacing, step)
    return stored, slope, inter, study


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/dicom"
    if os.path.isdir(out):
        for f in os.listdir(out):
            p = os.path.join(out, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p) if f != "README.md" else None
    case(out, "axial_implicit", ImplicitVRLittleEndian)
    case(out, "axial_explicit", ExplicitVRLittleEndian, seed=2)
    case(out, "axial_deflate", DeflatedExplicitVRLittleEndian, seed=3)
    case(out, "axial_rle", RLELossless, seed=4)
    case(out, "axial_jpegll", JPEGLosslessSV1, seed=5)
    case(out, "axial_j2k", JPEG2000Lossless, seed=6)
    case(out, "unsigned", ExplicitVRLittleEndian, seed=7, unsigned=True)
    # Coronal: rows along x, columns along -z, slices along y (anterior to posterior).
    case(out, "coronal", ExplicitVRLittleEndian, seed=8, row_dir=(1, 0, 0), col_dir=(0, 0, -1), step=(0, 3.0, 0))
    t = np.radians(15)
    col = (0, np.cos(t), -np.sin(t))
    normal = np.cross((1, 0, 0), col)
    case(out, "tilted", ExplicitVRLittleEndian, seed=9, col_dir=col, step=tuple(2.0 * normal))
    case(out, "bad_spacing", ExplicitVRLittleEndian, seed=10, drop=3)

    # One enhanced (multi-frame) CT object.
    stored, slope, inter = phantom(17)
    origin, spacing, step = (-4.0, -5.0, 30.0), (0.8, 0.7), (0, 0, 2.5)
    perm = list(range(SLICES))
    random.Random(17).shuffle(perm)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns = ROWS, COLS
    ds.NumberOfFrames = SLICES
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [po]
    pm = Dataset()
    pm.PixelSpacing = list(spacing)
    pm.SliceThickness = 2.5
    shared.PixelMeasuresSequence = [pm]
    pv = Dataset()
    pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = slope, inter, "HU"
    shared.PixelValueTransformationSequence = [pv]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in perm:
        g = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(x) for x in np.asarray(origin) + k * np.asarray(step)]
        g.PlanePositionSequence = [pp]
        frames.append(g)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(stored[k].tobytes() for k in perm)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    os.makedirs(os.path.join(out, "multiframe"), exist_ok=True)
    ds.save_as(os.path.join(out, "multiframe", "enhanced.dcm"), enforce_file_format=True)
    nifti(os.path.join(out, "multiframe.nii"), stored, slope, inter, (1, 0, 0), (0, 1, 0), origin, spacing, step)

    # Two series in one folder.
    stored, slope, inter = phantom(11)
    study = generate_uid()
    a = series(stored, slope, inter, (1, 0, 0), (0, 1, 0), (0, 0, 0), (0.8, 0.8), (0, 0, 2.0), study, desc="soft")
    b = series(stored, slope, inter, (1, 0, 0), (0, 1, 0), (0, 0, 0), (0.8, 0.8), (0, 0, 2.0), study, desc="bone")
    save(a, os.path.join(out, "two_series", "a"), ExplicitVRLittleEndian, 11)
    save(b, os.path.join(out, "two_series", "b"), ExplicitVRLittleEndian, 12)
    for d in ("a", "b"):
        src = os.path.join(out, "two_series", d)
        for f in os.listdir(src):
            os.replace(os.path.join(src, f), os.path.join(out, "two_series", f"{d}_{f}"))
        os.rmdir(src)

    # A series with a localizer and a non-image object beside it.
    stored, slope, inter, study = case(out, "with_localizer", ExplicitVRLittleEndian, seed=13)
    loc = series(stored[:1], slope, inter, (1, 0, 0), (0, 0, -1), (0, 0, 0), (1.0, 1.0), (0, 1, 0), study, desc="scout")[0]
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    save([loc], os.path.join(out, "with_localizer_tmp"), ExplicitVRLittleEndian, 14)
    os.replace(os.path.join(out, "with_localizer_tmp", "img000.dcm"), os.path.join(out, "with_localizer", "scout.dcm"))
    os.rmdir(os.path.join(out, "with_localizer_tmp"))
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: no pixels
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID = study
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.save_as(os.path.join(out, "with_localizer", "report.dcm"), enforce_file_format=True)

    # Broken files.
    case(out, "bad_truncated", ExplicitVRLittleEndian, seed=15)
    os.remove(os.path.join(out, "bad_truncated.nii"))
    victim = os.path.join(out, "bad_truncated", "img002.dcm")
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) - 100])
    case(out, "bad_notdicom", ExplicitVRLittleEndian, seed=16)
    os.remove(os.path.join(out, "bad_notdicom.nii"))
    open(os.path.join(out, "bad_notdicom", "notes.txt"), "w").write("not a DICOM file\n")
    total = 0
    for root, _, files in os.walk(out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"{out}: {total} bytes")


if __name__ == "__main__":
    main()
