//! Image store tests: real files in temp dirs under /tmp, images built here
//! byte by byte (and one by umoci/skopeo), and a hostile-image suite where
//! every escape attempt is its own test.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hangar_testkit::{is_root, TempDir};

use super::format::sha256_digest;
use super::unpack::{self, UnpackOptions};
use super::*;

// ------------------------------------------------------------ tar building --

/// A tar written header by header, so that hostile names (which the tar
/// crate's own setters refuse) can be made.
struct TarB(tar::Builder<Vec<u8>>);

impl TarB {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn entry(&mut self, path: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8], mode: u32) {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..path.len()].copy_from_slice(path);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        self.entry(path.as_bytes(), tar::EntryType::Regular, b"", data, mode);
        self
    }
    fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entry(path.as_bytes(), tar::EntryType::Directory, b"", b"", mode);
        self
    }
    fn symlink(mut self, path: &str, target: &str) -> Self {
        let t = target.as_bytes();
        self.entry(path.as_bytes(), tar::EntryType::Symlink, t, b"", 0o777);
        self
    }
    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let t = target.as_bytes();
        self.entry(path.as_bytes(), tar::EntryType::Link, t, b"", 0o644);
        self
    }
    fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        h.set_mode(0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// A layer: the blob as stored, and the uncompressed tar's digest.
struct Layer {
    blob: Vec<u8>,
    diff_id: String,
}

fn layer(tar: Vec<u8>, compress: fn(&[u8]) -> Vec<u8>) -> Layer {
    Layer {
        diff_id: sha256_digest(&tar),
        blob: compress(&tar),
    }
}

fn plain(d: &[u8]) -> Vec<u8> {
    d.to_vec()
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn write_blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let d = sha256_digest(bytes);
    let p = dir.join("blobs/sha256").join(&d["sha256:".len()..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
    (d, bytes.len() as u64)
}

/// Writes an OCI image layout by hand; returns the manifest's raw bytes.
fn oci_layout(dir: &Path, layers: &[Layer], ref_name: &str) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let (cd, cs) = write_blob(dir, &config_json(&diff_ids));
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let (d, s) = write_blob(dir, &l.blob);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
        })
        .collect();
    // Deliberately unusual formatting: the raw bytes must be kept as they are.
    let manifest = format!(
        "{{ \"schemaVersion\": 2,\n  \"mediaType\": \"{}\",\n  \"config\": {{\"mediaType\": \"{}\", \"digest\": \"{cd}\", \"size\": {cs}}},\n  \"layers\": {} }}\n",
        format::MEDIA_OCI_MANIFEST,
        format::MEDIA_OCI_CONFIG,
        serde_json::to_string(&descs).unwrap()
    )
    .into_bytes();
    let (md, ms) = write_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": format::MEDIA_OCI_MANIFEST, "digest": md, "size": ms,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {format::ANNOTATION_REF_NAME: ref_name},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest
}

/// A tar of a directory's regular files (for OCI-layout tars).
fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// A docker-archive (`docker save` layout) of uncompressed layer tars.
fn docker_archive(layers: &[Vec<u8>], tag: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = config_json(&diff_ids);
    let config_name = format!("{}.json", &sha256_digest(&config)["sha256:".len()..]);
    let mut t = TarB::new();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        t = t.dir(&format!("{id}/"), 0o755);
        t = t.file(&format!("{id}/layer.tar"), l, 0o644);
        names.push(format!("{id}/layer.tar"));
    }
    t = t.file(&config_name, &config, 0o644);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": [tag], "Layers": names}]);
    t.file(
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
        0o644,
    )
    .bytes()
}

// ---------------------------------------------------------------- fixture --

/// A temp dir holding the store (`data/`), a sentinel file and an
/// `outside/` directory that hostile images aim at.
struct Base {
    tmp: TempDir,
}

