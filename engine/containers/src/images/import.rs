//! Import of an OCI image layout or a docker-archive into the store.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::Digest;

use super::format::{
    self, digest_hex, sha256_digest, to_hex, Descriptor, DockerArchiveEntry, ImageConfig, Index,
    Manifest,
};
use super::unpack::{self, UnpackOptions};
use super::{
    remove_tree, FormatError, ImageError, ImageProgressSink, ImageRecord, ImageStore,
    ImportProgress, ImportStage, LayerRecord, RECORD_VERSION,
};
use hangar_api::error_text;

/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 4 << 20;
/// Report progress at most every this many bytes.
const PROGRESS_STEP: u64 = 256 << 10;

/// Paths an import created, removed unless the import completes.
struct Undo {
    paths: Vec<PathBuf>,
    done: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.done {
            for p in self.paths.iter().rev() {
                if let Err(e) = remove_tree(p) {
                    log::warn!("cannot clean up after a failed import: {}", error_text(&e));
                }
            }
        }
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            log::warn!("{}", error_text(&e));
        }
    }
}

/// A reader that reports bytes read through a callback, now and then.
struct Counted<'a, R> {
    inner: R,
    done: u64,
    reported: u64,
    report: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= PROGRESS_STEP || (n == 0 && self.done > self.reported) {
            self.reported = self.done;
            (self.report)(self.done);
        }
        Ok(n)
    }
}

/// One layer to import.
struct PlanLayer {
    rel: String,
    digest: Option<String>,
    size: Option<u64>,
    media_type: String,
}

/// What a source holds, before anything is copied.
struct Plan {
    format: &'static str,
    /// OCI: the manifest's raw bytes (already verified) and digest.
    manifest: Option<(Vec<u8>, String)>,
    config_raw: Vec<u8>,
    config_digest: String,
    layers: Vec<PlanLayer>,
    name: Option<String>,
}

