//! The library: the definitions Hangar keeps for every kind of workload,
//! and the rules for changing them, shared by the GUI and the CLI.
//!
//! VM definitions are files in the config directory ([`MachineStore`]);
//! the disks Hangar makes for a machine live in its own folder under the
//! data directory ([`machine_dir`]). Container records are kept by the
//! container runtime beside each container's files
//! ([`crate::Engine::previous_containers`]).
//!
//! Every change reads the definition from its file again, so two windows
//! (or the GUI and the CLI) never work from a stale copy. Changes that
//! need a stopped machine go through [`crate::Engine`], which knows what
//! runs: [`crate::Engine::edit_machine`], [`crate::Engine::delete_machine`].

mod disk_files;
mod template_clone;
mod words;

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, DiskConfig, DiskFormat, NetworkConfig, VmConfig, MAX_DISKS};
use crate::disks::{self, DiskError};
use crate::store::{MachineDefinition, MachineStore, StoreError, StoredMachine};
use crate::templates::{self, TemplateError, TemplateStatus};

pub use disk_files::{delete_rows, is_inside, machine_dir, new_disk_path, DiskFileRow};
pub use template_clone::{CloneProgress, TemplateClone, TemplateMachine};
pub use words::{format_size, forward_text, network_text};

/// Why a library operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// There is no usable config directory to keep definitions in.
    #[error("cannot save machines: Hangar's config directory is not usable")]
    NoStore,
    /// The definitions could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No machine has this id (or its file is broken).
    #[error("no such machine")]
    NoSuchMachine(String),
    /// The machine runs; the change needs it stopped.
    #[error("stop the machine before {0}")]
    Running(&'static str),
    /// There is no data directory to keep new disks in.
    #[error("Hangar has no data folder to keep {0} in")]
    NoDataDir(&'static str),
    /// A folder could not be made.
    #[error("cannot create {path}")]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The machine has as many disks as it may.
    #[error("a machine can have at most {MAX_DISKS} disks")]
    TooManyDisks,
    /// A new disk file could not be made.
    #[error("cannot create the disk {path}")]
    CreateDisk {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// An existing image could not be looked at.
    #[error("cannot attach {path}")]
    Attach {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// The image changed format since the user chose it.
    #[error("{} is {now} now, not {chosen}; choose it again", path.display())]
    FormatChanged {
        /// The image.
        path: PathBuf,
        /// What it is now.
        now: DiskFormat,
        /// What the user chose.
        chosen: DiskFormat,
    },
    /// The image is one of the machine's disks already.
    #[error("{} is attached already", .0.display())]
    AlreadyAttached(PathBuf),
    /// The file is not one of the machine's disks.
    #[error("{} is not one of its disks", .0.display())]
    NotADisk(PathBuf),
    /// A disk could not be grown.
    #[error("cannot grow {path}")]
    Grow {
        /// The disk.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// The new settings are not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The default guest kit, which boots templates, is missing.
    #[error(
        "the default guest kit, which boots templates, is not installed: run packaging/setup.sh"
    )]
    NoKit,
    /// No template has this id.
    #[error("there is no template {0:?}")]
    NoTemplate(String),
    /// The template exists but cannot be used.
    #[error("cannot create {name}: {title} is not available: {reason}")]
    TemplateMissing {
        /// The machine that was to be made.
        name: String,
        /// The template's name for people.
        title: String,
        /// What to do about it.
        reason: String,
    },
    /// The template's disk could not be copied.
    #[error("cannot copy the {title} disk to {}", dest.display())]
    CopyTemplate {
        /// The template's name for people.
        title: String,
        /// The new disk.
        dest: PathBuf,
        /// Why.
        #[source]
        source: TemplateError,
    },
    /// The copy's thread could not start.
    #[error("cannot start the disk copy thread")]
    Thread(#[source] io::Error),
}

/// A disk to add to a stopped machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum DiskRequest {
    /// A new empty disk in the machine's own folder.
    New {
        /// Raw (sparse file) or qcow2.
        format: DiskFormat,
        /// Size in bytes.
        size: u64,
    },
    /// An image that exists already, used where it is (never copied, never
    /// deleted by Hangar).
    Existing {
        /// The image.
        path: PathBuf,
        /// Its format, as inspected.
        format: DiskFormat,
        /// The guest may not write it.
        read_only: bool,
    },
}

/// A change to a stopped machine's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEdit {
    /// Add a disk.
    AddDisk(DiskRequest),
    /// Grow one of its disks to `size` bytes (the definition is unchanged).
    GrowDisk {
        /// The disk's file.
        path: PathBuf,
        /// The new size in bytes.
        size: u64,
    },
    /// Remove a disk from the definition; the file stays.
    DetachDisk(PathBuf),
    /// Turn user-mode networking on (with these forwards) or off.
    SetNetwork(Option<NetworkConfig>),
}

/// What an edit did, in words for the log ([`std::fmt::Display`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineChange {
    /// A new disk was made and attached.
    NewDisk {
        /// Its file.
        path: PathBuf,
        /// Its format.
        format: DiskFormat,
        /// Its size in bytes.
        size: u64,
    },
    /// An existing image was attached.
    Attached {
        /// The image.
        path: PathBuf,
        /// Its format.
        format: DiskFormat,
    },
    /// A disk was grown.
    Grew {
        /// The disk.
        path: PathBuf,
        /// Its new size in bytes.
        size: u64,
    },
    /// A disk was detached; its file stays.
    Detached(PathBuf),
    /// The network changed to this.
    Network(Option<NetworkConfig>),
}