impl Base {
    fn new() -> Self {
        let tmp = TempDir::new("images");
        std::fs::create_dir(tmp.join("outside")).unwrap();
        std::fs::write(tmp.join("sentinel"), b"original").unwrap();
        Self { tmp }
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn sentinel(&self) -> PathBuf {
        self.path().join("sentinel")
    }
    fn outside(&self) -> PathBuf {
        self.path().join("outside")
    }
    fn store(&self) -> ImageStore {
        ImageStore::open(&self.path().join("data")).unwrap()
    }
    /// Everything in the base dir except the store (and test inputs in
    /// `src*`), with sizes and link counts.
    fn snapshot(&self) -> BTreeSet<(PathBuf, u64, u64)> {
        fn walk(p: &Path, out: &mut BTreeSet<(PathBuf, u64, u64)>) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                let path = e.path();
                let md = std::fs::symlink_metadata(&path).unwrap();
                out.insert((path.clone(), md.len(), md.nlink()));
                if md.is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        for e in std::fs::read_dir(self.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "data" || name.starts_with("src") {
                continue;
            }
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            out.insert((e.path(), md.len(), md.nlink()));
            if md.is_dir() {
                walk(&e.path(), &mut out);
            }
        }
        out
    }
    fn assert_untouched(&self, before: &BTreeSet<(PathBuf, u64, u64)>) {
        assert_eq!(std::fs::read(self.sentinel()).unwrap(), b"original");
        assert_eq!(std::fs::metadata(self.sentinel()).unwrap().nlink(), 1);
        assert_eq!(
            &self.snapshot(),
            before,
            "something appeared outside the store"
        );
        assert_eq!(std::fs::read_dir(self.outside()).unwrap().count(), 0);
    }
}

fn no_progress(_: ImportProgress) {}

fn assert_store_empty(store: &ImageStore) {
    for d in ["blobs/sha256", "layers", "images", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(store.root().join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{d} is not empty: {left:?}");
    }
}

/// Imports a one-layer OCI layout made of `tar` (gzip) and returns the
/// result, with the base dir snapshot taken before.
fn import_layer(base: &Base, tar: Vec<u8>) -> Result<ImageRecord, ImageError> {
    let src = base.path().join("src");
    oci_layout(&src, &[layer(tar, gzip)], "hostile");
    base.store().import(&src, Some("hostile"), &mut no_progress)
}

/// A hostile one-layer image must fail and leave nothing anywhere.
fn assert_rejected(tar: Vec<u8>) -> ImageError {
    let base = Base::new();
    let before = base.snapshot();
    let err = import_layer(&base, tar).unwrap_err();
    base.assert_untouched(&before);
    assert_store_empty(&base.store());
    err
}

// ------------------------------------------------------------------ import --

#[test]
fn test_images_import_oci_layout_dir_keeps_files_modes_and_raw_manifest() {
    let base = Base::new();
    let l1 = TarB::new()
        .dir("bin/", 0o755)
        .file("bin/busybox", b"#!fake busybox\n", 0o4755)
        .symlink("bin/sh", "/bin/busybox")
        .hardlink("bin/ls", "bin/busybox")
        .dir("etc/", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .dir("ro/", 0o555)
        .file("ro/inside", b"x", 0o444)
        .bytes();
    let l2 = TarB::new().file("etc/motd", b"hello\n", 0o600).bytes();
    let src = base.path().join("src");
    let raw = oci_layout(&src, &[layer(l1, gzip), layer(l2, gzip)], "v1");
    let store = base.store();
    let mut events = Vec::new();
    let rec = store
        .import(&src, Some("first"), &mut |p| events.push(p))
        .unwrap();
    assert_eq!(rec.name, "first");
    assert_eq!(rec.source_format, "oci-layout");
    assert_eq!(rec.manifest.as_bytes(), raw.as_slice());
    assert_eq!(rec.manifest_digest, sha256_digest(&raw));
    assert_eq!(
        std::fs::read(store.blob_path(&rec.manifest_digest).unwrap()).unwrap(),
        raw
    );
    assert_eq!(rec.config.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(events.last().unwrap().stage, ImportStage::Done);
    assert_eq!(events.last().unwrap().layers_done, 2);
    assert!(events.iter().any(|e| e.stage == ImportStage::Unpacking));

    let roots = store.layer_roots(&rec).unwrap();
    let r0 = &roots[0];
    assert_eq!(
        std::fs::read(r0.join("bin/busybox")).unwrap(),
        b"#!fake busybox\n"
    );
    let md = std::fs::metadata(r0.join("bin/busybox")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(md.nlink(), 2, "bin/ls is a hardlink");
    assert_eq!(
        std::fs::read_link(r0.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        std::fs::metadata(r0.join("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    assert_eq!(
        std::fs::metadata(r0.join("ro/inside")).unwrap().mtime(),
        1_700_000_000
    );
    let motd = roots[1].join("etc/motd");
    assert_eq!(
        std::fs::metadata(&motd).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(store.list().unwrap(), vec![rec.clone()]);
    assert_eq!(store.get("first").unwrap(), rec);
    let summary = store.layer_summary(&rec.layers[0].diff_id).unwrap();
    assert_eq!(summary.entries, 8);
    assert!(std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert_eq!(
        std::fs::metadata(store.root())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn test_images_import_oci_layout_tar_with_zstd_and_plain_layers() {
    let base = Base::new();
    let l1 = TarB::new().file("a", b"zstd layer", 0o644).bytes();
    let l2 = TarB::new().file("b", b"plain layer", 0o644).bytes();
    let src = base.path().join("src");
    oci_layout(&src, &[layer(l1, zstd), layer(l2, plain)], "tagged");
    let archive = base.path().join("src-layout.tar");
    std::fs::write(&archive, tar_dir(&src)).unwrap();
    let store = base.store();
    let rec = store.import(&archive, None, &mut no_progress).unwrap();
    assert_eq!(rec.name, "tagged", "named by the index annotation");
    let roots = store.layer_roots(&rec).unwrap();
    assert_eq!(std::fs::read(roots[0].join("a")).unwrap(), b"zstd layer");
    assert_eq!(std::fs::read(roots[1].join("b")).unwrap(), b"plain layer");
    assert!(std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn test_images_zstd_multi_frame_layer_is_read_whole() {
    let base = Base::new();
    let tar = TarB::new()
        .file("one", &[1u8; 5000], 0o644)
        .file("two", &[2u8; 5000], 0o644)
        .bytes();
    let (a, b) = tar.split_at(2048);
    let mut blob = zstd(a);
    blob.extend(zstd(b));
    let l = Layer {
        diff_id: sha256_digest(&tar),
        blob,
    };
    let src = base.path().join("src");
    oci_layout(&src, &[l], "x");
    let store = base.store();
    let rec = store.import(&src, Some("multi"), &mut no_progress).unwrap();
    let root = &store.layer_roots(&rec).unwrap()[0];
    assert_eq!(std::fs::read(root.join("two")).unwrap(), vec![2u8; 5000]);
}

#[test]
fn test_images_import_docker_archive_gzipped_and_named_by_repo_tag() {
    let base = Base::new();
    let l1 = TarB::new()
        .dir("etc/", 0o755)
        .file("etc/os", b"docker", 0o644)
        .bytes();
    let l2 = TarB::new()
        .file("etc/.wh.os", b"", 0o644)
        .file("new", b"n", 0o644)
        .bytes();
    let archive = base.path().join("src-save.tar.gz");
    std::fs::write(&archive, gzip(&docker_archive(&[l1, l2], "busybox:latest"))).unwrap();
    let store = base.store();
    let mut stages = BTreeSet::new();
    let rec = store
        .import(&archive, None, &mut |p| {
            stages.insert(format!("{:?}", p.stage));
        })
        .unwrap();
    assert_eq!(rec.name, "busybox:latest");
    assert_eq!(rec.source_format, "docker-archive");
    assert_eq!(rec.manifest_digest, sha256_digest(rec.manifest.as_bytes()));
    assert!(store.blob_path(&rec.manifest_digest).unwrap().is_file());
    assert!(
        stages.contains("Reading") && stages.contains("Done"),
        "{stages:?}"
    );
    let roots = store.layer_roots(&rec).unwrap();
    assert_eq!(std::fs::read(roots[0].join("etc/os")).unwrap(), b"docker");
    let s = store.layer_summary(&rec.layers[1].diff_id).unwrap();
    assert_eq!(s.whiteouts, vec!["etc/os".to_string()]);
    // The name is a file name safely: ':' is encoded.
    assert!(store.root().join("images/busybox%3Alatest.json").is_file());
}

#[test]
fn test_images_shared_layers_are_refcounted_on_remove() {
    let base = Base::new();
    let shared = TarB::new().file("shared", b"s", 0o644).bytes();
    let only_a = TarB::new().file("a", b"a", 0o644).bytes();
    let only_b = TarB::new().file("b", b"b", 0o644).bytes();
    let store = base.store();
    let src_a = base.path().join("src-a");
    let src_b = base.path().join("src-b");
    oci_layout(
        &src_a,
        &[layer(shared.clone(), gzip), layer(only_a, gzip)],
        "a",
    );
    oci_layout(
        &src_b,
        &[layer(shared.clone(), gzip), layer(only_b, gzip)],
        "b",
    );
    let a = store.import(&src_a, None, &mut no_progress).unwrap();
    let b = store.import(&src_b, None, &mut no_progress).unwrap();
    assert_eq!(a.layers[0], b.layers[0]);
    assert_eq!(store.list().unwrap().len(), 2);
    let count = |d: &str| std::fs::read_dir(store.root().join(d)).unwrap().count();
    assert_eq!(count("layers"), 3);

    store.remove("a").unwrap();
    assert!(matches!(store.get("a"), Err(ImageError::NotFound(_))));
    assert_eq!(count("layers"), 2);
    assert!(store
        .layer_dir(&a.layers[0].diff_id)
        .unwrap()
        .join("root/shared")
        .is_file());
    assert!(!store.layer_dir(&a.layers[1].diff_id).unwrap().exists());
    assert!(store.blob_path(&a.layers[0].blob_digest).unwrap().is_file());
    assert!(!store.blob_path(&a.layers[1].blob_digest).unwrap().exists());
    assert!(!store.blob_path(&a.manifest_digest).unwrap().exists());

    store.remove("b").unwrap();
    assert_store_empty(&store);
    assert!(matches!(store.remove("b"), Err(ImageError::NotFound(_))));
}

#[test]
fn test_images_reimport_same_name_replaces_and_collects() {
    let base = Base::new();
    let store = base.store();
    let src1 = base.path().join("src1");
    let src2 = base.path().join("src2");
    oci_layout(
        &src1,
        &[layer(TarB::new().file("v", b"1", 0o644).bytes(), gzip)],
        "x",
    );
    oci_layout(
        &src2,
        &[layer(TarB::new().file("v", b"2", 0o644).bytes(), gzip)],
        "x",
    );
    let one = store.import(&src1, Some("app"), &mut no_progress).unwrap();
    let two = store.import(&src2, Some("app"), &mut no_progress).unwrap();
    assert_eq!(store.list().unwrap(), vec![two]);
    assert!(!store.layer_dir(&one.layers[0].diff_id).unwrap().exists());
}

#[test]
fn test_images_bad_names_are_refused() {
    let base = Base::new();
    let store = base.store();
    for bad in ["", ".hidden", "-x", "a b", "a\nb", "../etc/passwd"] {
        assert!(
            matches!(store.get(bad), Err(ImageError::BadName(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.get("x/../../etc/passwd"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn test_images_layer_digest_mismatch_rejects_and_leaves_nothing() {
    let base = Base::new();
    let good = layer(TarB::new().file("good", b"g", 0o644).bytes(), gzip);
    let bad = layer(TarB::new().file("bad", b"b", 0o644).bytes(), gzip);
    let src = base.path().join("src");
    oci_layout(&src, &[good, bad], "x");
    // Corrupt the second layer's blob in place (same name, same size).
    let manifest: serde_json::Value = {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
        let d = idx["manifests"][0]["digest"].as_str().unwrap().to_string();
        serde_json::from_slice(&std::fs::read(src.join("blobs/sha256").join(&d[7..])).unwrap())
            .unwrap()
    };
    let d = manifest["layers"][1]["digest"].as_str().unwrap();
    let p = src.join("blobs/sha256").join(&d[7..]);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();

    let store = base.store();
    let err = store.import(&src, Some("x"), &mut no_progress).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_store_empty(&store);
}

#[test]
fn test_images_diff_id_mismatch_rejects_and_leaves_nothing() {
    let base = Base::new();
    let mut l = layer(TarB::new().file("f", b"f", 0o644).bytes(), gzip);
    l.diff_id = sha256_digest(b"not this layer");
    let src = base.path().join("src");
    oci_layout(&src, &[l], "x");
    let store = base.store();
    let err = store.import(&src, Some("x"), &mut no_progress).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_store_empty(&store);
}

#[test]
fn test_images_manifest_digest_mismatch_rejects() {
    let base = Base::new();
    let src = base.path().join("src");
    oci_layout(
        &src,
        &[layer(TarB::new().file("f", b"f", 0o644).bytes(), gzip)],
        "x",
    );
    let idx = std::fs::read_to_string(src.join("index.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&idx).unwrap();
    let d = v["manifests"][0]["digest"].as_str().unwrap();
    let p = src.join("blobs/sha256").join(&d[7..]);
    let mut m = std::fs::read(&p).unwrap();
    m[0] = b' ';
    std::fs::write(&p, m).unwrap();
    let store = base.store();
    let err = store.import(&src, Some("x"), &mut no_progress).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert_store_empty(&store);
}

#[test]
fn test_images_not_an_image_is_a_format_error() {
    let base = Base::new();
    let src = base.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let store = base.store();
    let err = store.import(&src, Some("x"), &mut no_progress).unwrap_err();
    assert!(matches!(err, ImageError::Format(_)), "{err}");
}

// ----------------------------------------------------------- hostile suite --

#[test]
fn test_images_hostile_dotdot_path_rejected() {
    let t = TarB::new().file("../escape", b"pwned", 0o644).bytes();
    assert!(matches!(assert_rejected(t), ImageError::UnsafeEntry { .. }));
}

#[test]
fn test_images_hostile_nested_dotdot_path_rejected() {
    let t = TarB::new()
        .dir("a/", 0o755)
        .file("a/../../../escape", b"pwned", 0o644)
        .bytes();
    assert!(matches!(assert_rejected(t), ImageError::UnsafeEntry { .. }));
}

#[test]
fn test_images_hostile_absolute_path_rejected() {
    let base = Base::new();
    let target = base.outside().join("abs");
    let t = TarB::new()
        .file(target.to_str().unwrap(), b"pwned", 0o644)
        .bytes();
    let before = base.snapshot();
    let err = import_layer(&base, t).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    base.assert_untouched(&before);
    assert_store_empty(&base.store());
}

#[test]
fn test_images_hostile_symlink_dir_outside_then_write_through_it() {
    let base = Base::new();
    let outside = base.outside();
    let t = TarB::new()
        .symlink("evil", outside.to_str().unwrap())
        .file("evil/pwned", b"pwned", 0o644)
        .bytes();
    let before = base.snapshot();
    assert!(import_layer(&base, t).is_err());
    base.assert_untouched(&before);
    assert_store_empty(&base.store());
}

#[test]
fn test_images_hostile_relative_symlink_climbing_out_then_write_through_it() {
    let base = Base::new();
    // Deep enough to climb from the layer root to / and back down.
    let climb = format!("{}{}", "../".repeat(20), base.outside().display());
    let t = TarB::new()
        .dir("d/", 0o755)
        .symlink("d/up", &climb)
        .file("d/up/pwned", b"pwned", 0o644)
        .bytes();
    let before = base.snapshot();
    assert!(import_layer(&base, t).is_err());
    base.assert_untouched(&before);
    assert_store_empty(&base.store());
}

#[test]
fn test_images_hostile_symlink_to_outside_file_then_file_over_it() {
    // A file entry at the name of a symlink replaces the symlink; the
    // target outside is never opened.
    let base = Base::new();
    let t = TarB::new()
        .symlink("link", base.sentinel().to_str().unwrap())
        .file("link", b"pwned", 0o644)
        .bytes();
    let before = base.snapshot();
    let rec = import_layer(&base, t).unwrap();
    base.assert_untouched(&before);
    let store = base.store();
    let root = &store.layer_roots(&rec).unwrap()[0];
    let md = std::fs::symlink_metadata(root.join("link")).unwrap();
    assert!(md.is_file());
    assert_eq!(std::fs::read(root.join("link")).unwrap(), b"pwned");
}

#[test]
fn test_images_hostile_symlink_chain_out_then_write_through_it() {
    let base = Base::new();
    let t = TarB::new()
        .symlink("a", "b")
        .symlink("b", "c/../c2")
        .dir("c/", 0o755)
        .symlink("c2", "../../../../../../../../..")
        .file("a/sentinel", b"pwned", 0o644)
        .file(&format!("a{}", base.sentinel().display()), b"pwned", 0o644)
        .bytes();
    let before = base.snapshot();
    let result = import_layer(&base, t);
    base.assert_untouched(&before);
    // Resolved inside the root, the chain ends at the root itself: the
    // files land in the layer, never outside.
    let rec = result.unwrap();
    let store = base.store();
    let root = &store.layer_roots(&rec).unwrap()[0];
    assert_eq!(std::fs::read(root.join("sentinel")).unwrap(), b"pwned");
}

#[test]
fn test_images_hostile_hardlink_to_absolute_outside_file_rejected() {
    let base = Base::new();
    let t = TarB::new()
        .hardlink("h", base.sentinel().to_str().unwrap())
        .bytes();
    let before = base.snapshot();
    let err = import_layer(&base, t).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    base.assert_untouched(&before);
    assert_store_empty(&base.store());
}

#[test]
fn test_images_hostile_hardlink_dotdot_rejected() {
    let t = TarB::new()
        .hardlink("h", "../../../../../../../../../etc/passwd")
        .bytes();
    assert!(matches!(assert_rejected(t), ImageError::UnsafeEntry { .. }));
}

#[test]
fn test_images_hostile_hardlink_through_symlink_dir_rejected() {
    let base = Base::new();
    let t = TarB::new()
        .symlink("d", base.path().to_str().unwrap())
        .hardlink("h", "d/sentinel")
        .bytes();
    let before = base.snapshot();
    assert!(import_layer(&base, t).is_err());
    base.assert_untouched(&before);
    assert_store_empty(&base.store());
}

#[test]
fn test_images_hostile_huge_file_past_cap_rejected() {
    let base = Base::new();
    // 4 MiB of zeros: a few KiB gzipped, past a 1 MiB cap.
    let t = TarB::new().file("big", &vec![0u8; 4 << 20], 0o644).bytes();
    let src = base.path().join("src");
    oci_layout(&src, &[layer(t, gzip)], "x");
    let mut store = base.store();
    store.set_size_cap(1 << 20);
    let before = base.snapshot();
    let err = store
        .import(&src, Some("big"), &mut no_progress)
        .unwrap_err();
    assert!(
        matches!(err, ImageError::TooLarge { limit } if limit == 1 << 20),
        "{err}"
    );
    base.assert_untouched(&before);
    assert_store_empty(&store);
}

#[test]
fn test_images_hostile_many_small_files_count_against_cap() {
    let base = Base::new();
    let mut t = TarB::new();
    for i in 0..400 {
        t = t.file(&format!("f{i}"), &[7u8; 4096], 0o644);
    }
    let src = base.path().join("src");
    oci_layout(&src, &[layer(t.bytes(), gzip)], "x");
    let mut store = base.store();
    store.set_size_cap(1 << 20);
    let err = store
        .import(&src, Some("many"), &mut no_progress)
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    assert_store_empty(&store);
}

#[test]
fn test_images_hostile_device_node_kept_only_as_root() {
    let base = Base::new();
    let t = TarB::new().chardev("dev/mem-like", 1, 3).bytes();
    let before = base.snapshot();
    let rec = import_layer(&base, t).unwrap();
    base.assert_untouched(&before);
    let store = base.store();
    let node = store.layer_roots(&rec).unwrap()[0].join("dev/mem-like");
    let summary = store.layer_summary(&rec.layers[0].diff_id).unwrap();
    if is_root() {
        let md = std::fs::symlink_metadata(&node).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), libc::makedev(1, 3));
        assert!(summary.skipped.is_empty());
    } else {
        assert!(!node.exists());
        assert_eq!(summary.skipped.len(), 1);
    }
}

#[test]
fn test_images_hostile_device_node_skipped_when_not_root() {
    // The rootless path, forced: no node is made, and it is listed.
    let base = Base::new();
    let dest = base.path().join("data-layer");
    std::fs::create_dir(&dest).unwrap();
    let t = TarB::new()
        .chardev("dev/null", 1, 3)
        .file("ok", b"x", 0o644)
        .bytes();
    let opts = UnpackOptions {
        size_cap: 1 << 20,
        chown: false,
        devices: false,
        whiteouts: unpack::WhiteoutForm::Recorded,
    };
    let s = unpack::unpack_tar(&t[..], &dest, &opts, &mut || {}).unwrap();
    assert!(!dest.join("dev/null").exists());
    assert!(dest.join("ok").is_file());
    assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
    assert_eq!(s.diff_id, sha256_digest(&t));
}

#[test]
fn test_images_hostile_whiteout_of_dotdot_rejected() {
    let t = TarB::new().file("../.wh.x", b"", 0o644).bytes();
    assert!(matches!(assert_rejected(t), ImageError::UnsafeEntry { .. }));
    let t = TarB::new()
        .dir("d/", 0o755)
        .file("d/.wh...", b"", 0o644)
        .bytes();
    assert!(matches!(assert_rejected(t), ImageError::UnsafeEntry { .. }));
}

#[test]
fn test_images_whiteouts_recorded_and_in_overlay_form_as_root() {
    let base = Base::new();
    let t = TarB::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.passwd", b"", 0o644)
        .dir("var/", 0o755)
        .file("var/.wh..wh..opq", b"", 0o644)
        .file("var/kept", b"k", 0o644)
        .bytes();
    let rec = import_layer(&base, t).unwrap();
    let store = base.store();
    let s = store.layer_summary(&rec.layers[0].diff_id).unwrap();
    assert_eq!(s.whiteouts, vec!["etc/passwd".to_string()]);
    assert_eq!(s.opaque_dirs, vec!["var".to_string()]);
    let root = &store.layer_roots(&rec).unwrap()[0];
    assert!(root.join("var/kept").is_file());
    assert!(!root.join("etc/.wh.passwd").exists());
    if is_root() {
        assert!(s.overlay_whiteouts);
        let md = std::fs::symlink_metadata(root.join("etc/passwd")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), 0);
        let mut buf = [0u8; 4];
        let path = std::ffi::CString::new(root.join("var").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path and attribute name, buffer of the length given.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, 1);
        assert_eq!(buf[0], b'y');
    }
}

#[test]
fn test_images_hostile_outer_archive_symlink_cannot_read_host_files() {
    // A docker-archive whose layer "file" is a symlink to a host file: the
    // archive is staged safely and the symlink resolves inside it.
    let base = Base::new();
    let layer_tar = TarB::new().file("f", b"f", 0o644).bytes();
    let config = config_json(&[sha256_digest(&layer_tar)]);
    let cname = format!("{}.json", &sha256_digest(&config)[7..]);
    let manifest =
        serde_json::json!([{"Config": cname, "RepoTags": ["x:y"], "Layers": ["l/layer.tar"]}]);
    let t = TarB::new()
        .symlink("l", &base.path().display().to_string())
        .file(&cname, &config, 0o644)
        .file(
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
            0o644,
        )
        .bytes();
    // Put a real layer where the symlink would point on the host.
    std::fs::write(base.path().join("layer.tar"), &layer_tar).unwrap();
    let archive = base.path().join("src.tar");
    std::fs::write(&archive, t).unwrap();
    let store = base.store();
    let before = base.snapshot();
    let err = store.import(&archive, None, &mut no_progress).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    base.assert_untouched(&before);
    assert_store_empty(&store);
}

// ---------------------------------------------------- umoci / skopeo image --

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn test_images_import_umoci_image_and_skopeo_docker_archive() {
    for tool in ["umoci", "skopeo"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: run packaging/setup.sh, which installs it"
        );
    }
    let base = Base::new();
    let layout = base.path().join("src-oci");
    let bundle = base.path().join("src-bundle");
    let image = format!("{}:latest", layout.display());
    run(std::process::Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(std::process::Command::new("umoci").args(["new", "--image", &image]));
    let mut unpack = std::process::Command::new("umoci");
    unpack.args(["unpack", "--image", &image]);
    if !is_root() {
        unpack.arg("--rootless");
    }
    run(unpack.arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hello"), b"from umoci\n").unwrap();
    std::os::unix::fs::symlink("hello", rootfs.join("etc/hi")).unwrap();
    run(std::process::Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(std::process::Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
    ]));

    let store = base.store();
    let rec = store
        .import(&layout, Some("umoci"), &mut no_progress)
        .unwrap();
    assert_eq!(rec.layers.len(), 1);
    assert_eq!(rec.config.config.cmd, Some(vec!["/bin/sh".to_string()]));
    let root = &store.layer_roots(&rec).unwrap()[0];
    assert_eq!(
        std::fs::read(root.join("etc/hello")).unwrap(),
        b"from umoci\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/hi")).unwrap(),
        Path::new("hello")
    );

    let archive = base.path().join("src-docker.tar");
    run(std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", &format!("oci:{image}")])
        .arg(format!("docker-archive:{}:hello:v1", archive.display())));
    let rec2 = store.import(&archive, None, &mut no_progress).unwrap();
    assert!(rec2.name.ends_with("hello:v1"), "{}", rec2.name);
    assert_eq!(rec2.source_format, "docker-archive");
    assert_eq!(
        rec2.layers[0].diff_id, rec.layers[0].diff_id,
        "the layer is shared"
    );
    assert_eq!(store.list().unwrap().len(), 2);
    store.remove("umoci").unwrap();
    assert_eq!(store.list().unwrap(), vec![rec2]);
    assert!(root.join("etc/hello").is_file(), "still used by hello:v1");
}

#[test]
fn test_images_import_default_image_built_by_setup() {
    // packaging/setup.sh builds this layout (CI runs it before the tests);
    // it is imported into a temp store, never into the real one.
    let src = match hangar_api::dirs::data_dir() {
        Ok(d) => d.join("images-src/default"),
        Err(e) => {
            eprintln!("SKIPPED test_images_import_default_image_built_by_setup: {e}");
            return;
        }
    };
    if !src.join("index.json").is_file() {
        eprintln!(
            "SKIPPED test_images_import_default_image_built_by_setup: {} is missing; run packaging/setup.sh",
            src.display()
        );
        return;
    }
    let base = Base::new();
    let store = base.store();
    let rec = store.import(&src, None, &mut no_progress).unwrap();
    assert_eq!(rec.name, "default");
    assert_eq!(rec.config.config.cmd, Some(vec!["/bin/sh".to_string()]));
    let root = &store.layer_roots(&rec).unwrap()[0];
    let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
    assert!(bb.is_file() && bb.permissions().mode() & 0o111 != 0);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0:"));
    assert_eq!(
        std::fs::metadata(root.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
}
