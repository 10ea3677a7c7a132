//! The emulator holds kernels and copies to a GPU's rules: each test plants
//! the mistake a rule guards against and shows the emulator refuses it
//! (where a GPU would give wrong numbers, fault later, or hang), and that
//! the engine's own path passes.

use nemesis::backend::emu::EmuDevice;
use nemesis::backend::raw::RawDevice;
use nemesis::device::{Arg, DeviceApi, DeviceVec, Launch};

fn text(e: nemesis::Error) -> String {
    e.to_string()
}

/// What the CUDA device's downloads did before: the copy's length taken
/// from the pooled pinned buffer (256 bytes) rather than the 4 bytes asked
/// for, and the bytes read without waiting on an event recorded behind the
/// copy. Each half fails on the emulator; the staged download succeeds.
#[test]
fn the_old_download_path_fails_and_the_staged_one_reads_what_was_copied() {
    let emu = EmuDevice::new();
    let loss = DeviceVec::from_slice(&emu, &[1.25f32]).unwrap();
    let queue = emu.staging().queue().clone();
    let pinned = queue.host_alloc(256).unwrap();

    // The copy sized by the destination: an over-read of a 4-byte buffer.
    let e = text(emu.copy_to_host(&loss.buf, &pinned, pinned.bytes).unwrap_err());
    assert!(e.contains("256 bytes out of a buffer of 4"), "{e}");

    // The right length, but read with no event recorded and waited on.
    emu.copy_to_host(&loss.buf, &pinned, 4).unwrap();
    let e = text(queue.host_read(&pinned, 4).unwrap_err());
    assert!(e.contains("before the copy into it had landed"), "{e}");
    // An event recorded but not waited on is no better.
    let ev = queue.record().unwrap();
    assert!(queue.host_read(&pinned, 4).is_err());
    queue.wait(ev).unwrap();
    assert_eq!(queue.host_read(&pinned, 4).unwrap(), 1.25f32.to_ne_bytes());
    queue.host_free(&pinned);

    // The engine's path: queued, then read once waited on.
    let pending = emu.download_later(&loss.buf, 4).unwrap();
    let waits = emu.host_waits();
    assert_eq!(pending.wait().unwrap(), 1.25f32.to_ne_bytes());
    assert_eq!(emu.host_waits(), waits + 1, "reading a download waits on its event");
}

/// A download dropped unread waits for its copy before its staging buffer
/// is reused, and the next download reads its own bytes.
#[test]
fn a_dropped_download_waits_before_its_buffer_is_reused() {
    let emu = EmuDevice::new();
    let a = DeviceVec::from_slice(&emu, &[1.0f32, 2.0]).unwrap();
    let b = DeviceVec::from_slice(&emu, &[3.0f32, 4.0]).unwrap();
    let waits = emu.host_waits();
    drop(emu.download_later(&a.buf, 8).unwrap());
    assert_eq!(emu.host_waits(), waits + 1);
    let got = emu.download_later(&b.buf, 8).unwrap().wait().unwrap();
    assert_eq!(got, bytemuck::cast_slice::<f32, u8>(&[3.0, 4.0]));
}

/// Uploads go out through staging buffers without waiting for the device,
/// and each lands whole even when many are queued back to back.
#[test]
fn uploads_never_wait_and_land_whole() {
    let emu = EmuDevice::new();
    let waits = emu.host_waits();
    let bufs: Vec<_> = (0..100)
        .map(|i| {
            let v: Vec<f32> = (0..(i % 7 + 1) * 300).map(|j| (i * 1000 + j) as f32).collect();
            (DeviceVec::from_slice(&emu, &v).unwrap(), v)
        })
        .collect();
    assert_eq!(emu.host_waits(), waits, "an upload waited for the device");
    for (d, v) in &bufs {
        assert_eq!(&d.to_vec::<f32>().unwrap(), v);
    }
}