pub(super) fn import(
    store: &ImageStore,
    source: &Path,
    name: Option<&str>,
    progress: ImageProgressSink<'_>,
) -> Result<ImageRecord, ImageError> {
    let tmp = store.root.join("tmp");
    // We hold the store lock: anything in tmp/ is left over from a crash.
    for e in std::fs::read_dir(&tmp).map_err(ImageError::io("list", &tmp))? {
        let e = e.map_err(ImageError::io("list", &tmp))?;
        remove_tree(&e.path())?;
    }
    let mut undo = Undo {
        paths: Vec::new(),
        done: false,
    };

    let md = std::fs::metadata(source).map_err(ImageError::io("read", source))?;
    let _scratch;
    let root: OwnedFd = if md.is_dir() {
        unpack::open_root(source).map_err(ImageError::io("open", source))?
    } else {
        let dir = tmp.join("archive");
        _scratch = Scratch(dir.clone());
        std::fs::create_dir(&dir).map_err(ImageError::io("create", &dir))?;
        let file = File::open(source).map_err(ImageError::io("open", source))?;
        let total = md.len();
        let mut report = |done| {
            progress(ImportProgress {
                stage: ImportStage::Reading,
                bytes_done: done,
                bytes_total: total,
                layers_done: 0,
                layers_total: 0,
            })
        };
        let counted = Counted {
            inner: file,
            done: 0,
            reported: 0,
            report: &mut report,
        };
        let tar = unpack::decompress(BufReader::with_capacity(1 << 16, counted))?;
        let opts = UnpackOptions {
            size_cap: store.size_cap.max(total.saturating_mul(2)),
            chown: false,
            devices: false,
            whiteouts: unpack::WhiteoutForm::Recorded,
        };
        unpack::unpack_tar(tar, &dir, &opts, &mut || {})?;
        unpack::open_root(&dir).map_err(ImageError::io("open", &dir))?
    };

    let plan = if exists(&root, "index.json") {
        plan_oci(&root, name)?
    } else if exists(&root, "manifest.json") {
        plan_docker(&root, name)?
    } else {
        return Err(FormatError::UnknownLayout {
            path: source.to_path_buf(),
        }
        .into());
    };
    let name = match name.map(str::to_string).or(plan.name.clone()) {
        Some(n) => n,
        None => {
            return Err(ImageError::BadName(
                "(the image carries no name: give one)".into(),
            ))
        }
    };
    super::check_name(&name)?;
    let config: ImageConfig =
        serde_json::from_slice(&plan.config_raw).map_err(ImageError::json("image config"))?;
    if config.rootfs.diff_ids.len() != plan.layers.len() {
        return Err(FormatError::LayerCount {
            diff_ids: config.rootfs.diff_ids.len(),
            layers: plan.layers.len(),
        }
        .into());
    }
    for d in &config.rootfs.diff_ids {
        digest_hex(d)?;
    }

    // Stage 1: copy and verify every blob.
    let layers_total = plan.layers.len();
    let mut sizes = Vec::new();
    for l in &plan.layers {
        let size = match l.size {
            Some(s) => s,
            None => open_in(&root, &l.rel)?
                .metadata()
                .map_err(ImageError::io("read", Path::new(&l.rel)))?
                .len(),
        };
        sizes.push(size);
    }
    let bytes_total: u64 = sizes.iter().sum();
    put_bytes(store, &plan.config_raw, &mut undo)?;
    let mut layer_records = Vec::new();
    let mut base = 0u64;
    for (i, l) in plan.layers.iter().enumerate() {
        let mut report = |done: u64| {
            progress(ImportProgress {
                stage: ImportStage::Verifying,
                bytes_done: base + done,
                bytes_total,
                layers_done: i,
                layers_total,
            })
        };
        let file = open_in(&root, &l.rel)?;
        let (digest, size) = put_stream(
            store,
            file,
            &l.rel,
            l.digest.as_deref(),
            l.size,
            &mut report,
            &mut undo,
        )?;
        base += size;
        layer_records.push(LayerRecord {
            blob_digest: digest,
            blob_size: size,
            media_type: l.media_type.clone(),
            diff_id: config.rootfs.diff_ids[i].clone(),
        });
    }

    // The manifest: as found (OCI), or written for a docker-archive.
    let (manifest_raw, manifest_digest) = match plan.manifest {
        Some(m) => m,
        None => {
            let m = Manifest {
                schema_version: 2,
                media_type: Some(format::MEDIA_OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: Some(format::MEDIA_OCI_CONFIG.into()),
                    digest: plan.config_digest.clone(),
                    size: plan.config_raw.len() as u64,
                    platform: None,
                    annotations: None,
                },
                layers: layer_records
                    .iter()
                    .map(|l| Descriptor {
                        media_type: Some(l.media_type.clone()),
                        digest: l.blob_digest.clone(),
                        size: l.blob_size,
                        platform: None,
                        annotations: None,
                    })
                    .collect(),
            };
            let raw = serde_json::to_vec(&m).map_err(ImageError::json("manifest"))?;
            let d = sha256_digest(&raw);
            (raw, d)
        }
    };
    put_bytes(store, &manifest_raw, &mut undo)?;
    let manifest = String::from_utf8(manifest_raw).map_err(FormatError::ManifestNotUtf8)?;

    // Stage 2: unpack the layers the store does not have yet.
    let mut budget = store.size_cap;
    let mut base = 0u64;
    let opts = UnpackOptions::for_process(0);
    for (i, l) in layer_records.iter().enumerate() {
        let dest = store.layer_dir(&l.diff_id)?;
        let mut report = |done: u64| {
            progress(ImportProgress {
                stage: ImportStage::Unpacking,
                bytes_done: base + done,
                bytes_total,
                layers_done: i,
                layers_total,
            })
        };
        if !dest.join("layer.json").is_file() {
            let work = tmp.join(format!("layer-{}", digest_hex(&l.diff_id)?));
            let _scratch = Scratch(work.clone());
            let root_dir = work.join("root");
            std::fs::create_dir_all(&root_dir).map_err(ImageError::io("create", &root_dir))?;
            let blob = store.blob_path(&l.blob_digest)?;
            let file = File::open(&blob).map_err(ImageError::io("open", &blob))?;
            let counted = Counted {
                inner: file,
                done: 0,
                reported: 0,
                report: &mut report,
            };
            let tar = unpack::decompress(BufReader::with_capacity(1 << 16, counted))?;
            let opts = UnpackOptions {
                size_cap: budget,
                ..opts
            };
            let summary =
                unpack::unpack_tar(tar, &root_dir, &opts, &mut || {}).map_err(|e| match e {
                    ImageError::TooLarge { .. } => ImageError::TooLarge {
                        limit: store.size_cap,
                    },
                    e => e,
                })?;
            if summary.diff_id != l.diff_id {
                return Err(ImageError::DigestMismatch {
                    what: format!("uncompressed layer {}", l.blob_digest),
                    expected: l.diff_id.clone(),
                    actual: summary.diff_id,
                });
            }
            budget -= summary.tar_bytes.min(budget);
            let json =
                serde_json::to_vec_pretty(&summary).map_err(ImageError::json("layer summary"))?;
            let lj = work.join("layer.json");
            std::fs::write(&lj, json).map_err(ImageError::io("write", &lj))?;
            if dest.exists() {
                // A half-made directory from an older crash.
                remove_tree(&dest)?;
            }
            std::fs::rename(&work, &dest).map_err(ImageError::io("rename into", &dest))?;
            undo.paths.push(dest);
        }
        let done = base + l.blob_size;
        report(l.blob_size);
        base = done;
    }

    let record = ImageRecord {
        version: RECORD_VERSION,
        name,
        manifest_digest,
        manifest,
        config_digest: plan.config_digest,
        config,
        layers: layer_records,
        source_format: plan.format.into(),
        imported: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    store.write_record(&record)?;
    undo.done = true;
    progress(ImportProgress {
        stage: ImportStage::Done,
        bytes_done: bytes_total,
        bytes_total,
        layers_done: layers_total,
        layers_total,
    });
    Ok(record)
}

fn exists(root: &OwnedFd, rel: &str) -> bool {
    unpack::open_file_in(root.as_fd(), rel).is_ok()
}

fn open_in(root: &OwnedFd, rel: &str) -> Result<File, ImageError> {
    unpack::open_file_in(root.as_fd(), rel).map_err(ImageError::io("open", Path::new(rel)))
}

/// Reads a small file (at most [`MAX_JSON`] bytes).
fn read_small(root: &OwnedFd, rel: &str) -> Result<Vec<u8>, ImageError> {
    let mut buf = Vec::new();
    open_in(root, rel)?
        .take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(ImageError::io("read", Path::new(rel)))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(FormatError::DocumentTooLarge {
            file: rel.to_string(),
        }
        .into());
    }
    Ok(buf)
}

