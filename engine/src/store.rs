//! Machine definitions on disk: one JSON file per machine in Hangar's
//! config directory, written atomically (temp file + rename).
//!
//! A file that cannot be read or parsed is reported as a broken entry with
//! its reason; it is never overwritten, and it does not stop the others
//! from loading.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;

/// Environment variable that overrides Hangar's config directory.
pub const CONFIG_DIR_ENV: &str = "HANGAR_CONFIG_DIR";
/// Version written into every definition file.
pub const FORMAT_VERSION: u32 = 1;

/// A machine as the library knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDefinition {
    /// Format version of the file.
    pub version: u32,
    /// Stable id; also the file's name without `.json`.
    pub id: String,
    /// What to boot.
    pub config: VmConfig,
    /// Seconds since the Unix epoch when it was created.
    pub created: u64,
}

impl MachineDefinition {
    /// A new definition with a fresh id.
    pub fn new(config: VmConfig) -> Self {
        Self {
            version: FORMAT_VERSION,
            id: new_id(&config.name),
            config,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// One file found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredMachine {
    /// A readable definition.
    Valid(MachineDefinition),
    /// A file that could not be used.
    Broken {
        /// The file's name without `.json`.
        id: String,
        /// The file.
        path: PathBuf,
        /// Why it could not be used, for the user.
        reason: String,
    },
}

impl StoredMachine {
    /// The entry's id, valid or not.
    pub fn id(&self) -> &str {
        match self {
            StoredMachine::Valid(d) => &d.id,
            StoredMachine::Broken { id, .. } => id,
        }
    }
}

/// Errors of the machine store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No config directory could be determined.
    #[error("cannot determine Hangar's config directory (is HOME set?)")]
    NoConfigDir,
    /// A file or directory operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The definition could not be serialised.
    #[error("cannot encode the definition of {0}")]
    Encode(String, #[source] serde_json::Error),
    /// An id that is not a plain file name.
    #[error("{0:?} is not a valid machine id")]
    BadId(String),
    /// Creating a machine whose file already exists.
    #[error("a machine with id {0} already exists")]
    Exists(String),
    /// Updating a file that is not a valid definition (never overwritten).
    #[error("{0} is not a readable machine definition; it is left as it is")]
    WontOverwrite(PathBuf),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Hangar's config directory: `$HANGAR_CONFIG_DIR`, else the XDG one.
pub fn config_dir() -> Result<PathBuf, StoreError> {
    if let Some(d) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("", "", "hangar")
        .map(|p| p.config_dir().to_path_buf())
        .ok_or(StoreError::NoConfigDir)
}

/// Write `bytes` to `path` so that readers see the old or the new content,
/// never a mix: a temp file in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("replace", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A fresh id: the name's letters and digits, then a random suffix.
pub fn new_id(name: &str) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug.truncate(32);
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "machine" } else { slug };
    let mut rnd = [0u8; 4];
    if getrandom(&mut rnd).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        rnd = t.to_le_bytes();
    }
    format!("{slug}-{:08x}", u32::from_le_bytes(rnd))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Largest definition file read; anything bigger is not ours.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The machines directory.
#[derive(Debug, Clone)]
pub struct MachineStore {
    dir: PathBuf,
}

impl MachineStore {
    /// The store in `config_dir/machines`, created if missing.
    pub fn open(config_dir: &Path) -> Result<Self, StoreError> {
        let dir = config_dir.join("machines");
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(Self { dir })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::BadId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Every `*.json` file, sorted by id; broken ones included.
    pub fn load_all(&self) -> Result<Vec<StoredMachine>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
                .map(str::to_string)
            else {
                continue;
            };
            out.push(load_one(id, path));
        }
        out.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(out)
    }

    /// Save a new machine; fails if its file exists.
    pub fn create(&self, def: &MachineDefinition) -> Result<(), StoreError> {
        let path = self.path(&def.id)?;
        if path.exists() {
            return Err(StoreError::Exists(def.id.clone()));
        }
        self.write(def, &path)
    }

    /// Replace a machine's definition; refuses to overwrite a broken file.
    pub fn update(&self, def: &MachineDefinition) -> Result<(), StoreError> {
        let path = self.path(&def.id)?;
        if let StoredMachine::Broken { .. } = load_one(def.id.clone(), path.clone()) {
            return Err(StoreError::WontOverwrite(path));
        }
        self.write(def, &path)
    }

    fn write(&self, def: &MachineDefinition, path: &Path) -> Result<(), StoreError> {
        let mut json =
            serde_json::to_vec_pretty(def).map_err(|e| StoreError::Encode(def.id.clone(), e))?;
        json.push(b'\n');
        write_atomic(path, &json)
    }

    /// Remove a machine's definition file (and nothing else: kernels and
    /// images the user chose stay where they are).
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id)?;
        std::fs::remove_file(&path).map_err(io_err("delete", &path))
    }
}

