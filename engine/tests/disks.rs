//! Disk images against QEMU's own tools: qcow2 images made by `qemu-img`
//! read and written through our backend, and images we create, grow and
//! overlay, checked by `qemu-img check`, `info` and `convert`. Needs
//! qemu-img (package qemu-utils, installed by packaging/setup.sh).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use hangar_engine::devices::virtio::BlockBackend;
use hangar_engine::disks::{self, DiskError};
use hangar_engine::{DiskConfig, DiskFormat};
use hangar_testkit::TempDir;

/// xorshift64*: fixed seeds, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Run qemu-img; a missing tool fails the test loudly, never skips it.
fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run qemu-img ({e}); install it with packaging/setup.sh (package qemu-utils)")
    });
    out
}

fn qemu_img_ok(args: &[&str]) -> String {
    let out = qemu_img(args);
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img check` finds no errors and no leaks.
fn assert_check_clean(path: &Path) {
    let out = qemu_img(&["check", "--output=json", p(path)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["corruptions", "leaks", "check-errors"] {
        let n = report.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(n, 0, "{key} in {}: {text}", path.display());
    }
}

fn qemu_info(path: &Path) -> serde_json::Value {
    serde_json::from_str(&qemu_img_ok(&["info", "--output=json", p(path)])).unwrap()
}

/// The guest-visible contents as QEMU reads them.
fn qemu_contents(path: &Path, dir: &TempDir) -> Vec<u8> {
    let out = dir.join("converted.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img_ok(&["convert", "-O", "raw", p(path), p(&out)]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

fn open(path: &Path, format: DiskFormat, read_only: bool) -> Box<dyn BlockBackend> {
    disks::open_backend(&DiskConfig {
        path: path.to_owned(),
        format,
        read_only,
    })
    .unwrap()
}

/// Random writes and zeroing through `disk`, mirrored in `model`, with
/// reads compared on the way; ends with a flush.
fn workload(disk: &dyn BlockBackend, model: &mut [u8], rng: &mut Rng, ops: usize) {
    let size = model.len() as u64;
    for step in 0..ops {
        let len = (1 + if rng.below(4) == 0 {
            rng.below(300_000)
        } else {
            rng.below(10_000)
        })
        .min(size);
        let mut at = rng.below(size - len + 1);
        if rng.below(2) == 0 {
            at -= at % 512;
        }
        let range = at as usize..(at + len) as usize;
        match rng.below(7) {
            0..=2 => {
                let data = rng.bytes(len as usize);
                disk.write_at(&data, at).unwrap();
                model[range].copy_from_slice(&data);
            }
            3 => {
                disk.write_zeroes(at, len, rng.below(2) == 0).unwrap();
                model[range].fill(0);
            }
            4 => {
                // Discarded data is unspecified: the model takes what the
                // disk reads now, and QEMU must read the same later.
                disk.discard(at, len).unwrap();
                disk.read_at(&mut model[range], at).unwrap();
            }
            _ => {
                let mut got = vec![0u8; len as usize];
                disk.read_at(&mut got, at).unwrap();
                assert!(got[..] == model[range], "step {step}: {len} bytes at {at}");
            }
        }
    }
    disk.flush().unwrap();
}

#[test]
fn test_qemu_made_qcow2_v2_and_v3_round_trip() {
    let dir = TempDir::new("disks-roundtrip");
    let mut rng = Rng(0x5eed_0001);
    for (name, options) in [
        ("v3.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=0.10"),
        ("small-clusters.qcow2", "cluster_size=4096"),
        ("rc1.qcow2", "refcount_bits=1"),
        ("big-clusters.qcow2", "cluster_size=2M"),
    ] {
        let path = dir.join(name);
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            options,
            p(&path),
            "24M",
        ]);
        let mut model = vec![0u8; 24 << 20];
        {
            let disk = open(&path, DiskFormat::Qcow2, false);
            assert_eq!(disk.size(), 24 << 20);
            workload(disk.as_ref(), &mut model, &mut rng, 250);
        }
        assert_check_clean(&path);
        assert!(
            qemu_contents(&path, &dir) == model,
            "{name}: contents differ"
        );
        // And our reader agrees after a reopen.
        let disk = open(&path, DiskFormat::Qcow2, true);
        let mut all = vec![0u8; model.len()];
        disk.read_at(&mut all, 0).unwrap();
        assert!(all == model, "{name}: reread differs");
    }
}

#[test]
fn test_qemu_made_overlays_over_raw_and_qcow2_backings() {
    let dir = TempDir::new("disks-overlays");
    let mut rng = Rng(0x5eed_0002);
    let base = rng.bytes(16 << 20);
    std::fs::write(dir.join("base.raw"), &base).unwrap();
    // A qcow2 copy of the same data, made by QEMU, compressed: our reader
    // must inflate QEMU's deflate clusters.
    qemu_img_ok(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p(&dir.join("base.raw")),
        p(&dir.join("base.qcow2")),
    ]);
    let base_qcow2_bytes = std::fs::read(dir.join("base.qcow2")).unwrap();

    for (overlay, backing, format) in [
        ("over-raw.qcow2", "base.raw", "raw"),
        ("over-qcow2.qcow2", "base.qcow2", "qcow2"),
    ] {
        let path = dir.join(overlay);
        // Relative backing name, resolved against the overlay's directory.
        qemu_img_ok(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            format,
            p(&path),
            "20M",
        ]);
        let info = disks::inspect(&path).unwrap();
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, 20 << 20);
        assert_eq!(info.backing_file, Some(dir.join(backing)));

        let mut model = base.clone();
        model.resize(20 << 20, 0);
        {
            let disk = open(&path, DiskFormat::Qcow2, false);
            let mut all = vec![0u8; model.len()];
            disk.read_at(&mut all, 0).unwrap();
            assert!(all == model, "{overlay}: backing data not visible");
            workload(disk.as_ref(), &mut model, &mut rng, 250);
        }
        assert_check_clean(&path);
        assert!(
            qemu_contents(&path, &dir) == model,
            "{overlay}: contents differ"
        );
    }
    assert!(std::fs::read(dir.join("base.raw")).unwrap() == base);
    assert!(std::fs::read(dir.join("base.qcow2")).unwrap() == base_qcow2_bytes);
}

#[test]
fn test_created_images_pass_qemu_img() {
    let dir = TempDir::new("disks-create");
    let qcow = dir.join("new.qcow2");
    disks::create(&qcow, DiskFormat::Qcow2, 10 << 30).unwrap();
    let info = qemu_info(&qcow);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 10u64 << 30);
    assert_eq!(info["cluster-size"], 65536);
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1");
    assert_check_clean(&qcow);
    let ours = disks::inspect(&qcow).unwrap();
    assert_eq!(ours.format, DiskFormat::Qcow2);
    assert_eq!(ours.virtual_size, 10 << 30);
    assert!(ours.allocated > 0 && ours.allocated < 4 << 20, "{ours:?}");
    assert_eq!(ours.backing_file, None);

    let raw = dir.join("new.raw");
    disks::create(&raw, DiskFormat::Raw, 1 << 30).unwrap();
    let info = qemu_info(&raw);
    assert_eq!(info["format"], "raw");
    assert_eq!(info["virtual-size"], 1u64 << 30);
    assert!(disks::inspect(&raw).unwrap().allocated < 1 << 20, "sparse");

    // Written by us, read by QEMU.
    let mut rng = Rng(0x5eed_0003);
    let mut model = vec![0u8; 32 << 20];
    let small = dir.join("small.qcow2");
    disks::create(&small, DiskFormat::Qcow2, 32 << 20).unwrap();
    workload(
        open(&small, DiskFormat::Qcow2, false).as_ref(),
        &mut model,
        &mut rng,
        200,
    );
    assert_check_clean(&small);
    assert!(qemu_contents(&small, &dir) == model);

    assert!(matches!(
        disks::create(&small, DiskFormat::Qcow2, 1 << 20),
        Err(DiskError::AlreadyExists(_))
    ));
}

#[test]
fn test_overlays_we_create_pass_qemu_img() {
    let dir = TempDir::new("disks-overlay");
    let mut rng = Rng(0x5eed_0004);
    let template = dir.join("template.qcow2");
    disks::create(&template, DiskFormat::Qcow2, 8 << 20).unwrap();
    let mut model = vec![0u8; 8 << 20];
    workload(
        open(&template, DiskFormat::Qcow2, false).as_ref(),
        &mut model,
        &mut rng,
        100,
    );
    let template_bytes = std::fs::read(&template).unwrap();

    let clone = dir.join("clone.qcow2");
    disks::create_overlay(&clone, &template, DiskFormat::Qcow2, None).unwrap();
    let info = qemu_info(&clone);
    assert_eq!(info["virtual-size"], 8u64 << 20);
    assert_eq!(info["backing-filename"], p(&template));
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_check_clean(&clone);
    assert!(qemu_contents(&clone, &dir) == model);
    workload(
        open(&clone, DiskFormat::Qcow2, false).as_ref(),
        &mut model,
        &mut rng,
        150,
    );
    assert_check_clean(&clone);
    assert!(qemu_contents(&clone, &dir) == model);
    assert!(
        std::fs::read(&template).unwrap() == template_bytes,
        "template untouched"
    );

    // A raw template, a bigger clone; smaller is refused.
    let raw = dir.join("template.raw");
    std::fs::write(&raw, rng.bytes(4 << 20)).unwrap();
    let big = dir.join("big.qcow2");
    disks::create_overlay(&big, &raw, DiskFormat::Raw, Some(64 << 20)).unwrap();
    let info = qemu_info(&big);
    assert_eq!(info["virtual-size"], 64u64 << 20);
    assert_eq!(info["backing-filename-format"], "raw");
    assert_check_clean(&big);
    let mut expected = std::fs::read(&raw).unwrap();
    expected.resize(64 << 20, 0);
    assert!(qemu_contents(&big, &dir) == expected);
    assert!(matches!(
        disks::create_overlay(
            &dir.join("tiny.qcow2"),
            &raw,
            DiskFormat::Raw,
            Some(1 << 20)
        ),
        Err(DiskError::SmallerThanBacking { .. })
    ));
    assert!(!dir.join("tiny.qcow2").exists());
}

#[test]
fn test_grow_within_and_beyond_the_l1_table() {
    let dir = TempDir::new("disks-grow");
    let mut rng = Rng(0x5eed_0005);

    // Ours: 64 KiB clusters, the L1 table already covers terabytes.
    let ours = dir.join("ours.qcow2");
    disks::create(&ours, DiskFormat::Qcow2, 16 << 20).unwrap();
    let mut model = vec![0u8; 16 << 20];
    workload(
        open(&ours, DiskFormat::Qcow2, false).as_ref(),
        &mut model,
        &mut rng,
        80,
    );
    disks::grow(&ours, DiskFormat::Qcow2, 40 << 30).unwrap();
    assert_eq!(qemu_info(&ours)["virtual-size"], 40u64 << 30);
    assert_check_clean(&ours);

    // QEMU's, with 512-byte clusters: an L1 entry maps only 32 KiB, so
    // growing 4 MiB → 256 MiB must enlarge and move the L1 table.
    let small = dir.join("small.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        p(&small),
        "4M",
    ]);
    let mut model = vec![0u8; 4 << 20];
    workload(
        open(&small, DiskFormat::Qcow2, false).as_ref(),
        &mut model,
        &mut rng,
        150,
    );
    disks::grow(&small, DiskFormat::Qcow2, 256 << 20).unwrap();
    assert_eq!(qemu_info(&small)["virtual-size"], 256u64 << 20);
    assert_check_clean(&small);
    model.resize(256 << 20, 0);
    // Writes past the old end land in the new L2 tables.
    workload(
        open(&small, DiskFormat::Qcow2, false).as_ref(),
        &mut model,
        &mut rng,
        100,
    );
    assert_check_clean(&small);
    assert!(qemu_contents(&small, &dir) == model);

    let err = disks::grow(&small, DiskFormat::Qcow2, 1 << 20).unwrap_err();
    assert!(matches!(err, DiskError::WouldShrink { .. }));
    assert!(err.to_string().contains("lose"), "{err}");
    assert!(matches!(
        disks::grow(&small, DiskFormat::Qcow2, (300 << 20) + 1),
        Err(DiskError::NotSectorMultiple(_))
    ));

    let raw = dir.join("d.raw");
    disks::create(&raw, DiskFormat::Raw, 1 << 20).unwrap();
    disks::grow(&raw, DiskFormat::Raw, 3 << 20).unwrap();
    assert_eq!(qemu_info(&raw)["virtual-size"], 3u64 << 20);
}

#[test]
fn test_inspect_reports_damage_in_words() {
    let dir = TempDir::new("disks-inspect");
    let path = dir.join("d.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p(&path), "1G"]);
    let info = disks::inspect(&path).unwrap();
    assert_eq!(info.virtual_size, 1 << 30);

    // Cut short: the refcount table and L1 table are gone.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1000).unwrap();
    let err = disks::inspect(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("damaged") && text.contains("past the end"),
        "{text}"
    );

    // A qcow2 marked dirty by a crash.
    let dirty = dir.join("dirty.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", p(&dirty), "1G"]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&dirty)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &1u64.to_be_bytes(), 72).unwrap();
    let text = disks::inspect(&dirty).unwrap_err().to_string();
    assert!(text.contains("not closed cleanly"), "{text}");

    assert!(disks::inspect(&dir.join("none.img")).is_err());
}
