//! What Hangar's tests share, in one place instead of a copy per test
//! binary: scratch directories, the checks that skip a test loudly when the
//! host genuinely lacks something (`/dev/kvm`, root), the `#![no_std]` test
//! guests of `tests/guests` (built once per test binary), and the paths of
//! saved-file fixtures.
//!
//! Test support: a failure here is a failed test, so it panics with a
//! message rather than returning errors.

#![warn(missing_docs)]

mod rng;

pub use rng::Rng;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// A scratch directory, `/tmp/hangar-TAG-XXXXXX`, removed with its
/// contents when dropped.
pub struct TempDir(vmm_sys_util::tempdir::TempDir);

impl TempDir {
    /// A new empty directory; `tag` says which test made it.
    #[track_caller]
    pub fn new(tag: &str) -> Self {
        let prefix = std::env::temp_dir().join(format!("hangar-{tag}-"));
        match vmm_sys_util::tempdir::TempDir::new_with_prefix(&prefix) {
            Ok(dir) => Self(dir),
            Err(e) => panic!(
                "cannot create a scratch directory {}*: {e}",
                prefix.display()
            ),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.as_path()
    }

    /// A path inside it.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.as_path().join(name)
    }
}

/// A file of a given length (sparse) in a scratch directory of its own,
/// removed with it: the disk image of a device or backend test.
pub struct TempImage(
    pub PathBuf,
    // Held for its Drop: the folder goes with the image.
    #[allow(dead_code)] TempDir,
);

impl TempImage {
    /// A new image of `len` bytes, all zero.
    #[track_caller]
    pub fn new(len: u64) -> Self {
        let dir = TempDir::new("image");
        let path = dir.join("disk.img");
        let made = std::fs::File::create(&path).and_then(|f| f.set_len(len));
        if let Err(e) = made {
            panic!("cannot create the test image {}: {e}", path.display());
        }
        Self(path, dir)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

/// Says on stderr, where a passing test's output is not swallowed, that
/// the calling test did not run and why. The test then returns and counts
/// as passed, so this line is the only trace: it must be loud.
pub fn skipped(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(
        std::io::stderr(),
        "*** SKIPPED: {why}: {test} did not run ***"
    );
}

/// True if this process can open `/dev/kvm` for reading and writing;
/// otherwise says loudly that the calling test did not run.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skipped(&format!("/dev/kvm absent ({e})"));
            false
        }
    }
}

/// True if the effective user is root (no message: for tests that do
/// something else when not root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True as root; otherwise says loudly that the calling test did not run,
/// with `why` it needs root.
pub fn root_or_skip(why: &str) -> bool {
    if is_root() {
        return true;
    }
    skipped(&format!("not root ({why})"));
    false
}

/// Returns from the calling test, loudly, when `/dev/kvm` cannot be used.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !$crate::kvm_available() {
            return;
        }
    };
}

/// One guest-running test at a time within a test binary: these machines
/// have two cores, and kvm_pvm is slow.
pub fn kvm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The repository's top directory.
pub fn repo_root() -> &'static Path {
    // This crate lives in engine/testkit.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The files an earlier release saved, as `tests/fixtures/make-saved`
/// wrote them (`release` is e.g. `0.1`).
pub fn saved_fixture(release: &str) -> PathBuf {
    repo_root().join(format!("tests/fixtures/saved-{release}"))
}

/// The ELF file of a test guest of `tests/guests` (`hello`, `echo`,
/// `spin`...); the first call builds them all.
#[track_caller]
pub fn guest(name: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = match DIR.get_or_init(build_guests) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let path = dir.join(name);
    assert!(path.is_file(), "guest {} was not built", path.display());
    path
}

fn build_guests() -> Result<PathBuf, String> {
    let root = repo_root();
    let guests = root.join("tests/guests");
    // One directory for every test binary that needs them: built once.
    let target_dir = root.join("target/guests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    // Run inside tests/guests so its .cargo/config.toml applies, and drop the
    // outer build's flags (coverage, target-cpu=native...), which are meant
    // for the host, not for a bare-metal guest.
    let output = std::process::Command::new(&cargo)
        .current_dir(&guests)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "building the test guests failed ({}); is the x86_64-unknown-none target installed \
             (rustup target add x86_64-unknown-none)?\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let _ = writeln!(
        std::io::stderr(),
        "test guests built in {:?}",
        started.elapsed()
    );
    Ok(target_dir.join("x86_64-unknown-none/release"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_removed_at_drop() {
        let dir = TempDir::new("testkit");
        std::fs::write(dir.join("f"), b"x").expect("write into the scratch directory");
        let path = dir.path().to_path_buf();
        assert!(path.starts_with(std::env::temp_dir()));
        assert!(path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("hangar-testkit-")));
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn the_fixtures_are_found() {
        assert!(saved_fixture("0.1")
            .join("config/machines/echo.json")
            .is_file());
    }
}