/// Reads the blob a descriptor names, verifying its size and digest.
fn read_blob(root: &OwnedFd, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let hex = digest_hex(&d.digest)?;
    let bytes = read_small(root, &format!("blobs/sha256/{hex}"))?;
    verify(&d.digest, Some(d.size), &bytes)?;
    Ok(bytes)
}

fn verify(expected: &str, size: Option<u64>, bytes: &[u8]) -> Result<(), ImageError> {
    if let Some(size) = size.filter(|&s| s != bytes.len() as u64) {
        return Err(ImageError::DigestMismatch {
            what: format!("blob {expected}"),
            expected: format!("{size} bytes"),
            actual: format!("{} bytes", bytes.len()),
        });
    }
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(ImageError::DigestMismatch {
            what: format!("blob {expected}"),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

fn is_index(value: &serde_json::Value, d: &Descriptor) -> bool {
    matches!(
        d.media_type.as_deref(),
        Some(format::MEDIA_OCI_INDEX) | Some(format::MEDIA_DOCKER_LIST)
    ) || value.get("manifests").is_some()
}

/// Picks the manifest for this host from an index's entries.
fn pick<'a>(entries: &'a [Descriptor], name: Option<&str>) -> Option<&'a Descriptor> {
    let ref_name = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(format::ANNOTATION_REF_NAME).cloned())
    };
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_none_or(|p| p.os == "linux" && p.architecture == format::host_arch())
    };
    if let Some(n) = name {
        let tag = n.rsplit(':').next().unwrap_or(n);
        if let Some(d) = entries
            .iter()
            .filter(fits)
            .find(|d| ref_name(d).is_some_and(|r| r == n || r == tag))
        {
            return Some(d);
        }
    }
    entries.iter().find(fits)
}

fn plan_oci(root: &OwnedFd, name: Option<&str>) -> Result<Plan, ImageError> {
    let index: Index = serde_json::from_slice(&read_small(root, "index.json")?)
        .map_err(ImageError::json("index.json"))?;
    let mut entries = index.manifests;
    let mut carried_name = None;
    for _depth in 0..3 {
        let d = pick(&entries, name)
            .ok_or(FormatError::NoPlatform {
                arch: format::host_arch(),
            })?
            .clone();
        if carried_name.is_none() {
            carried_name = d
                .annotations
                .as_ref()
                .and_then(|a| a.get(format::ANNOTATION_REF_NAME).cloned());
        }
        let raw = read_blob(root, &d)?;
        let value: serde_json::Value =
            serde_json::from_slice(&raw).map_err(ImageError::json(d.digest.clone()))?;
        if is_index(&value, &d) {
            let nested: Index =
                serde_json::from_value(value).map_err(ImageError::json(d.digest.clone()))?;
            entries = nested.manifests;
            continue;
        }
        let m: Manifest = serde_json::from_value(value).map_err(ImageError::json("manifest"))?;
        let config_raw = read_blob(root, &m.config)?;
        let layers = m
            .layers
            .iter()
            .map(|l| {
                Ok(PlanLayer {
                    rel: format!("blobs/sha256/{}", digest_hex(&l.digest)?),
                    digest: Some(l.digest.clone()),
                    size: Some(l.size),
                    media_type: l.media_type.clone().unwrap_or_default(),
                })
            })
            .collect::<Result<_, ImageError>>()?;
        return Ok(Plan {
            format: "oci-layout",
            manifest: Some((raw, d.digest.clone())),
            config_raw,
            config_digest: m.config.digest.clone(),
            layers,
            name: carried_name,
        });
    }
    Err(FormatError::NestedTooDeep.into())
}

