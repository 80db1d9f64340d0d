//! qcow2 backend tests on images we format ourselves: workloads checked
//! against an in-memory model, backing chains, and hostile headers and
//! tables. The tests against QEMU's own tools are in engine/tests/disks.rs.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::backend::MemoryDisk;
use hangar_testkit::Rng;
use hangar_testkit::TempDir;

fn new_qcow2(path: &Path, size: u64, backing: Option<(&str, DiskFormat)>) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    format_new_image(file, path, size, backing).unwrap();
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn new_raw(path: &Path, rng: &mut Rng, len: usize) -> Vec<u8> {
    let data = random_bytes(rng, len);
    std::fs::write(path, &data).unwrap();
    data
}

/// Overwrite bytes of a file in place.
fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

fn read_all(disk: &dyn BlockBackend) -> Vec<u8> {
    let mut all = vec![0u8; disk.size() as usize];
    disk.read_at(&mut all, 0).unwrap();
    all
}

/// Random reads, writes, zeroing and discards on `disk`, each checked
/// against `model` (which starts as the disk's expected contents).
fn run_workload(disk: &Qcow2Disk, model: &MemoryDisk, rng: &mut Rng, ops: usize) {
    let size = disk.size();
    for step in 0..ops {
        // Mostly small requests, sometimes several clusters; a third of
        // them not sector aligned.
        let len = if rng.below(4) == 0 {
            1 + rng.below(200_000)
        } else {
            1 + rng.below(9000)
        }
        .min(size);
        let mut offset = rng.below(size - len + 1);
        if rng.below(3) != 0 {
            offset -= offset % 512;
        }
        match rng.below(10) {
            0..=4 => {
                let data = random_bytes(rng, len as usize);
                disk.write_at(&data, offset).unwrap();
                model.write_at(&data, offset).unwrap();
            }
            5 | 6 => {
                let mut got = vec![0u8; len as usize];
                let mut want = vec![0u8; len as usize];
                disk.read_at(&mut got, offset).unwrap();
                model.read_at(&mut want, offset).unwrap();
                assert!(got == want, "step {step}: {len} bytes at {offset} differ");
            }
            7 | 8 => {
                let unmap = rng.below(2) == 0;
                disk.write_zeroes(offset, len, unmap).unwrap();
                model.write_zeroes(offset, len, unmap).unwrap();
            }
            _ => {
                // Discarded data is unspecified; the model takes what the
                // disk now says, and later reads must keep saying it.
                disk.discard(offset, len).unwrap();
                let mut now = vec![0u8; len as usize];
                disk.read_at(&mut now, offset).unwrap();
                model.write_at(&now, offset).unwrap();
            }
        }
        if step % 64 == 63 {
            disk.flush().unwrap();
        }
    }
}

#[test]
fn test_qcow2_random_workload_matches_model_across_reopen() {
    let dir = TempDir::new("qcow2-workload");
    let path = dir.join("disk.qcow2");
    let size = 5 << 20;
    new_qcow2(&path, size, None);
    let model = MemoryDisk::new(size).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    {
        let disk = Qcow2Disk::open(&path, false).unwrap();
        assert_eq!(disk.size(), size);
        assert!(!disk.is_read_only());
        run_workload(&disk, &model, &mut rng, 600);
        disk.flush().unwrap();
    }
    let disk = Qcow2Disk::open(&path, true).unwrap();
    assert!(read_all(&disk) == model.contents(), "contents after reopen");
    // Still passes our own refcount check after all that allocation.
    let file = File::open(&path).unwrap();
    check_image(file, &path).unwrap();
}

#[test]
fn test_qcow2_overlay_reads_raw_backing_and_never_writes_it() {
    let dir = TempDir::new("qcow2-raw-backing");
    let mut rng = Rng(0x1234_5678);
    let base = new_raw(&dir.join("base.raw"), &mut rng, 3 << 20);
    let top = dir.join("top.qcow2");
    // Relative name: resolved against the overlay's directory, not the cwd.
    // The overlay is larger than its backing: the tail reads as zeroes.
    new_qcow2(&top, 4 << 20, Some(("base.raw", DiskFormat::Raw)));
    let mut expected = base.clone();
    expected.resize(4 << 20, 0);
    let model = MemoryDisk::from_bytes(expected, false);

    let disk = Qcow2Disk::open(&top, false).unwrap();
    assert!(read_all(&disk) == model.contents());
    run_workload(&disk, &model, &mut rng, 400);
    disk.flush().unwrap();
    assert!(read_all(&disk) == model.contents());
    drop(disk);
    assert!(std::fs::read(dir.join("base.raw")).unwrap() == base);
}

