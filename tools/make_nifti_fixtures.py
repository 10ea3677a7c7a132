#!/usr/bin/env python3
"""Generate the NIfTI-1 fixtures the Rust NIfTI reader is tested against.

Writes under tests/fixtures/nifti/ (relative to the repository root):

- small good files covering every datatype the reader supports, scaled and
  unscaled data, both byte orders, .nii / .nii.gz / .hdr+.img, the header
  affine cases of MODEL.md §2 (sform, qform, neither) and 4-D files;
- expected.safetensors: for every good file, the values nibabel reads, after
  the orientation rule of MODEL.md §2, plus spacing and stored shape,
  and a JSON manifest in the metadata key "manifest";
- bad files for the error tests, listed in bad.json.

Headers are built with nibabel's Nifti1Header (so every field is laid out the
way nibabel lays it out) and the files are assembled byte by byte here, which
keeps scl_slope / scl_inter / vox_offset exactly as chosen (nibabel's own
writer recomputes scaling) and makes the output byte-identical from run to run
(gzip with mtime 0 and no file name).

The expected values come from reading the written files back with nibabel
(get_fdata, float64), and are cross-checked against the arrays this script
wrote. Run with a Python that has nibabel, numpy and safetensors:

    /path/to/venv/bin/python tools/make_nifti_fixtures.py [--out DIR]
"""

import argparse
import gzip
import io
import json
import math
import os
import sys
import zlib

import nibabel as nib
import numpy as np
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, os.pardir, "tests", "fixtures", "nifti")

DATATYPE_NAMES = {
    2: "uint8",
    256: "int8",
    4: "int16",
    512: "uint16",
    8: "int32",
    768: "uint32",
    16: "float32",
    64: "float64",
}

F32 = np.float32


# ----------------------------------------------------------------------------
# Small helpers


def rng_for(name):
    """A generator seeded from the fixture name (stable across runs)."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def rot_x(deg):
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_z(deg):
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def affine_from(dirs, spacing, origin):
    """4x4 affine whose column j is unit direction dirs[:, j] * spacing[j]."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(dirs, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    a[:3, 3] = origin
    return a


# Permutation matrices (columns = world direction of stored axis j).
# World axis 0 = x (left-right), 1 = y (anterior-posterior), 2 = z (SI).
P_XYZ = np.eye(3)
P_ZXY = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float64)  # axis0->z, 1->x, 2->y
P_XZY = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float64)  # axis0->x, 1->z, 2->y (det -1)
P_YXZ = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float64)


def distinct_ints(rng, lo, hi, n, step=1):
    """n distinct integers in [lo, hi] that are multiples of `step` from lo."""
    count = (hi - lo) // step + 1
    picks = rng.choice(count, size=n, replace=False)
    return lo + picks.astype(np.int64) * step


def gzip_bytes(raw):
    buf = io.BytesIO()
    # filename='' and mtime=0: no name and no time stamp in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


# ----------------------------------------------------------------------------
# Building files


def make_header(
    data_dtype,
    shape,
    endianness="<",
    pair=False,
    sform=None,
    sform_code=0,
    qform=None,
    qform_code=0,
    pixdim=None,
    slope=1.0,
    inter=0.0,
    raw_sform_fields=None,
    raw_quatern=None,
):
    """A nibabel header with every field this project cares about set.

    qform is set before pixdim: nibabel's set_qform writes pixdim[0..3] from
    the affine. pixdim (if given) then overrides pixdim[1..3], which is only
    done where there is no qform.
    """
    cls = nib.nifti1.Nifti1PairHeader if pair else nib.Nifti1Header
    hdr = cls(endianness=endianness)
    hdr.set_data_dtype(data_dtype)
    hdr.set_data_shape(shape)
    hdr.set_xyzt_units("mm", "sec")
    if qform is not None:
        hdr.set_qform(qform, code=qform_code)
    else:
        hdr["qform_code"] = qform_code
    if sform is not None:
        hdr.set_sform(sform, code=sform_code)
    else:
        hdr["sform_code"] = sform_code
    if raw_sform_fields is not None:  # matrix stored with whatever code was set
        hdr["srow_x"][:] = raw_sform_fields[0]
        hdr["srow_y"][:] = raw_sform_fields[1]
        hdr["srow_z"][:] = raw_sform_fields[2]
    if raw_quatern is not None:  # (b, c, d, qx, qy, qz) without touching pixdim
        for key, v in zip(
            ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"),
            raw_quatern,
        ):
            hdr[key] = v
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter
    hdr["descrip"] = b"nemesis NIfTI reader fixture"
    return hdr