/// The digest a docker-archive path carries in its name, if any
/// (`blobs/sha256/<hex>`, `<hex>.json`, `<hex>/layer.tar` is an id, not a digest).
fn digest_in_path(rel: &str) -> Option<String> {
    let rel = rel.trim_start_matches("./");
    let hex = rel
        .strip_prefix("blobs/sha256/")
        .or_else(|| rel.strip_suffix(".json"))?;
    let d = format!("sha256:{hex}");
    digest_hex(&d).is_ok().then_some(d)
}

fn plan_docker(root: &OwnedFd, name: Option<&str>) -> Result<Plan, ImageError> {
    let entries: Vec<DockerArchiveEntry> =
        serde_json::from_slice(&read_small(root, "manifest.json")?)
            .map_err(ImageError::json("manifest.json"))?;
    let tags = |e: &DockerArchiveEntry| e.repo_tags.clone().unwrap_or_default();
    let entry = name
        .and_then(|n| entries.iter().find(|e| tags(e).iter().any(|t| t == n)))
        .or(entries.first())
        .ok_or(FormatError::NoImageListed)?;
    let config_raw = read_small(root, &entry.config)?;
    let config_digest = sha256_digest(&config_raw);
    if let Some(d) = digest_in_path(&entry.config) {
        verify(&d, None, &config_raw)?;
    }
    let mut layers = Vec::new();
    for rel in &entry.layers {
        // The compression decides the media type we write in the manifest.
        let mut head = [0u8; 4];
        let n = open_in(root, rel)?
            .read(&mut head)
            .map_err(ImageError::io("read", Path::new(rel)))?;
        let media_type = if head[..n].starts_with(&[0x1f, 0x8b]) {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers.push(PlanLayer {
            rel: rel.clone(),
            digest: digest_in_path(rel),
            size: None,
            media_type: media_type.into(),
        });
    }
    Ok(Plan {
        format: "docker-archive",
        manifest: None,
        config_raw,
        config_digest,
        layers,
        name: tags(entry).into_iter().next(),
    })
}

/// Stores small verified bytes as a blob.
fn put_bytes(store: &ImageStore, bytes: &[u8], undo: &mut Undo) -> Result<String, ImageError> {
    let digest = sha256_digest(bytes);
    let path = store.blob_path(&digest)?;
    if !path.is_file() {
        let tmp = store
            .root
            .join("tmp")
            .join(format!("blob-{}", digest_hex(&digest)?));
        std::fs::write(&tmp, bytes).map_err(ImageError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(ImageError::io("rename into", &path))?;
        undo.paths.push(path);
    }
    Ok(digest)
}

/// Copies a stream into the store, verifying it against `expected` (digest
/// and size) when given. Returns its digest and size.
fn put_stream(
    store: &ImageStore,
    src: File,
    what: &str,
    expected: Option<&str>,
    size: Option<u64>,
    report: &mut dyn FnMut(u64),
    undo: &mut Undo,
) -> Result<(String, u64), ImageError> {
    let tmp = store
        .root
        .join("tmp")
        .join(format!("stream-{}", undo.paths.len()));
    let _scratch = Scratch(tmp.clone());
    let mut out = File::create(&tmp).map_err(ImageError::io("create", &tmp))?;
    let limit = size.unwrap_or(store.size_cap).saturating_add(1);
    let mut reader = Counted {
        inner: src.take(limit),
        done: 0,
        reported: 0,
        report,
    };
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(ImageError::io("read", Path::new(what)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(ImageError::io("write", &tmp))?;
        n_total += n as u64;
    }
    out.sync_all().map_err(ImageError::io("sync", &tmp))?;
    let digest = format!("sha256:{}", to_hex(&hasher.finalize()));
    if size.is_none() && n_total >= limit {
        return Err(ImageError::TooLarge {
            limit: store.size_cap,
        });
    }
    if let Some(s) = size.filter(|&s| s != n_total) {
        return Err(ImageError::DigestMismatch {
            what: format!("blob {what}"),
            expected: format!("{s} bytes"),
            actual: format!("{} bytes or more", n_total),
        });
    }
    if let Some(e) = expected.filter(|&e| e != digest) {
        return Err(ImageError::DigestMismatch {
            what: format!("blob {what}"),
            expected: e.into(),
            actual: digest,
        });
    }
    let path = store.blob_path(&digest)?;
    if !path.is_file() {
        std::fs::rename(&tmp, &path).map_err(ImageError::io("rename into", &path))?;
        undo.paths.push(path);
    }
    Ok((digest, n_total))
}