impl std::fmt::Display for MachineChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MachineChange::NewDisk { path, format, size } => write!(
                f,
                "new {} {format} disk {}",
                format_size(*size),
                path.display()
            ),
            MachineChange::Attached { path, format } => {
                write!(f, "attached {} ({format})", path.display())
            }
            MachineChange::Grew { path, size } => {
                write!(f, "grew {} to {}", path.display(), format_size(*size))
            }
            MachineChange::Detached(path) => {
                write!(f, "detached {} (the file stays)", path.display())
            }
            MachineChange::Network(network) => {
                write!(f, "network: {}", network_text(network.as_ref()))
            }
        }
    }
}

/// A machine made by [`Library::duplicate_machine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The copy, saved.
    pub def: MachineDefinition,
    /// The original's name.
    pub original: String,
    /// How many disk files the copy shares with the original (its
    /// definition names the same files: running both at once would
    /// corrupt them).
    pub shared_disks: usize,
}

/// What a delete did.
#[derive(Debug)]
pub struct Deleted {
    /// The machine's name.
    pub name: String,
    /// Each disk file it tried to delete, and how that went.
    pub disks: Vec<(PathBuf, io::Result<()>)>,
}

/// Where the library keeps things.
#[derive(Debug, Clone, Default)]
pub struct LibraryPaths {
    /// Hangar's config directory (machine definitions); None: none usable.
    pub config_dir: Option<PathBuf>,
    /// Hangar's data directory (disks, templates); None: none usable.
    pub data_dir: Option<PathBuf>,
}

/// The definitions and the rules for changing them.
#[derive(Debug)]
pub struct Library {
    store: Option<MachineStore>,
    data_dir: Option<PathBuf>,
}

impl Library {
    /// The library in `paths`. A config directory that cannot be used gives
    /// a library that lists nothing and refuses to save (and the reason).
    pub fn open(paths: LibraryPaths) -> (Self, Option<StoreError>) {
        let (store, error) = match paths.config_dir.as_deref().map(MachineStore::open) {
            Some(Ok(store)) => (Some(store), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, Some(StoreError::NoConfigDir)),
        };
        (
            Self {
                store,
                data_dir: paths.data_dir,
            },
            error,
        )
    }

    /// A library with nowhere to keep anything (tests, one-off CLI runs).
    pub fn none() -> Self {
        Self {
            store: None,
            data_dir: None,
        }
    }

    fn store(&self) -> Result<&MachineStore, LibraryError> {
        self.store.as_ref().ok_or(LibraryError::NoStore)
    }

    /// The data directory, if there is one.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The folder Hangar keeps machine `id`'s own disks in.
    pub fn machine_dir(&self, id: &str) -> Option<PathBuf> {
        self.data_dir.as_deref().map(|d| machine_dir(d, id))
    }