#[test]
fn test_qcow2_overlay_over_qcow2_backing() {
    let dir = TempDir::new("qcow2-qcow2-backing");
    let mut rng = Rng(0xfeed_beef);
    let base = dir.join("base.qcow2");
    new_qcow2(&base, 2 << 20, None);
    let data = random_bytes(&mut rng, 2 << 20);
    {
        let disk = Qcow2Disk::open(&base, false).unwrap();
        disk.write_at(&data, 0).unwrap();
        disk.flush().unwrap();
    }
    let base_bytes = std::fs::read(&base).unwrap();
    let top = dir.join("top.qcow2");
    new_qcow2(
        &top,
        2 << 20,
        Some((base.to_str().unwrap(), DiskFormat::Qcow2)),
    );
    let model = MemoryDisk::from_bytes(data, false);
    let disk = Qcow2Disk::open(&top, false).unwrap();
    run_workload(&disk, &model, &mut rng, 300);
    disk.flush().unwrap();
    assert!(read_all(&disk) == model.contents());
    drop(disk);
    assert!(
        std::fs::read(&base).unwrap() == base_bytes,
        "backing untouched"
    );
}

#[test]
fn test_qcow2_read_only_refuses_writes() {
    let dir = TempDir::new("qcow2-ro");
    let path = dir.join("d.qcow2");
    new_qcow2(&path, 1 << 20, None);
    let before = std::fs::read(&path).unwrap();
    let disk = Qcow2Disk::open(&path, true).unwrap();
    assert!(disk.is_read_only());
    assert!(!disk.supports_discard());
    assert!(disk.write_at(&[1; 512], 0).is_err());
    assert!(disk.write_zeroes(0, 512, true).is_err());
    assert!(disk.discard(0, 512).is_err());
    let mut buf = [1u8; 512];
    disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0; 512]);
    assert!(disk.read_at(&mut buf, (1 << 20) - 511).is_err());
    assert!(disk.read_at(&mut buf, u64::MAX).is_err());
    drop(disk);
    assert!(std::fs::read(&path).unwrap() == before);
}

#[test]
fn test_qcow2_grow_keeps_data_and_reads_zero_beyond() {
    let dir = TempDir::new("qcow2-grow");
    let path = dir.join("d.qcow2");
    new_qcow2(&path, 1 << 20, None);
    {
        let disk = Qcow2Disk::open(&path, false).unwrap();
        disk.write_at(&[7; 4096], (1 << 20) - 4096).unwrap();
    }
    grow_image(&path, 3 << 30).unwrap();
    let disk = Qcow2Disk::open(&path, false).unwrap();
    assert_eq!(disk.size(), 3 << 30);
    let mut buf = [0u8; 8192];
    disk.read_at(&mut buf, (1 << 20) - 4096).unwrap();
    assert_eq!(&buf[..4096], &[7; 4096]);
    assert_eq!(&buf[4096..], &[0; 4096]);
    disk.write_at(&[9; 512], (3 << 30) - 512).unwrap();
}

/// Open read-write and read-only; both must fail (without a panic).
fn assert_refused(path: &Path) -> Qcow2Error {
    let rw = Qcow2Disk::open(path, false).err().unwrap();
    assert!(
        Qcow2Disk::open(path, true).is_err(),
        "read-only open of {rw}"
    );
    rw
}