def nifti_bytes(hdr, data, vox_offset=352, extension=None):
    """Single-file NIfTI-1 bytes: header, extension flag, padding, data."""
    hdr = hdr.copy()
    hdr["vox_offset"] = vox_offset
    block = hdr.binaryblock
    assert len(block) == 348
    ext = b""
    if extension is not None:
        ecode, content = extension
        esize = 8 + len(content)
        esize += (-esize) % 16
        content = content + b"\0" * (esize - 8 - len(content))
        end = hdr.endianness
        ext = (
            np.array([esize, ecode], dtype=end + "i4").tobytes()
            + content
        )
        flag = b"\x01\0\0\0"
    else:
        flag = b"\0\0\0\0"
    head = block + flag + ext
    assert len(head) <= vox_offset, (len(head), vox_offset)
    head += b"\0" * (vox_offset - len(head))
    return head + stored_bytes(hdr, data)


def stored_bytes(hdr, data):
    dt = hdr.get_data_dtype()  # includes the header's byte order
    arr = np.asarray(data)
    assert arr.dtype.newbyteorder("=") == dt.newbyteorder("="), (arr.dtype, dt)
    # NIfTI stores the first index fastest: Fortran order.
    return np.asarray(arr, dtype=dt).tobytes(order="F")


# ----------------------------------------------------------------------------
# The affine rule of MODEL.md §2 (computed here from the header fields
# rather than with nibabel's get_best_affine, which takes any nonzero code and
# falls back to a pixdim-based "base affine" instead of the identity).


def header_affine(hdr):
    sform, scode = hdr.get_sform(coded=True)
    if scode is not None and scode > 0:
        return sform, "sform"
    qform, qcode = hdr.get_qform(coded=True)
    if qcode is not None and qcode > 0:
        return qform, "qform"
    return None, "none"


def orientation(hdr):
    """(si_axis, spacing in stored order, affine source) from the header."""
    affine, source = header_affine(hdr)
    if affine is None:
        # Identity direction: the third stored axis is SI; spacing is pixdim[1..3].
        return 2, np.abs(np.asarray(hdr["pixdim"][1:4], dtype=np.float64)), source
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.sqrt((m * m).sum(axis=0))
    si_score = np.abs(m[2, :]) / norms
    order = np.argsort(-si_score, kind="stable")
    assert si_score[order[0]] > si_score[order[1]] + 1e-3, "SI axis tie in a fixture"
    return int(order[0]), norms, source


# ----------------------------------------------------------------------------
# Fixture definitions


class Good:
    def __init__(self, name, data, kind="nii", endianness="<", vox_offset=352,
                 extension=None, si_expected=None, **hdr_kw):
        self.name = name
        self.data = np.asarray(data)
        self.kind = kind  # "nii", "nii.gz" or "pair"
        self.endianness = endianness
        self.vox_offset = vox_offset
        self.extension = extension
        self.si_expected = si_expected
        self.hdr_kw = hdr_kw

    @property
    def file(self):
        return {"nii": self.name + ".nii", "nii.gz": self.name + ".nii.gz",
                "pair": self.name + ".hdr"}[self.kind]

    def header(self):
        return make_header(self.data.dtype, self.data.shape, endianness=self.endianness,
                           pair=self.kind == "pair", **self.hdr_kw)


AXIAL = affine_from(P_XYZ * np.array([-1, -1, 1]), (0.8, 0.8, 2.0), (150.0, 160.0, -300.0))


def axial_kw():
    return dict(sform=AXIAL, sform_code=1, qform=AXIAL, qform_code=1)


def hu_int16(name, shape):
    """Distinct int16 CT-like values in [-1024, 3071]."""
    n = int(np.prod(shape))
    return distinct_ints(rng_for(name), -1024, 3071, n).astype(np.int16).reshape(shape, order="F")