/// A kernel that writes one value past its buffer is named, with the byte.
#[test]
fn a_write_past_a_buffer_is_caught_and_located() {
    let emu = EmuDevice::new();
    let y = DeviceVec::from_slice(&emu, &[0.0f32; 999]).unwrap();
    let n = 1000u64;
    let e = text(
        emu.launch("selftest_add_one", &Launch::linear(4, 256, 0), &[y.arg(), Arg::U64(n)])
            .unwrap_err(),
    );
    // The first changed byte lies in the value past the end (bytes 3996..4000).
    assert!(
        e.contains("selftest_add_one") && e.contains("(3996 bytes), at byte 399"),
        "{e}"
    );
    // The same kernel within bounds.
    let ok = DeviceVec::from_slice(&emu, &[0.0f32; 1000]).unwrap();
    emu.launch("selftest_add_one", &Launch::linear(4, 256, 0), &[ok.arg(), Arg::U64(n)])
        .unwrap();
    assert_eq!(ok.to_vec::<f32>().unwrap(), vec![1.0; 1000]);
}

/// Each block's shared memory starts as garbage (NaN as floats), never as
/// the zeros host memory would give; a kernel that writes past it is named.
#[test]
fn shared_memory_starts_as_garbage_and_has_no_room_past_its_size() {
    let emu = EmuDevice::new();
    let out = DeviceVec::poisoned_f32(&emu, 128).unwrap();
    let zeros = DeviceVec::from_slice(&emu, &[0.0f32; 128]).unwrap();
    emu.launch(
        "selftest_read_fresh_shared",
        &Launch::linear(2, 64, 64 * 4),
        &[zeros.arg(), Arg::I32(128)],
    )
    .unwrap();
    let got = zeros.to_vec::<f32>().unwrap();
    assert!(got.iter().all(|v| v.is_nan()), "{:?}", &got[..4]);
    drop(out);
    let e = text(
        emu.launch("selftest_write_shared", &Launch::linear(1, 32, 32 * 4), &[Arg::I32(1)])
            .unwrap_err(),
    );
    assert!(e.contains("wrote past its 128 bytes of dynamic shared memory"), "{e}");
    emu.launch("selftest_write_shared", &Launch::linear(1, 32, 33 * 4), &[Arg::I32(1)])
        .unwrap();
    // Threads that meet at a barrier see each other's writes.
    let r = DeviceVec::poisoned_f32(&emu, 3 * 96).unwrap();
    emu.launch("selftest_reverse_block", &Launch::linear(3, 96, 96 * 4), &[r.arg()])
        .unwrap();
    let want: Vec<f32> = (0..3).flat_map(|_| (0..96).rev().map(|t| t as f32)).collect();
    assert_eq!(r.to_vec::<f32>().unwrap(), want);
}

/// Threads waiting at barriers none of them can complete: a GPU hangs, the
/// emulator says so.
#[test]
fn a_deadlock_is_reported_not_hung() {
    let emu = EmuDevice::new();
    let out = DeviceVec::poisoned_f32(&emu, 64).unwrap();
    let e = text(
        emu.launch("selftest_split_barriers", &Launch::linear(1, 64, 0), &[out.arg()])
            .unwrap_err(),
    );
    assert!(e.contains("deadlock") && e.contains("16 at a warp barrier"), "{e}");
    // The emulator is usable after it.
    let y = DeviceVec::from_slice(&emu, &[0.0f32; 10]).unwrap();
    emu.launch("selftest_add_one", &Launch::linear(1, 32, 0), &[y.arg(), Arg::U64(10)])
        .unwrap();
}