fn load_one(id: String, path: PathBuf) -> StoredMachine {
    let broken = |reason: String| StoredMachine::Broken {
        id: id.clone(),
        path: path.clone(),
        reason,
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return broken(format!(
                "the file is {} bytes, too big to be a definition",
                m.len()
            ))
        }
        Ok(m) if !m.is_file() => return broken("it is not a regular file".into()),
        Ok(_) => {}
        Err(e) => return broken(format!("cannot read it: {e}")),
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => return broken(format!("cannot read it: {e}")),
    };
    let def: MachineDefinition = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => return broken(format!("it is not a valid definition: {e}")),
    };
    if def.version > FORMAT_VERSION {
        return broken(format!(
            "it was written by a newer Hangar (format {}, this one reads {FORMAT_VERSION})",
            def.version
        ));
    }
    if def.id != id {
        return broken(format!("its id {:?} does not match its file name", def.id));
    }
    StoredMachine::Valid(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{BootSource, KernelBoot};
    use hangar_testkit::TempDir;

    fn config(name: &str) -> VmConfig {
        VmConfig {
            name: name.into(),
            vcpus: 2,
            memory_mib: 256,
            boot: BootSource::Kernel(KernelBoot {
                kernel: "/boot/vmlinuz".into(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            }),
            display: None,
            disks: Vec::new(),
            network: None,
        }
    }

    #[test]
    fn test_create_then_load_round_trips() {
        let dir = TempDir::new("store-rt");
        let store = MachineStore::open(dir.path()).unwrap();
        let a = MachineDefinition::new(config("Web server"));
        let b = MachineDefinition::new(config("db"));
        store.create(&a).unwrap();
        store.create(&b).unwrap();
        assert!(a.id.starts_with("web-server-"), "{}", a.id);
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&StoredMachine::Valid(a.clone())));
        assert!(matches!(store.create(&a), Err(StoreError::Exists(_))));
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn test_corrupt_file_is_broken_entry_and_never_overwritten() {
        let dir = TempDir::new("store-corrupt");
        let store = MachineStore::open(dir.path()).unwrap();
        let good = MachineDefinition::new(config("good"));
        store.create(&good).unwrap();
        let bad_path = store.dir().join("bad-1.json");
        std::fs::write(&bad_path, b"{ not json").unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        let broken = all.iter().find(|m| m.id() == "bad-1").unwrap();
        match broken {
            StoredMachine::Broken { reason, .. } => {
                assert!(reason.contains("not a valid definition"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let mut over = MachineDefinition::new(config("over"));
        over.id = "bad-1".into();
        assert!(matches!(
            store.update(&over),
            Err(StoreError::WontOverwrite(_))
        ));
        assert!(matches!(store.create(&over), Err(StoreError::Exists(_))));
        assert_eq!(std::fs::read(&bad_path).unwrap(), b"{ not json");
    }

    #[test]
    fn test_mismatched_id_and_newer_format_are_broken() {
        let dir = TempDir::new("store-mismatch");
        let store = MachineStore::open(dir.path()).unwrap();
        let mut d = MachineDefinition::new(config("x"));
        std::fs::write(
            store.dir().join("other.json"),
            serde_json::to_vec(&d).unwrap(),
        )
        .unwrap();
        d.version = FORMAT_VERSION + 1;
        std::fs::write(
            store.dir().join(format!("{}.json", d.id)),
            serde_json::to_vec(&d).unwrap(),
        )
        .unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert!(
            all.iter()
                .all(|m| matches!(m, StoredMachine::Broken { .. })),
            "{all:?}"
        );
    }

    #[test]
    fn test_update_and_delete_touch_only_the_definition() {
        let dir = TempDir::new("store-delete");
        let store = MachineStore::open(dir.path()).unwrap();
        let kernel = dir.join("my-kernel");
        std::fs::write(&kernel, b"kernel").unwrap();
        let mut d = MachineDefinition::new(VmConfig {
            boot: BootSource::Kernel(KernelBoot {
                kernel: kernel.clone(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            }),
            ..config("k")
        });
        store.create(&d).unwrap();
        d.config.memory_mib = 512;
        store.update(&d).unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![StoredMachine::Valid(d.clone())]
        );
        store.delete(&d.id).unwrap();
        assert!(store.load_all().unwrap().is_empty());
        assert!(kernel.exists());
    }

    #[test]
    fn test_hostile_ids_are_rejected() {
        let dir = TempDir::new("store-ids");
        let store = MachineStore::open(dir.path()).unwrap();
        for id in ["../escape", "a/b", "", ".hidden", "x y"] {
            assert!(
                matches!(store.delete(id), Err(StoreError::BadId(_))),
                "{id}"
            );
        }
        assert!(valid_id(&new_id("../../etc/passwd")));
        assert!(valid_id(&new_id("")));
    }
}