def datatype_arrays(shape):
    n = int(np.prod(shape))
    out = {}

    r = rng_for("uint8")
    v = r.permutation(256)[:n].astype(np.uint8)
    v[0], v[-1] = 0, 255
    out["uint8"] = v

    r = rng_for("int8")
    v = (r.permutation(256)[:n] - 128).astype(np.int8)
    v[0], v[-1] = -128, 127
    out["int8"] = v

    r = rng_for("int16")
    v = distinct_ints(r, -32768, 32767, n).astype(np.int16)
    v[:4] = [-32768, 32767, 0, -1]
    out["int16"] = v

    r = rng_for("uint16")
    v = distinct_ints(r, 0, 65535, n).astype(np.uint16)
    v[:3] = [0, 65535, 1]
    out["uint16"] = v

    # 32-bit integers: large values are multiples of 256 so that float32 holds
    # them exactly (at most 24 significant bits); small ones are exact anyway.
    r = rng_for("int32")
    v = distinct_ints(r, -(2**31), 2**31 - 256, n, step=256).astype(np.int32)
    v[:6] = [-(2**31), 2**31 - 256, 0, -1, 1, 16777216]
    out["int32"] = v

    r = rng_for("uint32")
    v = distinct_ints(r, 0, 2**32 - 256, n, step=256).astype(np.uint32)
    v[:4] = [0, 2**32 - 256, 1, 255]
    out["uint32"] = v

    r = rng_for("float32")
    v = (r.normal(0.0, 600.0, n)).astype(F32)
    v[:7] = [np.finfo(F32).max, -np.finfo(F32).max, np.finfo(F32).tiny, -0.0, 0.0,
             -1024.0, 1e-3]
    out["float32"] = v

    # float64 values chosen to be exactly representable in float32.
    r = rng_for("float64")
    v = (r.normal(0.0, 600.0, n)).astype(F32).astype(np.float64)
    v[:6] = [np.float64(F32(1e30)), np.float64(F32(-1e30)), np.float64(np.finfo(F32).tiny),
             0.0, -3024.0, np.float64(F32(0.1))]
    out["float64"] = v

    return {k: a.reshape(shape, order="F") for k, a in out.items()}