#[test]
fn test_hostile_headers_are_refused() {
    let dir = TempDir::new("qcow2-hostile");
    // (what, offset, bytes, check)
    type Check = fn(&Qcow2Error) -> bool;
    let corrupt: Check = |e| matches!(e, Qcow2Error::Corrupt { .. });
    let unsupported: Check = |e| matches!(e, Qcow2Error::Unsupported { .. });
    let cases: Vec<(&str, u64, Vec<u8>, Check)> = vec![
        ("version 4", 4, 4u32.to_be_bytes().to_vec(), unsupported),
        ("cluster bits 8", 20, 8u32.to_be_bytes().to_vec(), corrupt),
        ("cluster bits 22", 20, 22u32.to_be_bytes().to_vec(), corrupt),
        (
            "cluster bits 255",
            20,
            255u32.to_be_bytes().to_vec(),
            corrupt,
        ),
        (
            "size 2^64-1",
            24,
            u64::MAX.to_be_bytes().to_vec(),
            unsupported,
        ),
        (
            "size past the L1 table",
            24,
            (1u64 << 45).to_be_bytes().to_vec(),
            corrupt,
        ),
        ("encrypted", 32, 1u32.to_be_bytes().to_vec(), unsupported),
        ("huge l1_size", 36, u32::MAX.to_be_bytes().to_vec(), corrupt),
        (
            "L1 past EOF",
            40,
            (1u64 << 40).to_be_bytes().to_vec(),
            corrupt,
        ),
        ("L1 over header", 40, 0u64.to_be_bytes().to_vec(), corrupt),
        (
            "L1 unaligned",
            40,
            0x30200u64.to_be_bytes().to_vec(),
            corrupt,
        ),
        (
            "refcount table past EOF",
            48,
            (1u64 << 50).to_be_bytes().to_vec(),
            corrupt,
        ),
        (
            "refcount table over header",
            48,
            0u64.to_be_bytes().to_vec(),
            corrupt,
        ),
        (
            "no refcount table",
            56,
            0u32.to_be_bytes().to_vec(),
            corrupt,
        ),
        (
            "huge refcount table",
            56,
            u32::MAX.to_be_bytes().to_vec(),
            corrupt,
        ),
        ("dirty", 72, 1u64.to_be_bytes().to_vec(), |e| {
            matches!(e, Qcow2Error::Dirty(_))
        }),
        ("corrupt bit", 72, 2u64.to_be_bytes().to_vec(), corrupt),
        (
            "external data file",
            72,
            4u64.to_be_bytes().to_vec(),
            unsupported,
        ),
        ("zstd", 72, 8u64.to_be_bytes().to_vec(), unsupported),
        ("extended L2", 72, 16u64.to_be_bytes().to_vec(), unsupported),
        (
            "unknown incompatible bit",
            72,
            (1u64 << 40).to_be_bytes().to_vec(),
            unsupported,
        ),
        ("refcount order 7", 96, 7u32.to_be_bytes().to_vec(), corrupt),
        (
            "refcount order 2^32-1",
            96,
            u32::MAX.to_be_bytes().to_vec(),
            corrupt,
        ),
        ("header length 0", 100, 0u32.to_be_bytes().to_vec(), corrupt),
        (
            "header length past cluster",
            100,
            u32::MAX.to_be_bytes().to_vec(),
            corrupt,
        ),
    ];
    for (i, (what, offset, bytes, check)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("case{i}.qcow2"));
        new_qcow2(&path, 1 << 20, None);
        patch(&path, offset, &bytes);
        let err = assert_refused(&path);
        assert!(check(&err), "{what}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn test_truncated_and_foreign_files_are_refused() {
    let dir = TempDir::new("qcow2-short");
    let path = dir.join("short.qcow2");
    std::fs::write(&path, b"QFI\xfb\0\0\0\x03\0\0").unwrap();
    assert!(matches!(assert_refused(&path), Qcow2Error::Corrupt { .. }));
    let mut v3_cut = vec![0u8; 90];
    v3_cut[..4].copy_from_slice(&QCOW2_MAGIC);
    v3_cut[7] = 3;
    std::fs::write(&path, &v3_cut).unwrap();
    assert!(matches!(assert_refused(&path), Qcow2Error::Corrupt { .. }));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(assert_refused(&path), Qcow2Error::NotQcow2(_)));
    std::fs::write(&path, vec![0xffu8; 4096]).unwrap();
    assert!(matches!(assert_refused(&path), Qcow2Error::NotQcow2(_)));
    // A real image cut short: its tables now lie past the end.
    let cut = dir.join("cut.qcow2");
    new_qcow2(&cut, 1 << 20, None);
    let file = OpenOptions::new().write(true).open(&cut).unwrap();
    file.set_len(100_000).unwrap();
    assert!(matches!(assert_refused(&cut), Qcow2Error::Corrupt { .. }));
}

