//! A qcow2 image file from fuzz input: open it read-only and read, then
//! read-write and read, write, zero, discard and flush at places derived from the disk size.
//! Hostile headers and tables must give errors, never a panic, a hang or a
//! huge allocation (libFuzzer's -rss_limit_mb and -timeout catch those).
//!
//! The input is the whole file, so libFuzzer's mutations hit the header,
//! the L1/L2 tables and the refcount structures directly; seed the corpus
//! with small images from `qemu-img create` / `qemu-img convert`.
#![no_main]

use std::path::PathBuf;

use hangar_devices::virtio::{BlockBackend, Qcow2Disk};
use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process, rewritten for every input; in
/// /dev/shm when it exists, so the run stays in memory.
fn scratch_path() -> PathBuf {
    let dir = PathBuf::from("/dev/shm");
    let dir = if dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("hangar-fuzz-qcow2-{}.qcow2", std::process::id()))
}

fuzz_target!(|input: &[u8]| {
    let path = scratch_path();
    std::fs::write(&path, input).expect("scratch file");
    // Read-only first: no refcount check guards this path, so reads must
    // cope with whatever the tables say.
    if let Ok(disk) = Qcow2Disk::open(&path, true) {
        let size = disk.size();
        let mut buf = vec![0u8; 8192];
        for at in [0, size / 3, size.saturating_sub(8192)] {
            let len = (size - at.min(size)).min(8192) as usize;
            let _ = disk.read_at(&mut buf[..len], at);
        }
    }
    let Ok(disk) = Qcow2Disk::open(&path, false) else {
        return;
    };
    let size = disk.size();
    // A few positions: start, middle, end, and one from the input's length.
    let spots = [
        0,
        size / 2,
        size.saturating_sub(4096),
        (input.len() as u64 * 512) % size.max(1),
    ];
    let mut buf = vec![0u8; 4096];
    for &at in &spots {
        let len = (size - at.min(size)).min(4096) as usize;
        if len == 0 {
            continue;
        }
        let _ = disk.read_at(&mut buf[..len], at);
        // No read-back check: a hostile image may map data onto its own
        // metadata, and what it then reads is its own business.
        let _ = disk.write_at(&vec![0xa5u8; len], at);
        let _ = disk.read_at(&mut buf[..len], at);
        let _ = disk.write_zeroes(at, len as u64, false);
        let _ = disk.write_zeroes(at, len as u64, true);
        let _ = disk.discard(at, len as u64);
    }
    let _ = disk.flush();
    drop(disk);
    let _ = std::fs::remove_file(&path);
});