def good_fixtures():
    shape = (5, 6, 7)
    fx = []
    arrays = datatype_arrays(shape)

    # 1. one file per datatype (axial affine, slope 1 / inter 0 as most CT
    #    converters write it).
    for dt in ("uint8", "int8", "int16", "uint16", "int32", "uint32", "float32", "float64"):
        fx.append(Good(dt, arrays[dt], si_expected=2, **axial_kw()))

    # 2. scaling.
    r = rng_for("int16_scaled")
    raw = distinct_ints(r, -2000, 30000, 210).astype(np.int16).reshape(shape, order="F")
    fx.append(Good("int16_scaled", raw, slope=2.0, inter=-1024.0, si_expected=2, **axial_kw()))
    fx.append(Good("uint8_scaled", arrays["uint8"], slope=0.5, inter=-1024.0, si_expected=2,
                   **axial_kw()))
    r = rng_for("float32_scaled")
    rawf = distinct_ints(r, -4000, 4000, 210).astype(F32).reshape(shape, order="F") * F32(0.25)
    fx.append(Good("float32_scaled", rawf, slope=2.0, inter=1.0, si_expected=2, **axial_kw()))
    # slope 0 means "no scaling": the intercept is ignored too (nibabel does so).
    fx.append(Good("int16_slope0", arrays["int16"], slope=0.0, inter=-1024.0, si_expected=2,
                   **axial_kw()))
    fx.append(Good("uint8_slope0", arrays["uint8"], slope=0.0, inter=0.0, si_expected=2,
                   **axial_kw()))
    # NaN slope: also "no scaling" (nibabel's default when it writes unscaled data).
    fx.append(Good("int16_slope_nan", arrays["int16"], slope=float("nan"), inter=5.0,
                   si_expected=2, **axial_kw()))

    # 3. big-endian.
    fx.append(Good("int16_be", arrays["int16"].astype(">i2"), endianness=">", si_expected=2,
                   **axial_kw()))
    fx.append(Good("float32_be", arrays["float32"].astype(">f4"), endianness=">",
                   si_expected=2, **axial_kw()))
    fx.append(Good("int16_scaled_be", raw.astype(">i2"), endianness=">", slope=2.0,
                   inter=-1024.0, si_expected=2, **axial_kw()))

    # 4. compressed, pair, non-default vox_offset, an extension.
    fx.append(Good("int16_gz", arrays["int16"], kind="nii.gz", si_expected=2, **axial_kw()))
    fx.append(Good("float32_be_gz", arrays["float32"].astype(">f4"), kind="nii.gz",
                   endianness=">", si_expected=2, **axial_kw()))
    fx.append(Good("int16_scaled_gz", raw, kind="nii.gz", slope=2.0, inter=-1024.0,
                   si_expected=2, **axial_kw()))
    fx.append(Good("uint16_gz", arrays["uint16"], kind="nii.gz", si_expected=2, **axial_kw()))
    fx.append(Good("int16_pair", arrays["int16"], kind="pair", si_expected=2, **axial_kw()))
    fx.append(Good("int16_voxoffset", arrays["int16"], vox_offset=480, si_expected=2,
                   **axial_kw()))
    fx.append(Good("int16_ext", arrays["int16"], vox_offset=352 + 48,
                   extension=(6, b"nemesis fixture: a comment extension"), si_expected=2,
                   **axial_kw()))

    # 5. orientation.
    # (a) the usual axial CT: third stored axis is SI.
    aff = affine_from(P_XYZ * np.array([-1, -1, 1]), (0.7, 0.7, 2.5), (170.0, 180.0, -400.0))
    fx.append(Good("orient_axial", hu_int16("orient_axial", shape), si_expected=2,
                   sform=aff, sform_code=1, qform=aff, qform_code=1))
    # (b) SI is the first stored axis: stored as (z, x, y).
    aff = affine_from(P_ZXY, (2.5, 0.7, 0.8), (-170.0, -180.0, -400.0))
    fx.append(Good("orient_si_first", hu_int16("orient_si_first", (7, 5, 6)), si_expected=0,
                   sform=aff, sform_code=1, qform=aff, qform_code=1))
    # (c) oblique sform: 20 degrees about x then 15 about z, spacing 0.7/0.8/2.5.
    rot = rot_z(15.0) @ rot_x(20.0)
    aff = affine_from(rot @ P_XYZ, (0.7, 0.8, 2.5), (-100.0, 50.0, 20.0))
    fx.append(Good("orient_oblique", hu_int16("orient_oblique", shape), si_expected=2,
                   sform=aff, sform_code=2))
    # (c') oblique with the SI axis first in storage, sform only.
    aff = affine_from(rot_x(20.0) @ P_ZXY, (2.5, 0.7, 0.8), (10.0, 20.0, 30.0))
    fx.append(Good("orient_oblique_si0", hu_int16("orient_oblique_si0", (7, 5, 6)),
                   si_expected=0, sform=aff, sform_code=1))
    # (d) qform only (sform_code 0; the sform fields hold a decoy matrix whose
    #     SI axis is stored axis 0). The qform puts SI on stored axis 1, tilted
    #     15 degrees, with a left-handed frame (qfac = -1).
    qaff = affine_from(rot_x(15.0) @ P_XZY, (0.75, 3.0, 0.7), (-90.0, 100.0, -50.0))
    decoy = affine_from(P_ZXY, (9.0, 9.0, 9.0), (0.0, 0.0, 0.0))
    fx.append(Good("orient_qform_only", hu_int16("orient_qform_only", (5, 7, 6)),
                   si_expected=1, qform=qaff, qform_code=1, sform_code=0,
                   raw_sform_fields=decoy[:3]))
    # (d') both present: sform (code 1) says SI is stored axis 1, qform (code 1)
    #      says stored axis 0. The sform wins, spacing from the sform.
    saff = affine_from(P_XZY, (0.7, 2.5, 0.8), (1.0, 2.0, 3.0))
    qaff = affine_from(P_ZXY, (4.0, 0.6, 0.9), (4.0, 5.0, 6.0))
    fx.append(Good("orient_sform_over_qform", hu_int16("orient_sform_over_qform", (5, 7, 6)),
                   si_expected=1, sform=saff, sform_code=1, qform=qaff, qform_code=1))
    # (e) neither: both codes 0, identity direction, spacing from pixdim[1..3].
    fx.append(Good("orient_none", hu_int16("orient_none", shape), si_expected=2,
                   sform_code=0, qform_code=0, pixdim=(0.9, 0.8, 3.0)))
    # (e') neither, but the sform and quaternion fields hold decoys (SI on
    #      stored axis 0) that must be ignored because both codes are 0.
    q = nib.quaternions.mat2quat(P_ZXY @ np.diag([1.0, 1.0, 1.0]))  # proper rotation
    q = q if q[0] >= 0 else -q
    fx.append(Good("orient_none_decoy", hu_int16("orient_none_decoy", shape), si_expected=2,
                   sform_code=0, qform_code=0, pixdim=(0.9, 0.8, 3.0),
                   raw_sform_fields=decoy[:3],
                   raw_quatern=(q[1], q[2], q[3], 7.0, 8.0, 9.0)))
    # (f) more slices than columns: (6, 5, 9), SI third -> D = 9.
    aff = affine_from(P_XYZ * np.array([-1, -1, 1]), (0.8, 0.8, 1.0), (0.0, 0.0, 0.0))
    fx.append(Good("orient_long", hu_int16("orient_long", (6, 5, 9)), si_expected=2,
                   sform=aff, sform_code=1, qform=aff, qform_code=1))
    # (g) x and y swapped in storage, SI third: H/W keep stored order.
    aff = affine_from(P_YXZ, (0.6, 0.9, 1.5), (0.0, 0.0, 0.0))
    fx.append(Good("orient_yxz", hu_int16("orient_yxz", shape), si_expected=2,
                   sform=aff, sform_code=1))

    # 6. 4-D: only the first volume is used.
    r = rng_for("fourd")
    v4 = distinct_ints(r, -1024, 3071, 420).astype(np.int16).reshape((5, 6, 7, 2), order="F")
    fx.append(Good("fourd", v4, si_expected=2, **axial_kw()))
    r = rng_for("fourd_si_first")
    v4 = distinct_ints(r, -1024, 3071, 420).astype(np.int16).reshape((7, 5, 6, 2), order="F")
    aff = affine_from(P_ZXY, (2.5, 0.7, 0.8), (0.0, 0.0, 0.0))
    fx.append(Good("fourd_si_first", v4, kind="nii.gz", si_expected=0, sform=aff,
                   sform_code=1, qform=aff, qform_code=1))
    r = rng_for("fourd_single")
    v4 = (distinct_ints(r, -1024, 3071, 210).astype(F32) * F32(0.5)).reshape(
        (5, 6, 7, 1), order="F")
    fx.append(Good("fourd_single", v4, si_expected=2, **axial_kw()))
    return fx