/// The fuzzer's first find: a refcount table with no blocks made imago put
/// a refcount block over the header and then recurse without end. Now a
/// writable open refuses it; a read-only open still reads.
#[test]
fn test_missing_refcounts_refuse_writable_open() {
    let dir = TempDir::new("qcow2-refcounts");
    let path = dir.join("d.qcow2");
    new_qcow2(&path, 1 << 20, None);
    let file = File::open(&path).unwrap();
    let header = Qcow2Header::read(&file, &path).unwrap();
    patch(&path, header.refcount_table_offset, &[0; 8]);
    let before = std::fs::read(&path).unwrap();
    let err = Qcow2Disk::open(&path, false).err().unwrap();
    assert!(err.to_string().contains("qemu-img check -r all"), "{err}");
    let disk = Qcow2Disk::open(&path, true).unwrap();
    let mut buf = [1u8; 4096];
    disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0; 4096]);
    drop(disk);
    assert!(std::fs::read(&path).unwrap() == before, "nothing written");
}

/// Tables pointing at each other or past the end of the file.
#[test]
fn test_overlapping_and_out_of_file_tables_refuse_writable_open() {
    let dir = TempDir::new("qcow2-overlap");
    let path = dir.join("d.qcow2");
    new_qcow2(&path, 1 << 20, None);
    {
        let disk = Qcow2Disk::open(&path, false).unwrap();
        disk.write_at(&[5; 512], 0).unwrap();
    }
    let file = File::open(&path).unwrap();
    let header = Qcow2Header::read(&file, &path).unwrap();
    let mut l1 = [0u8; 8];
    file.read_exact_at(&mut l1, header.l1_table_offset).unwrap();
    let l1_entry = u64::from_be_bytes(l1);
    let l2_offset = l1_entry & TABLE_OFFSET_MASK;
    assert_ne!(l2_offset, 0);

    let cases: Vec<(&str, u64, u64)> = vec![
        // L1 entry 0 → the refcount table (double use).
        (
            "L2 table on the refcount table",
            header.l1_table_offset,
            (1 << 63) | header.refcount_table_offset,
        ),
        // L1 entry 0 → far past the end of the file.
        (
            "L2 table past EOF",
            header.l1_table_offset,
            (1 << 63) | (1 << 44),
        ),
        // L2 entry 0 → the refcount table. (Offset 0 cannot point at the
        // header: it means "unallocated".)
        (
            "data on the refcount table",
            l2_offset,
            (1 << 63) | header.refcount_table_offset,
        ),
        // L2 entry 0 → the L1 table.
        (
            "data on the L1 table",
            l2_offset,
            (1 << 63) | header.l1_table_offset,
        ),
    ];
    for (what, at, value) in cases {
        let case = dir.join("case.qcow2");
        std::fs::copy(&path, &case).unwrap();
        patch(&case, at, &value.to_be_bytes());
        let err = Qcow2Disk::open(&case, false).err();
        assert!(
            matches!(err, Some(Qcow2Error::Corrupt { .. })),
            "{what}: {err:?}"
        );
        // Read-only opens skip the whole-image check; reads must still
        // end in data or an error, never a panic.
        if let Ok(disk) = Qcow2Disk::open(&case, true) {
            let mut buf = vec![0u8; 65536];
            let _ = disk.read_at(&mut buf, 0);
        }
        std::fs::remove_file(&case).unwrap();
    }
}