/// The launch limits of sm_90, and the shared-memory opt-in: a launch above
/// 48 KiB made straight to the device (as CUDA would take it) is refused;
/// through the engine's launch path the limit is raised first.
#[test]
fn launch_limits_and_the_shared_memory_opt_in_hold() {
    let emu = EmuDevice::new();
    let out = DeviceVec::poisoned_f32(&emu, 4096).unwrap();
    let bad = |cfg: Launch| text(emu.launch("selftest_reverse_block", &cfg, &[out.arg()]).unwrap_err());
    assert!(bad(Launch::linear(1, 1025, 0)).contains("1025 threads"));
    let tall = Launch {
        grid: [1, 65_536, 1],
        block: [32, 1, 1],
        shared_bytes: 128,
    };
    assert!(bad(tall).contains("grid y"));
    assert!(bad(Launch::linear(1, 32, 232_448 + 16)).contains("at most"));

    let big = Launch::linear(1, 32, 64 * 1024);
    let e = text(RawDevice::launch_raw(&emu, "selftest_reverse_block", &big, &[out.arg()]).unwrap_err());
    assert!(e.contains("without opting in"), "{e}");
    emu.launch("selftest_reverse_block", &big, &[out.arg()]).unwrap();
    // Once raised, straight launches of that size pass too.
    RawDevice::launch_raw(&emu, "selftest_reverse_block", &big, &[out.arg()]).unwrap();

    // Registers: the f32 flash forward needs 255 a thread; 512 threads of
    // it would need twice what a block has.
    let layout = nemesis::tensor::SeqLayout::contiguous(1, 64);
    let qkv = DeviceVec::poisoned_f32(&emu, 64 * 3 * 64).unwrap();
    let lse = DeviceVec::poisoned_f32(&emu, 64 * 4).unwrap();
    let args = [
        qkv.arg(),
        out.arg(),
        lse.arg(),
        Arg::Layout(layout),
        Arg::I32(4),
        Arg::I32(64),
        Arg::F64(0.0),
        Arg::Rng(nemesis::rng::RngStream::new(0, 0)),
        out.arg(),
        Arg::I32(0),
    ];
    let e = text(
        emu.launch("flash_forward_f32", &Launch::linear(4, 512, 1024), &args)
            .unwrap_err(),
    );
    assert!(e.contains("registers"), "{e}");
    // And arguments are checked against the kernel's declaration.
    let e = text(
        emu.launch("flash_forward_f32", &Launch::linear(4, 128, 1024), &args[..9])
            .unwrap_err(),
    );
    assert!(e.contains("takes 10 arguments"), "{e}");
    let mut wrong = args;
    wrong[4] = Arg::U64(4);
    let e = text(
        emu.launch("flash_forward_f32", &Launch::linear(4, 128, 1024), &wrong)
            .unwrap_err(),
    );
    assert!(e.contains("argument 4 (`int heads`)"), "{e}");
}

/// Inside a graph capture nothing runs, and a copy, a synchronisation, an
/// allocation left unfreed or a free of older memory is an error.
#[test]
fn a_capture_refuses_what_a_cuda_stream_capture_would() {
    let emu = EmuDevice::new();
    let y = DeviceVec::from_slice(&emu, &[0.0f32; 10]).unwrap();
    let add = || emu.launch("selftest_add_one", &Launch::linear(1, 32, 0), &[y.arg(), Arg::U64(10)]);
    emu.capture(add).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0; 10], "a captured launch ran");

    assert!(text(emu.capture(|| emu.synchronize()).unwrap_err()).contains("synchronisation"));
    assert!(text(emu.capture(|| emu.upload(&y.buf, &[0; 4])).unwrap_err()).contains("upload"));
    assert!(text(emu.capture(|| emu.download_later(&y.buf, 4).map(|_| ())).unwrap_err()).contains("download"));
    let e = text(emu.capture(|| emu.alloc(64).map(|_| ())).unwrap_err());
    assert!(e.contains("not freed inside it"), "{e}");
    let old = emu.alloc(64).unwrap();
    let e = text(
        emu.capture(|| {
            emu.free(&old);
            Ok(())
        })
        .unwrap_err(),
    );
    assert!(e.contains("from before the capture"), "{e}");
    emu.capture(|| {
        let b = emu.alloc(64)?;
        emu.free(&b);
        Ok(())
    })
    .unwrap();
    emu.free(&old);
}