def write_good(out, g):
    hdr = g.header()
    if g.kind == "pair":
        hdr["vox_offset"] = 0
        with open(os.path.join(out, g.name + ".hdr"), "wb") as f:
            f.write(hdr.binaryblock)  # 348 bytes, as nibabel writes a .hdr
        with open(os.path.join(out, g.name + ".img"), "wb") as f:
            f.write(stored_bytes(hdr, g.data))
        return hdr
    raw = nifti_bytes(hdr, g.data, vox_offset=g.vox_offset, extension=g.extension)
    if g.kind == "nii.gz":
        raw = gzip_bytes(raw)
    with open(os.path.join(out, g.file), "wb") as f:
        f.write(raw)
    return hdr


def effective_scaling(slope, inter):
    if slope == 0 or not math.isfinite(slope):
        return 1.0, 0.0
    return float(slope), float(inter)


def expected_for(out, g):
    """Read the file back with nibabel and apply the orientation rule."""
    img = nib.load(os.path.join(out, g.file))
    a = img.get_fdata(dtype=np.float64)
    assert a.shape == g.data.shape, (a.shape, g.data.shape)

    # Cross-check against what this script wrote: raw * slope + inter in float64.
    slope = float(g.hdr_kw.get("slope", 1.0))
    inter = float(g.hdr_kw.get("inter", 0.0))
    s, i = effective_scaling(slope, inter)
    mine = g.data.astype(np.float64) * s + i
    assert np.array_equal(a, mine), g.name

    # Read the header fields from the file itself (the image's header copy has
    # scl_slope/scl_inter reset to NaN by nibabel after loading).
    hdr = img.header
    si, norms, source = orientation(hdr)
    assert si == g.si_expected, (g.name, si, g.si_expected)
    if source != "none":
        # nibabel's own best affine agrees whenever a code is positive.
        assert np.allclose(img.affine, header_affine(hdr)[0]), g.name
    if a.ndim == 4:
        a = a[..., 0]
    vol = np.moveaxis(a, si, 0)
    vol32 = vol.astype(F32)
    assert np.array_equal(vol32.astype(np.float64), vol), f"{g.name}: float32 cast not exact"
    assert np.all(np.isfinite(vol32)), g.name
    others = [j for j in range(3) if j != si]
    spacing = np.array([norms[si], norms[others[0]], norms[others[1]]], dtype=F32)
    dcode = int(hdr["datatype"])
    manifest = {
        "name": g.name,
        "file": g.file,
        "datatype": DATATYPE_NAMES[dcode],
        "scaled": (s, i) != (1.0, 0.0),
        "slope": slope if math.isfinite(slope) else None,
        "inter": inter,
        "endianness": g.endianness,
        "si_axis": si,
        "four_d": g.data.ndim == 4,
        "affine_source": source,
        "compressed": g.kind == "nii.gz",
    }
    # The proxy's own view of the scaling should be the one the manifest gives.
    ps, pi = float(img.dataobj.slope), float(img.dataobj.inter)
    assert (ps, pi) == (s, i), (g.name, ps, pi, s, i)
    tensors = {
        f"{g.name}.volume": np.ascontiguousarray(vol32),
        f"{g.name}.spacing": spacing,
        f"{g.name}.shape_stored": np.array(g.data.shape, dtype=np.int64),
    }
    return tensors, manifest