#[test]
fn test_backing_loops_depth_and_special_files_are_refused() {
    let dir = TempDir::new("qcow2-chain");
    let own = dir.join("self.qcow2");
    new_qcow2(&own, 1 << 20, Some(("self.qcow2", DiskFormat::Qcow2)));
    assert!(matches!(
        Qcow2Disk::open(&own, true),
        Err(Qcow2Error::BackingChain { .. })
    ));

    let a = dir.join("a.qcow2");
    let b = dir.join("b.qcow2");
    new_qcow2(&a, 1 << 20, Some(("b.qcow2", DiskFormat::Qcow2)));
    // Spelled differently, still the same file.
    new_qcow2(&b, 1 << 20, Some(("chain-x/../a.qcow2", DiskFormat::Qcow2)));
    std::fs::create_dir(dir.join("chain-x")).unwrap();
    let err = Qcow2Disk::open(&a, false).err().unwrap();
    assert!(err.to_string().contains("loops"), "{err}");

    // base.raw ← q1 ← … ← q9: eight backing files below q8 are fine,
    // nine below q9 are too deep.
    let mut rng = Rng(77);
    new_raw(&dir.join("base.raw"), &mut rng, 1 << 20);
    let mut below = ("base.raw".to_owned(), DiskFormat::Raw);
    for n in 1..=9 {
        let name = format!("q{n}.qcow2");
        new_qcow2(&dir.join(&name), 1 << 20, Some((&below.0, below.1)));
        below = (name, DiskFormat::Qcow2);
    }
    let q8 = Qcow2Disk::open(&dir.join("q8.qcow2"), false).unwrap();
    let mut buf = [0u8; 512];
    q8.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf[..], std::fs::read(dir.join("base.raw")).unwrap()[..512]);
    let err = Qcow2Disk::open(&dir.join("q9.qcow2"), false).err().unwrap();
    assert!(err.to_string().contains("deep"), "{err}");

    // A device or a missing file as backing file: an error, no hang.
    let dev = dir.join("dev.qcow2");
    new_qcow2(&dev, 1 << 20, Some(("/dev/null", DiskFormat::Raw)));
    assert!(Qcow2Disk::open(&dev, true).is_err());
    let missing = dir.join("missing.qcow2");
    new_qcow2(&missing, 1 << 20, Some(("nowhere.raw", DiskFormat::Raw)));
    let err = Qcow2Disk::open(&missing, true).err().unwrap();
    assert!(err.to_string().contains("nowhere.raw"), "{err}");
}

/// Random corruption of a real image's first clusters (header, refcount
/// table and block, L1, L2): every open and request ends in Ok or Err.
#[test]
fn test_mutated_images_never_panic() {
    let dir = TempDir::new("qcow2-mutate");
    let seed_path = dir.join("seed.qcow2");
    new_qcow2(&seed_path, 2 << 20, None);
    {
        let disk = Qcow2Disk::open(&seed_path, false).unwrap();
        disk.write_at(&[0x5a; 70_000], 100_000).unwrap();
    }
    let seed = std::fs::read(&seed_path).unwrap();
    let mut rng = Rng(0xdead_beef_cafe);
    let case = dir.join("case.qcow2");
    for _ in 0..300 {
        let mut image = seed.clone();
        for _ in 0..1 + rng.below(6) {
            // Mostly the metadata clusters at the start.
            let limit = if rng.below(4) == 0 {
                image.len()
            } else {
                5 << 16
            };
            let at = rng.below(limit.min(image.len()) as u64) as usize;
            image[at] = match rng.below(3) {
                0 => rng.next_u64() as u8,
                1 => image[at] ^ (1 << rng.below(8)),
                _ => rng.pick(&[0, 0xff, 0x80, 0x01]),
            };
        }
        std::fs::write(&case, &image).unwrap();
        for read_only in [true, false] {
            if let Ok(disk) = Qcow2Disk::open(&case, read_only) {
                let size = disk.size();
                let mut buf = vec![0u8; 8192];
                let at = rng.below(size.max(1));
                let len = (size - at).min(8192) as usize;
                let _ = disk.read_at(&mut buf[..len], at);
                let _ = disk.write_at(&buf[..len], at);
                let _ = disk.write_zeroes(at, len as u64, true);
                let _ = disk.flush();
            }
        }
    }
}

#[test]
fn test_refcount_entries_of_every_width() {
    // 1-bit: LSB first within the byte.
    assert_eq!(read_refcount(&[0b0000_0100], 2, 1), 1);
    assert_eq!(read_refcount(&[0b0000_0100], 1, 1), 0);
    // 4-bit.
    assert_eq!(read_refcount(&[0x3a], 0, 4), 0xa);
    assert_eq!(read_refcount(&[0x3a], 1, 4), 0x3);
    // 16-bit big-endian, and an index past the block.
    assert_eq!(read_refcount(&[0, 1, 0x12, 0x34], 1, 16), 0x1234);
    assert_eq!(read_refcount(&[0, 1], 5, 16), 0);
    assert_eq!(read_refcount(&[1; 8], 0, 64), 0x0101_0101_0101_0101);
}
