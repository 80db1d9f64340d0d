//! Container images: a content-addressed store in Hangar's data directory,
//! imported from an OCI image layout (directory or tar) or a docker-archive
//! (`docker save` output), with layers unpacked safely and shared.
//!
//! Layout of `<data dir>/images/` (mode 0700):
//!
//! ```text
//! lock                      flock(2) held by import and remove
//! blobs/sha256/<hex>        verified blobs: manifests, configs, layer tars
//! layers/<diff-id hex>/     one per distinct layer, shared between images
//!     root/                 the unpacked files (an overlayfs lower dir)
//!     layer.json            LayerSummary: diff id, whiteouts, skipped nodes
//! images/<name>.json        ImageRecord, one per image
//! tmp/                      work in progress; emptied at each import
//! ```
//!
//! An import first copies every blob into the store, verifying its sha256
//! (and size) against the manifest; then unpacks each new layer into
//! `tmp/`, checks the uncompressed digest against the config's `diff_ids`,
//! and renames it into `layers/`; only then writes the record. Any failure
//! removes everything that import created: a rejected image leaves nothing.
//! Removal deletes the record, then the blobs and layers no other record
//! uses (reference counts are computed from the records, so they never
//! drift).

mod error;
mod format;
mod import;
mod pull;
pub(crate) mod unpack;

pub use pull::RegistryProtocol;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::{ArchiveFault, FormatError, ImageError, PullError, RegistryFault};
pub use format::{ImageConfig, RootFs, RunConfig};
pub use unpack::LayerSummary;

/// Version written into every image record.
pub const RECORD_VERSION: u32 = 1;
/// Default cap on an image's total uncompressed layer size: 8 GiB.
pub const DEFAULT_SIZE_CAP: u64 = 8 << 30;

/// One layer of an image, bottom first in [`ImageRecord::layers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub blob_digest: String,
    /// Size of the blob in bytes.
    pub blob_size: u64,
    /// Media type the manifest gives (the compression is sniffed instead).
    pub media_type: String,
    /// Digest of the uncompressed tar: names the unpacked layer directory.
    pub diff_id: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Format version of the record.
    pub version: u32,
    /// The image's name in the store.
    pub name: String,
    /// Digest of the manifest's raw bytes.
    pub manifest_digest: String,
    /// The manifest exactly as imported (for docker-archives, as generated).
    pub manifest: String,
    /// Digest of the config blob.
    pub config_digest: String,
    /// The parsed config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// `oci-layout` or `docker-archive`.
    pub source_format: String,
    /// Seconds since the Unix epoch when it was imported.
    pub imported: u64,
}

impl ImageRecord {
    /// Sum of the layer blobs' sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.blob_size).sum()
    }
}

/// Where an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportStage {
    /// Downloading blobs from a registry (bytes: of blobs).
    Downloading,
    /// Reading an archive (bytes: of the archive file).
    Reading,
    /// Copying and verifying blobs (bytes: of layer blobs).
    Verifying,
    /// Unpacking layers (bytes: of layer blobs consumed).
    Unpacking,
    /// Finished.
    Done,
}

/// Progress of an import, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportProgress {
    /// The current stage.
    pub stage: ImportStage,
    /// Bytes done in this stage.
    pub bytes_done: u64,
    /// Bytes this stage will process.
    pub bytes_total: u64,
    /// Layers done in this stage.
    pub layers_done: usize,
    /// Layers of the image.
    pub layers_total: usize,
}

/// The progress callback of an import: plain data, called often (the GUI
/// forwards it to a channel; the CLI draws a line).
pub type ImageProgressSink<'a> = &'a mut dyn FnMut(ImportProgress);

/// The image store in `<data dir>/images/`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    size_cap: u64,
}