# ----------------------------------------------------------------------------
# Bad files


def patch_i16(buf, offset, value, endian="<"):
    buf[offset:offset + 2] = np.array([value], dtype=endian + "i2").tobytes()


def write_bad(out):
    shape = (5, 6, 7)
    arr = hu_int16("bad", shape)
    hdr = make_header(np.int16, shape, **axial_kw())
    good = nifti_bytes(hdr, arr)
    bad = []

    def put(fname, data, problem):
        with open(os.path.join(out, fname), "wb") as f:
            f.write(data)
        bad.append({"file": fname, "problem": problem})

    gz = gzip_bytes(good)
    put("bad_truncated.nii.gz", gz[: len(gz) // 2],
        "gzip stream cut in the middle (valid gzip header, no end of stream, no trailer)")
    put("bad_short_data.nii", good[: 352 + arr.nbytes // 2],
        "header claims 5x6x7 int16 (420 bytes of data) but the file holds only 210")
    b = bytearray(good)
    patch_i16(b, 42, 0)
    put("bad_zero_dim.nii", bytes(b), "dim[1] = 0")
    b = bytearray(good)
    patch_i16(b, 42, -3)
    put("bad_negative_dim.nii", bytes(b), "dim[1] = -3")
    b = bytearray(good)
    patch_i16(b, 70, 1234)
    put("bad_datatype.nii", bytes(b), "datatype = 1234 (unknown code), bitpix left at 16")
    b = bytearray(good)
    patch_i16(b, 40, 2)
    put("bad_ndim2.nii", bytes(b), "dim[0] = 2: a 2-D image, not a volume")
    b = bytearray(good)
    patch_i16(b, 40, 9)
    put("bad_ndim9.nii", bytes(b), "dim[0] = 9 (must be 1..7)")

    fa = arr.astype(F32)
    fhdr = make_header(F32, shape, **axial_kw())
    f_nan = fa.copy()
    f_nan[2, 3, 4] = np.nan
    put("bad_nan.nii", nifti_bytes(fhdr, f_nan), "float32 volume with a NaN at stored index (2, 3, 4)")
    f_inf = fa.copy()
    f_inf[1, 0, 6] = np.inf
    put("bad_inf.nii", nifti_bytes(fhdr, f_inf), "float32 volume with +Inf at stored index (1, 0, 6)")
    ihdr = make_header(np.int16, shape, slope=1.0, inter=float("inf"), **axial_kw())
    put("bad_inter_inf.nii", nifti_bytes(ihdr, arr),
        "scl_slope = 1 but scl_inter = +Inf: every scaled value is non-finite")

    r = rng_for("bad_random")
    noise = r.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    put("bad_random.nii.gz", gzip_bytes(noise), "random bytes, gzipped: not a NIfTI file")
    put("bad_random.nii", noise, "random bytes: not a NIfTI file")
    put("bad_empty.nii", b"", "empty file")
    put("bad_short_header.nii", good[:200], "only the first 200 of the 348 header bytes")
    b = bytearray(good)
    b[344:348] = b"xyz\0"
    put("bad_magic.nii", bytes(b), "magic is 'xyz' instead of 'n+1'")
    return bad


def nibabel_view_of_bad(out, bad):
    """How nibabel reacts to each bad file (for the record only)."""
    rows = []
    for entry in bad:
        path = os.path.join(out, entry["file"])
        try:
            img = nib.load(path)
            a = img.get_fdata()
            finite = bool(np.all(np.isfinite(a)))
            rows.append((entry["file"], f"loads, shape {a.shape}, all finite: {finite}"))
        except Exception as e:  # noqa: BLE001 - recording whatever nibabel does
            rows.append((entry["file"], f"{type(e).__name__}: {str(e)[:90]}"))
    return rows


# ----------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)

    # Remove files this script wrote before, so renamed fixtures do not linger.
    for fname in os.listdir(out):
        if fname.endswith((".nii", ".nii.gz", ".hdr", ".img")) or fname in (
            "expected.safetensors", "bad.json"):
            os.remove(os.path.join(out, fname))

    goods = good_fixtures()
    names = [g.name for g in goods]
    assert len(set(names)) == len(names)
    for g in goods:
        write_good(out, g)

    tensors, manifest = {}, []
    for g in goods:
        t, m = expected_for(out, g)
        tensors.update(t)
        manifest.append(m)
    save_file(tensors, os.path.join(out, "expected.safetensors"),
              metadata={"manifest": json.dumps(manifest, sort_keys=True)})
    os.chmod(os.path.join(out, "expected.safetensors"), 0o644)  # save_file makes it 0600

    bad = write_bad(out)
    with open(os.path.join(out, "bad.json"), "w") as f:
        json.dump(bad, f, indent=1)
        f.write("\n")

    self_check(out, goods)
    if not args.quiet:
        print_table(out, goods, manifest, bad)
    return 0


def self_check(out, goods):
    """Reload every good file and compare it with expected.safetensors."""
    exp = load_file(os.path.join(out, "expected.safetensors"))
    from safetensors import safe_open

    with safe_open(os.path.join(out, "expected.safetensors"), framework="numpy") as f:
        manifest = json.loads(f.metadata()["manifest"])
    assert [m["name"] for m in manifest] == [g.name for g in goods]
    for m in manifest:
        img = nib.load(os.path.join(out, m["file"]))
        a = img.get_fdata()
        assert list(exp[m["name"] + ".shape_stored"]) == list(a.shape)
        if a.ndim == 4:
            a = a[..., 0]
        vol = np.moveaxis(a, m["si_axis"], 0).astype(F32)
        e = exp[m["name"] + ".volume"]
        assert e.dtype == F32 and e.shape == vol.shape and np.array_equal(e, vol), m["name"]
        assert exp[m["name"] + ".spacing"].dtype == F32


def print_table(out, goods, manifest, bad):
    exp = load_file(os.path.join(out, "expected.safetensors"))
    print(f"{'name':26} {'file':30} {'dtype':8} {'e':1} {'stored':13} {'si':2} "
          f"{'oriented':12} {'spacing':22} {'src':5} scaling")
    for m in manifest:
        st = tuple(int(x) for x in exp[m["name"] + ".shape_stored"])
        ov = exp[m["name"] + ".volume"].shape
        sp = ", ".join(f"{x:.4g}" for x in exp[m["name"] + ".spacing"])
        sc = f"{m['slope']}*x+{m['inter']}" + (" (applied)" if m["scaled"] else " (none)")
        print(f"{m['name']:26} {m['file']:30} {m['datatype']:8} {m['endianness']} "
              f"{str(st):13} {m['si_axis']:2} {str(ov):12} {sp:22} {m['affine_source']:5} {sc}")
    print()
    for f, what in nibabel_view_of_bad(out, bad):
        print(f"{f:26} nibabel: {what}")
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"\n{len(os.listdir(out))} files, {total} bytes in {out}")


if __name__ == "__main__":
    sys.exit(main())