    /// Every machine definition file, valid or broken, sorted by id.
    pub fn machines(&self) -> Result<Vec<StoredMachine>, LibraryError> {
        Ok(self.store()?.load_all()?)
    }

    /// The valid definition of machine `id`, read from its file.
    pub fn machine(&self, id: &str) -> Result<MachineDefinition, LibraryError> {
        self.valid_machines()?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| LibraryError::NoSuchMachine(id.to_string()))
    }

    fn valid_machines(&self) -> Result<Vec<MachineDefinition>, LibraryError> {
        Ok(self
            .machines()?
            .into_iter()
            .filter_map(|m| match m {
                StoredMachine::Valid(def) => Some(def),
                StoredMachine::Broken { .. } => None,
            })
            .collect())
    }

    /// True if a valid machine is called `name` (case and surrounding
    /// blanks ignored).
    pub fn name_taken(&self, name: &str) -> Result<bool, LibraryError> {
        Ok(name_in(&self.valid_machines()?, name))
    }

    /// Save a new machine.
    pub fn create_machine(&self, def: &MachineDefinition) -> Result<(), LibraryError> {
        Ok(self.store()?.create(def)?)
    }

    /// Save a copy of machine `id` named "NAME (copy)" (or "(copy) 2", …,
    /// whichever is free). Its disks are the same files.
    pub fn duplicate_machine(&self, id: &str) -> Result<Duplicate, LibraryError> {
        let all = self.valid_machines()?;
        let original = all
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| LibraryError::NoSuchMachine(id.to_string()))?;
        let mut config = original.config.clone();
        let base = format!("{} (copy)", config.name);
        let mut name = base.clone();
        let mut n = 2;
        while name_in(&all, &name) {
            name = format!("{base} {n}");
            n += 1;
        }
        config.name = name;
        let shared_disks = config.disks.len();
        let def = MachineDefinition::new(config);
        self.create_machine(&def)?;
        Ok(Duplicate {
            def,
            original: original.config.name.clone(),
            shared_disks,
        })
    }

    /// Machine `id`'s disk files and which of them deleting it with its
    /// disks would remove (see [`delete_rows`]).
    pub fn delete_plan(&self, id: &str) -> Result<Vec<DiskFileRow>, LibraryError> {
        let all = self.valid_machines()?;
        let def = all
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| LibraryError::NoSuchMachine(id.to_string()))?;
        let others = all
            .iter()
            .filter(|d| d.id != id)
            .map(|d| (d.config.name.as_str(), d.config.disks.as_slice()));
        Ok(delete_rows(
            &def.config.disks,
            self.machine_dir(id).as_deref(),
            others,
        ))
    }

    /// Delete machine `id`'s definition; with `with_disks`, then the disk
    /// files of [`Self::delete_plan`] that may go (decided now, not when a
    /// dialog opened: files and other machines may have changed), and its
    /// folder if that empties it. The caller has checked it is stopped.
    pub(crate) fn delete_machine(
        &self,
        id: &str,
        with_disks: bool,
    ) -> Result<Deleted, LibraryError> {
        let store = self.store()?;
        let def = self.machine(id).ok();
        let doomed: Vec<PathBuf> = if with_disks && def.is_some() {
            self.delete_plan(id)?
                .into_iter()
                .filter(DiskFileRow::deletable)
                .map(|r| r.path)
                .collect()
        } else {
            Vec::new()
        };
        store.delete(id)?;
        let disks = doomed
            .into_iter()
            .map(|path| {
                let result = remove_unused(&path);
                (path, result)
            })
            .collect();
        if with_disks {
            // Only an empty folder goes: anything else in it was not listed.
            if let Some(dir) = self.machine_dir(id) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(Deleted {
            name: def.map_or_else(|| id.to_string(), |d| d.config.name),
            disks,
        })
    }

    /// Apply `edit` to machine `id`'s definition and save it. On any
    /// failure the definition stays as it was, and a disk file made for it
    /// goes again. The caller has checked it is stopped.
    pub(crate) fn edit_machine(
        &self,
        id: &str,
        edit: MachineEdit,
    ) -> Result<(MachineDefinition, MachineChange), LibraryError> {
        let store = self.store()?;
        let mut def = self.machine(id)?;
        let mut created = None;
        let result = apply_edit(
            &mut def.config,
            edit,
            self.machine_dir(id).as_deref(),
            &mut created,
        )
        .and_then(|change| {
            store.update(&def)?;
            Ok(change)
        });
        match result {
            Ok(change) => Ok((def, change)),
            Err(e) => {
                // No disk that no machine knows about.
                if let Some(path) = created {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Every template Hangar knows, ready or missing.
    pub fn templates(&self) -> Vec<TemplateStatus> {
        self.data_dir
            .as_deref()
            .map(templates::available)
            .unwrap_or_default()
    }
}

/// True if one of `machines` is called `name` (case and surrounding blanks
/// ignored).
fn name_in(machines: &[MachineDefinition], name: &str) -> bool {
    machines
        .iter()
        .any(|d| d.config.name.trim().eq_ignore_ascii_case(name.trim()))
}

/// Remove a disk file no running machine holds: its lock is taken first
/// (a machine that started since the plan was made keeps its disk).
fn remove_unused(path: &Path) -> io::Result<()> {
    let _lock = match disks::lock(path, true) {
        Ok(lock) => lock,
        Err(DiskError::InUse(_)) => {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "a running machine uses it; kept",
            ))
        }
        Err(DiskError::Io { source, .. }) => return Err(source),
        Err(e) => return Err(io::Error::other(e)),
    };
    std::fs::remove_file(path)
}

/// Change `config` as `edit` says; `created` gets a disk file made on the
/// way, so that the caller can remove it if saving fails.
fn apply_edit(
    config: &mut VmConfig,
    edit: MachineEdit,
    own_dir: Option<&Path>,
    created: &mut Option<PathBuf>,
) -> Result<MachineChange, LibraryError> {
    match edit {
        MachineEdit::AddDisk(request) => {
            if config.disks.len() >= MAX_DISKS {
                return Err(LibraryError::TooManyDisks);
            }
            let (disk, change) = match request {
                DiskRequest::New { format, size } => {
                    let dir = own_dir.ok_or(LibraryError::NoDataDir("new disks"))?;
                    std::fs::create_dir_all(dir).map_err(|source| LibraryError::CreateDir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                    let path = new_disk_path(dir, format, &config.disks);
                    disks::create(&path, format, size).map_err(|source| {
                        LibraryError::CreateDisk {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    *created = Some(path.clone());
                    let disk = DiskConfig {
                        path: path.clone(),
                        format,
                        read_only: false,
                    };
                    (disk, MachineChange::NewDisk { path, format, size })
                }
                DiskRequest::Existing {
                    path,
                    format,
                    read_only,
                } => {
                    // Looked at again: the file may have changed since the
                    // user chose it.
                    let info = disks::inspect(&path).map_err(|source| LibraryError::Attach {
                        path: path.clone(),
                        source,
                    })?;
                    if info.format != format {
                        return Err(LibraryError::FormatChanged {
                            path,
                            now: info.format,
                            chosen: format,
                        });
                    }
                    if config.disks.iter().any(|d| d.path == path) {
                        return Err(LibraryError::AlreadyAttached(path));
                    }
                    let disk = DiskConfig {
                        path: path.clone(),
                        format,
                        read_only,
                    };
                    (disk, MachineChange::Attached { path, format })
                }
            };
            config.disks.push(disk);
            Ok(change)
        }
        MachineEdit::GrowDisk { path, size } => {
            let disk = config
                .disks
                .iter()
                .find(|d| d.path == path)
                .ok_or_else(|| LibraryError::NotADisk(path.clone()))?;
            disks::grow(&disk.path, disk.format, size).map_err(|source| LibraryError::Grow {
                path: path.clone(),
                source,
            })?;
            Ok(MachineChange::Grew { path, size })
        }
        MachineEdit::DetachDisk(path) => {
            let before = config.disks.len();
            config.disks.retain(|d| d.path != path);
            if config.disks.len() == before {
                return Err(LibraryError::NotADisk(path));
            }
            Ok(MachineChange::Detached(path))
        }
        MachineEdit::SetNetwork(network) => {
            if let Some(n) = &network {
                n.validate()?;
            }
            config.network = network.clone();
            Ok(MachineChange::Network(network))
        }
    }
}

#[cfg(test)]
mod tests;