/// Holds the store's lock until dropped.
struct StoreLock(#[allow(dead_code)] std::fs::File);

impl ImageStore {
    /// Opens (creating) the store in `data_dir/images`.
    pub fn open(data_dir: &Path) -> Result<Self, ImageError> {
        let root = data_dir.join("images");
        for d in ["blobs/sha256", "layers", "images", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(ImageError::io("create", &p))?;
        }
        // Layers may hold set-uid files and (as root) device nodes: keep
        // other host users out of the whole store.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io("set permissions of", &root))?;
        Ok(Self {
            root,
            size_cap: DEFAULT_SIZE_CAP,
        })
    }

    /// Opens the store in Hangar's data directory ([`hangar_api::dirs::data_dir`]).
    pub fn open_default() -> Result<Self, ImageError> {
        let dir = hangar_api::dirs::data_dir().map_err(|_| ImageError::NoDataDir)?;
        Self::open(&dir)
    }

    /// Sets the cap on an imported image's total uncompressed layer bytes.
    pub fn set_size_cap(&mut self, bytes: u64) {
        self.size_cap = bytes;
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a blob by digest (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .root
            .join("blobs/sha256")
            .join(format::digest_hex(digest)?))
    }

    /// The directory of an unpacked layer by diff id (`layer.json`, `root/`).
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(format::digest_hex(diff_id)?))
    }

    /// The unpacked roots of an image's layers, bottom first (overlayfs
    /// wants them top first in `lowerdir`).
    pub fn layer_roots(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        image
            .layers
            .iter()
            .map(|l| Ok(self.layer_dir(&l.diff_id)?.join("root")))
            .collect()
    }

    /// What a layer holds besides files (whiteouts, skipped nodes).
    pub fn layer_summary(&self, diff_id: &str) -> Result<LayerSummary, ImageError> {
        let p = self.layer_dir(diff_id)?.join("layer.json");
        let bytes = std::fs::read(&p).map_err(ImageError::io("read", &p))?;
        serde_json::from_slice(&bytes).map_err(ImageError::json(p.display().to_string()))
    }

    fn record_path(&self, name: &str) -> Result<PathBuf, ImageError> {
        check_name(name)?;
        Ok(self
            .root
            .join("images")
            .join(format!("{}.json", encode_name(name))))
    }

    fn lock(&self) -> Result<StoreLock, ImageError> {
        let p = self.root.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(ImageError::io("open", &p))?;
        loop {
            // SAFETY: flock on a valid fd we own; the lock goes with the fd.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(StoreLock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(ImageError::io("lock", &p)(e));
            }
        }
    }

    /// The image named `name`.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let p = self.record_path(name)?;
        let bytes = match std::fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(name.to_string()))
            }
            r => r.map_err(ImageError::io("read", &p))?,
        };
        serde_json::from_slice(&bytes).map_err(ImageError::json(p.display().to_string()))
    }

    /// All images, sorted by name. Unreadable records are skipped (logged).
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.scan()?.0)
    }

    /// Records, and whether any file could not be read.
    fn scan(&self) -> Result<(Vec<ImageRecord>, bool), ImageError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        let mut broken = false;
        for e in std::fs::read_dir(&dir).map_err(ImageError::io("list", &dir))? {
            let e = e.map_err(ImageError::io("list", &dir))?;
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json")
                || e.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            match std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    log::warn!("skipping unreadable image record {}: {e}", p.display());
                    broken = true;
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, broken))
    }

    /// Imports the image at `source` (an OCI layout directory, or a tar —
    /// possibly gzip/zstd — of an OCI layout or a docker-archive) as `name`,
    /// or under the name the image carries. An image of the same name is
    /// replaced.
    pub fn import(
        &self,
        source: &Path,
        name: Option<&str>,
        progress: ImageProgressSink<'_>,
    ) -> Result<ImageRecord, ImageError> {
        if let Some(n) = name {
            check_name(n)?;
        }
        let _lock = self.lock()?;
        let old = self.scan()?;
        let record = import::import(self, source, name, progress)?;
        if let Some(prev) = old.0.iter().find(|r| r.name == record.name) {
            self.collect(prev)?;
        }
        Ok(record)
    }

    /// Ids of the containers (in `<data dir>/containers/`, beside the
    /// store) whose record names image `name`.
    fn containers_using(&self, name: &str) -> Vec<String> {
        #[derive(Deserialize)]
        struct Record {
            id: String,
            config: RecordConfig,
        }
        #[derive(Deserialize)]
        struct RecordConfig {
            image: String,
        }
        let Some(dir) = self.root.parent().map(|d| d.join("containers")) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("container.json")).ok())
            .filter_map(|b| serde_json::from_slice::<Record>(&b).ok())
            .filter(|r| r.config.image == name)
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    }

    /// Pulls `reference` (e.g. `127.0.0.1:5000/tools:1.0`) from its
    /// registry and imports it as `name`. Blocks; call it from a worker.
    pub fn pull(
        &self,
        reference: &str,
        name: &str,
        protocol: RegistryProtocol,
        progress: ImageProgressSink<'_>,
    ) -> Result<ImageRecord, ImageError> {
        check_name(name)?;
        pull::pull(self, reference, name, protocol, progress)
    }

    /// Removes an image, and the blobs and layers no other image uses.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let record = self.get(name)?;
        let users = self.containers_using(name);
        if !users.is_empty() {
            return Err(ImageError::InUse {
                name: name.to_string(),
                containers: users.join(", "),
            });
        }
        let p = self.record_path(name)?;
        std::fs::remove_file(&p).map_err(ImageError::io("remove", &p))?;
        self.collect(&record)
    }

    /// Deletes `gone`'s blobs and layers that no current record references.
    /// Does nothing if some record is unreadable (it might reference them).
    fn collect(&self, gone: &ImageRecord) -> Result<(), ImageError> {
        let (records, broken) = self.scan()?;
        if broken {
            return Ok(());
        }
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for r in &records {
            blobs.insert(r.manifest_digest.clone());
            blobs.insert(r.config_digest.clone());
            for l in &r.layers {
                blobs.insert(l.blob_digest.clone());
                layers.insert(l.diff_id.clone());
            }
        }
        let mut gone_blobs = vec![gone.manifest_digest.clone(), gone.config_digest.clone()];
        gone_blobs.extend(gone.layers.iter().map(|l| l.blob_digest.clone()));
        for d in gone_blobs.iter().filter(|d| !blobs.contains(*d)) {
            let p = self.blob_path(d)?;
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::io("remove", &p)(e))
                }
                _ => {}
            }
        }
        for l in gone.layers.iter().filter(|l| !layers.contains(&l.diff_id)) {
            remove_tree(&self.layer_dir(&l.diff_id)?)?;
        }
        Ok(())
    }

    /// Writes a record atomically.
    fn write_record(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let path = self.record_path(&record.name)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(ImageError::json("image record"))?;
        let tmp = self.root.join("images").join(format!(
            ".{}.tmp-{}",
            encode_name(&record.name),
            std::process::id()
        ));
        let r = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(ImageError::io("create", &tmp))?;
            f.write_all(&bytes).map_err(ImageError::io("write", &tmp))?;
            f.sync_all().map_err(ImageError::io("sync", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(ImageError::io("replace", &path))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

/// Removes a directory tree without following symlinks, making directories
/// writable first (a non-root owner cannot empty a 0555 directory).
pub(crate) fn remove_tree(path: &Path) -> Result<(), ImageError> {
    fn make_writable(p: &Path) {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if !md.is_dir() {
            return;
        }
        if md.permissions().mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(
                p,
                std::fs::Permissions::from_mode(md.permissions().mode() | 0o700),
            );
        }
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("inspect", path)(e)),
        Ok(md) if !md.is_dir() => {
            return std::fs::remove_file(path).map_err(ImageError::io("remove", path))
        }
        Ok(_) => {}
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        make_writable(path);
    }
    std::fs::remove_dir_all(path).map_err(ImageError::io("remove", path))
}

/// Image names: 1-255 printable characters, not starting with `.` or `-`.
fn check_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadName(name.to_string()))
    }
}

/// A name as a file name: `[A-Za-z0-9._-]` kept, other bytes as `%XX`.
fn encode_name(name: &str) -> String {
    let mut s = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}
