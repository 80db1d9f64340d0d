//! Layer unpacking that a hostile tar cannot abuse.
//!
//! Every path is checked before use (no absolute path, no `..`), and every
//! directory is opened relative to the layer's root with `openat2(2)` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: a symlink met
//! on the way, however it is written (absolute, `../..`, a chain), resolves
//! as if the root were `/`, so nothing outside the root is ever reached. The
//! final component is created with `*at` calls on that directory fd that do
//! not follow symlinks (`O_CREAT|O_EXCL|O_NOFOLLOW`, `symlinkat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`, `mknodat`).
//!
//! Each layer is unpacked into its own directory (the store shares it
//! between images; overlayfs stacks them later). Whiteouts are never applied
//! to lower layers here: each is recorded in the layer's summary
//! (`whiteouts`, `opaque_dirs`), and also written in overlayfs form so the
//! directory can be used as an overlayfs lower layer as it is. As root: a
//! 0/0 character device for `.wh.NAME`, the `trusted.overlay.opaque=y`
//! xattr for `.wh..wh..opq`. Rootless (overlayfs mounted with `userxattr`
//! in a user namespace, kernel ≥ 6.7): an empty file with the
//! `user.overlay.whiteout` xattr, its directory marked
//! `user.overlay.opaque=x` ("holds whiteouts"; without it they still show
//! in listings, measured on 6.18), and `user.overlay.opaque=y`.
//!
//! Device nodes are created only when running as root (and skipped, and
//! listed, otherwise, or when the kernel refuses); the store's directory is
//! mode 0700 so such nodes, and set-uid files, are not reachable by other
//! host users. Ownership is kept when root; mode bits always. Directory
//! modes and times are applied at the end so a read-only directory does not
//! stop its own contents from being written.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::format::to_hex;
use super::{ArchiveFault, ImageError};

/// Most entries a layer may have (an inode-exhaustion guard).
pub const MAX_ENTRIES: u64 = 2_000_000;

const OPAQUE: &[u8] = b".wh..wh..opq";
const WH_PREFIX: &[u8] = b".wh.";
const WH_META_PREFIX: &[u8] = b".wh..wh.";

/// What unpacking may do beyond plain files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnpackOptions {
    /// Most uncompressed tar bytes to read.
    pub size_cap: u64,
    /// Apply the entries' uid/gid.
    pub chown: bool,
    /// Create character and block devices.
    pub devices: bool,
    /// How whiteouts are written for overlayfs.
    pub whiteouts: WhiteoutForm,
}

/// The form whiteouts and opaque directories take in an unpacked layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhiteoutForm {
    /// Only listed in the layer summary.
    Recorded,
    /// overlayfs' classic form (root): 0/0 char devices, `trusted.` xattrs.
    Device,
    /// overlayfs' `userxattr` form (rootless): marked files, `user.` xattrs.
    UserXattr,
}

impl WhiteoutForm {
    fn opaque_xattr(self) -> &'static std::ffi::CStr {
        match self {
            WhiteoutForm::UserXattr => c"user.overlay.opaque",
            _ => c"trusted.overlay.opaque",
        }
    }
}

impl UnpackOptions {
    /// Options for this process: everything when root, nothing privileged
    /// otherwise.
    pub fn for_process(size_cap: u64) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Self {
            size_cap,
            chown: root,
            devices: root,
            whiteouts: if root {
                WhiteoutForm::Device
            } else {
                WhiteoutForm::UserXattr
            },
        }
    }
}

/// What a layer held, kept as `layer.json` beside its `root/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSummary {
    /// `sha256:` digest of the uncompressed tar stream.
    pub diff_id: String,
    /// Uncompressed tar bytes read.
    pub tar_bytes: u64,
    /// Entries in the tar.
    pub entries: u64,
    /// Paths (relative to the root) the layer deletes from lower layers.
    pub whiteouts: Vec<String>,
    /// Directories whose lower-layer contents the layer hides.
    pub opaque_dirs: Vec<String>,
    /// Whether the whiteouts are also present in overlayfs form.
    pub overlay_whiteouts: bool,
    /// Entries not created (device nodes when not root), with the reason.
    pub skipped: Vec<String>,
}

/// Splits an archive path into its components: leading `./` and empty
/// components dropped; absolute paths and `..` refused.
pub(crate) fn sanitize(raw: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if raw.contains(&0) {
        return Err("NUL in path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' in path"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn display(comps: &[Vec<u8>]) -> String {
    let v: Vec<_> = comps.iter().map(|c| String::from_utf8_lossy(c)).collect();
    v.join("/")
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `struct open_how` of openat2(2), which libc marks non-exhaustive.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_SAFE: u64 =
    libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;

/// openat2(2) of `path` below `dir`, with `resolve` flags.
pub(crate) fn openat2(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { b"." as &[u8] } else { path };
    let c = cstring(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    for _ in 0..16 {
        // SAFETY: `c` is a valid NUL-terminated string and `how` a valid
        // open_how of the size passed, both alive for the call; the result
        // is a new fd we own or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the syscall returned a new open fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename made the in-root resolution unsure.
        if !matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return Err(err);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// Opens a directory path (O_PATH) for use as an fd root.
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path; the result is a new fd or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new open fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a regular file at `rel` inside `root` for reading, resolving every
/// symlink inside the root; FIFOs and devices are refused (never blocked on).
pub(crate) fn open_file_in(root: BorrowedFd<'_>, rel: &str) -> io::Result<File> {
    let fd = openat2(
        root,
        rel.as_bytes(),
        libc::O_RDONLY | libc::O_NONBLOCK,
        RESOLVE_SAFE,
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

struct Dir<'a> {
    root: BorrowedFd<'a>,
}

impl Dir<'_> {
    /// The directory `comps` below the root (O_PATH), created (0700) with
    /// its missing parents when `create`.
    fn open(&self, comps: &[Vec<u8>], create: bool) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match openat2(self.root, &comps.join(&b'/'), flags, RESOLVE_SAFE) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut fd = openat2(self.root, b"", flags, RESOLVE_SAFE)?;
        for i in 0..comps.len() {
            let prefix = comps[..=i].join(&b'/');
            match openat2(self.root, &prefix, flags, RESOLVE_SAFE) {
                Ok(next) => fd = next,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = cstring(&comps[i])?;
                    // SAFETY: valid dir fd and NUL-terminated name.
                    let r = unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o700) };
                    if r < 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    fd = openat2(self.root, &prefix, flags, RESOLVE_SAFE)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(fd)
    }
}

/// Removes whatever is at `name` in `dir` (an empty directory, or any
/// non-directory); a missing entry is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &CString, keep_dir: bool) -> io::Result<()> {
    // SAFETY: valid dir fd and NUL-terminated name; unlinkat never follows.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) if keep_dir => Ok(()),
        Some(libc::EISDIR) => {
            // SAFETY: as above, removing an (empty) directory.
            check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
        }
        _ => Err(e),
    }
}

fn is_dir_at(dir: BorrowedFd<'_>, name: &CString) -> bool {
    // SAFETY: zeroed stat is a valid out-buffer for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out-pointer; no follow.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn set_times_at(dir: BorrowedFd<'_>, name: &CString, mtime: u64) -> io::Result<()> {
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid fd, NUL-terminated name, two timespecs; no follow.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn chown_at(dir: BorrowedFd<'_>, name: &CString, uid: u64, gid: u64) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name; AT_SYMLINK_NOFOLLOW changes a
    // symlink itself, never its target.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid as libc::uid_t,
            gid as libc::gid_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// A reader that hashes and counts what passes, failing past a limit.
struct Meter<R> {
    inner: R,
    hasher: sha2::Sha256,
    bytes: u64,
    limit: u64,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(io::Error::other(TooLargeMarker));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
struct TooLargeMarker;
impl std::fmt::Display for TooLargeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("size cap exceeded")
    }
}
impl std::error::Error for TooLargeMarker {}

fn tar_err(e: io::Error, limit: u64) -> ImageError {
    if e.get_ref().is_some_and(|i| i.is::<TooLargeMarker>()) {
        ImageError::TooLarge { limit }
    } else {
        ArchiveFault::Read(e).into()
    }
}

struct DeferredDir {
    comps: Vec<Vec<u8>>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// Unpacks the (already decompressed) tar stream `tar` into the existing,
/// empty directory `dest`. `progress` is called after each entry.
pub(crate) fn unpack_tar(
    tar: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(),
) -> Result<LayerSummary, ImageError> {
    let root_fd = open_root(dest).map_err(ImageError::io("open", dest))?;
    let dir = Dir {
        root: root_fd.as_fd(),
    };
    let limit = opts.size_cap;
    let mut archive = tar::Archive::new(Meter {
        inner: tar,
        hasher: sha2::Sha256::new(),
        bytes: 0,
        limit,
    });
    let mut summary = LayerSummary {
        overlay_whiteouts: opts.whiteouts != WhiteoutForm::Recorded,
        ..Default::default()
    };
    let mut deferred = Vec::new();
    let mut file_bytes = 0u64;
    for entry in archive.entries().map_err(|e| tar_err(e, limit))? {
        let mut entry = entry.map_err(|e| tar_err(e, limit))?;
        summary.entries += 1;
        if summary.entries > MAX_ENTRIES {
            return Err(ImageError::TooLarge { limit });
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_entry = |reason: &'static str| ImageError::UnsafeEntry {
            path: shown.clone(),
            reason,
        };
        let comps = sanitize(&raw).map_err(unsafe_entry)?;
        let kind = entry.header().entry_type();
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): its mode is the container's "/".
            continue;
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| tar_err(e, limit))? & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let io_fail = |what: &'static str| {
            let path = dest.join(display(&comps));
            move |source| ImageError::Io { what, path, source }
        };

        // Whiteouts: recorded, and in overlayfs form when allowed.
        if name.starts_with(WH_PREFIX) {
            let pfd = dir.open(parent, true).map_err(io_fail("open"))?;
            if name.as_slice() == OPAQUE {
                summary.opaque_dirs.push(display(parent));
                if opts.whiteouts != WhiteoutForm::Recorded {
                    set_opaque(pfd.as_fd(), opts.whiteouts, b"y")
                        .map_err(io_fail("mark opaque"))?;
                }
            } else if name.starts_with(WH_META_PREFIX) {
                // aufs bookkeeping (.wh..wh.plnk and the like): ignored.
            } else {
                let target = &name[WH_PREFIX.len()..];
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(unsafe_entry("whiteout of '.' or '..'"));
                }
                let mut t = parent.to_vec();
                t.push(target.to_vec());
                summary.whiteouts.push(display(&t));
                if opts.whiteouts != WhiteoutForm::Recorded {
                    let c = cstring(target).map_err(io_fail("whiteout"))?;
                    remove_at(pfd.as_fd(), &c, false).map_err(io_fail("whiteout"))?;
                    write_whiteout(pfd.as_fd(), &c, opts.whiteouts).map_err(io_fail("whiteout"))?;
                }
            }
            progress();
            continue;
        }

        let pfd = dir.open(parent, true).map_err(io_fail("open"))?;
        let cname = cstring(name).map_err(io_fail("name"))?;
        match kind {
            tar::EntryType::Directory => {
                if !is_dir_at(pfd.as_fd(), &cname) {
                    remove_at(pfd.as_fd(), &cname, false).map_err(io_fail("replace"))?;
                    // SAFETY: valid dir fd and NUL-terminated name.
                    check(unsafe { libc::mkdirat(pfd.as_raw_fd(), cname.as_ptr(), 0o700) })
                        .map_err(io_fail("create directory"))?;
                }
                deferred.push(DeferredDir {
                    comps: comps.clone(),
                    mode,
                    uid,
                    gid,
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                file_bytes = file_bytes.saturating_add(size);
                if file_bytes > limit {
                    return Err(ImageError::TooLarge { limit });
                }
                remove_at(pfd.as_fd(), &cname, false).map_err(io_fail("replace"))?;
                // SAFETY: valid dir fd and NUL-terminated name; O_EXCL|O_NOFOLLOW
                // create a new file and never follow a symlink.
                let fd = unsafe {
                    libc::openat(
                        pfd.as_raw_fd(),
                        cname.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                };
                if fd < 0 {
                    return Err(io_fail("create")(io::Error::last_os_error()));
                }
                // SAFETY: a new open fd that nothing else owns.
                let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let copied = io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(|e| tar_err(e, limit))?;
                if copied != size {
                    return Err(ArchiveFault::Truncated { entry: shown }.into());
                }
                file.flush().map_err(io_fail("write"))?;
                if opts.chown {
                    std::os::unix::fs::fchown(&file, Some(uid as u32), Some(gid as u32))
                        .map_err(io_fail("chown"))?;
                }
                // After chown, which clears set-id bits.
                // SAFETY: valid fd.
                check(unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) })
                    .map_err(io_fail("chmod"))?;
                set_times_at(pfd.as_fd(), &cname, mtime).map_err(io_fail("set times"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("symlink without target"))?;
                let target = cstring(&target).map_err(io_fail("symlink"))?;
                remove_at(pfd.as_fd(), &cname, false).map_err(io_fail("replace"))?;
                // SAFETY: valid dir fd and NUL-terminated strings. The target
                // is stored as text; it is only ever resolved inside a root.
                check(unsafe { libc::symlinkat(target.as_ptr(), pfd.as_raw_fd(), cname.as_ptr()) })
                    .map_err(io_fail("symlink"))?;
                if opts.chown {
                    chown_at(pfd.as_fd(), &cname, uid, gid).map_err(io_fail("chown"))?;
                }
                set_times_at(pfd.as_fd(), &cname, mtime).map_err(io_fail("set times"))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("hardlink without target"))?;
                let tcomps = sanitize(&target).map_err(unsafe_entry)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(unsafe_entry("hardlink to the root"));
                };
                let tfd = dir
                    .open(tparent, false)
                    .map_err(io_fail("find hardlink target"))?;
                let tname = cstring(tname).map_err(io_fail("hardlink"))?;
                if is_dir_at(tfd.as_fd(), &tname) {
                    return Err(unsafe_entry("hardlink to a directory"));
                }
                remove_at(pfd.as_fd(), &cname, false).map_err(io_fail("replace"))?;
                // SAFETY: valid dir fds and NUL-terminated names; flags 0
                // links a symlink itself, never what it points to.
                check(unsafe {
                    libc::linkat(
                        tfd.as_raw_fd(),
                        tname.as_ptr(),
                        pfd.as_raw_fd(),
                        cname.as_ptr(),
                        0,
                    )
                })
                .map_err(io_fail("hardlink"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (fmt, what) = match kind {
                    tar::EntryType::Char => (libc::S_IFCHR, "character device"),
                    tar::EntryType::Block => (libc::S_IFBLK, "block device"),
                    _ => (libc::S_IFIFO, "fifo"),
                };
                if fmt != libc::S_IFIFO && !opts.devices {
                    summary
                        .skipped
                        .push(format!("{}: {what} (not root)", display(&comps)));
                    progress();
                    continue;
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_at(pfd.as_fd(), &cname, false).map_err(io_fail("replace"))?;
                let dev = libc::makedev(major, minor);
                // SAFETY: valid dir fd and NUL-terminated name.
                let r = unsafe {
                    libc::mknodat(
                        pfd.as_raw_fd(),
                        cname.as_ptr(),
                        fmt | (mode as libc::mode_t & 0o777),
                        dev,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EPERM) {
                        // Root in a user namespace: devices are not allowed.
                        summary
                            .skipped
                            .push(format!("{}: {what} ({e})", display(&comps)));
                        progress();
                        continue;
                    }
                    return Err(io_fail("create node")(e));
                }
                if opts.chown {
                    chown_at(pfd.as_fd(), &cname, uid, gid).map_err(io_fail("chown"))?;
                }
                set_times_at(pfd.as_fd(), &cname, mtime).map_err(io_fail("set times"))?;
            }
            // PAX/GNU metadata the tar crate did not fold in: nothing to create.
            _ => {}
        }
        progress();
    }

    // Deepest first, so a parent's times are set after its children.
    deferred.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
    for d in &deferred {
        let fd = match openat2(
            dir.root,
            &d.comps.join(&b'/'),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            RESOLVE_SAFE | libc::RESOLVE_NO_SYMLINKS,
        ) {
            Ok(fd) => fd,
            // Replaced later in the archive by something else: skip.
            Err(_) => continue,
        };
        let path = dest.join(display(&d.comps));
        let io_fail = |what| ImageError::io(what, &path);
        if opts.chown {
            std::os::unix::fs::fchown(&fd, Some(d.uid as u32), Some(d.gid as u32))
                .map_err(io_fail("chown"))?;
        }
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(fd.as_raw_fd(), d.mode as libc::mode_t) })
            .map_err(io_fail("chmod"))?;
        let t = libc::timespec {
            tv_sec: d.mtime.min(i64::MAX as u64) as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: valid fd and two timespecs.
        check(unsafe { libc::futimens(fd.as_raw_fd(), [t, t].as_ptr()) })
            .map_err(io_fail("set times"))?;
    }

    // The tar may end before the stream does (padding): hash all of it.
    let mut meter = archive.into_inner();
    io::copy(&mut meter, &mut io::sink()).map_err(|e| tar_err(e, limit))?;
    summary.tar_bytes = meter.bytes;
    summary.diff_id = format!("sha256:{}", to_hex(&meter.hasher.finalize()));
    Ok(summary)
}

/// Marks `dir` opaque (`y`) or, user-xattr form, as holding whiteouts
/// (`x`; never downgrading a `y`).
fn set_opaque(dir: BorrowedFd<'_>, form: WhiteoutForm, value: &[u8; 1]) -> io::Result<()> {
    // An O_PATH fd cannot carry xattrs: reopen the directory itself.
    let fd = openat2(dir, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let name = form.opaque_xattr();
    if value == b"x" {
        let mut cur = [0u8; 1];
        // SAFETY: valid fd and name, a buffer of the length given.
        let n =
            unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), cur.as_mut_ptr().cast(), 1) };
        if n == 1 && cur == *b"y" {
            return Ok(());
        }
    }
    // SAFETY: valid fd, NUL-terminated name, a 1-byte value buffer.
    check(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), 1, 0) })
}

/// Writes the whiteout `name` in directory `dir` in `form`.
fn write_whiteout(dir: BorrowedFd<'_>, name: &CString, form: WhiteoutForm) -> io::Result<()> {
    match form {
        WhiteoutForm::Recorded => Ok(()),
        WhiteoutForm::Device => {
            // SAFETY: valid dir fd and NUL-terminated name; mknodat never
            // follows a symlink at the final component.
            check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR, 0) })
        }
        WhiteoutForm::UserXattr => {
            // SAFETY: valid dir fd and NUL-terminated name; O_EXCL after
            // the removal above, O_NOFOLLOW for a racing symlink.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor that nothing else owns.
            let file = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: valid fd, NUL-terminated name, an empty value.
            check(unsafe {
                libc::fsetxattr(
                    file.as_raw_fd(),
                    c"user.overlay.whiteout".as_ptr(),
                    std::ptr::null(),
                    0,
                    0,
                )
            })?;
            set_opaque(dir, form, b"x")
        }
    }
}

/// Decompresses by magic bytes: gzip (`1f 8b`), zstd (`28 b5 2f fd`), or
/// plain.
pub(crate) fn decompress<'a, R: io::BufRead + 'a>(
    mut r: R,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    let head = r.fill_buf().map_err(ArchiveFault::Read)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(ZstdFrames::new(r)?))
    } else {
        Ok(Box::new(r))
    }
}

type ZstdDecoder<R> = ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>;

/// A zstd stream of one or more frames (ruzstd's decoder reads one).
struct ZstdFrames<R: io::BufRead> {
    dec: Option<ZstdDecoder<R>>,
}

impl<R: io::BufRead> ZstdFrames<R> {
    fn new(r: R) -> Result<Self, ImageError> {
        let dec = ZstdDecoder::new(r).map_err(ArchiveFault::Zstd)?;
        Ok(Self { dec: Some(dec) })
    }
}

impl<R: io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.dec.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let mut src = self.dec.take().map(|d| d.into_inner());
            let more = match src.as_mut() {
                Some(s) => !s.fill_buf()?.is_empty(),
                None => false,
            };
            if let (true, Some(src)) = (more, src) {
                self.dec = Some(ZstdDecoder::new(src).map_err(io::Error::other)?);
            }
        }
    }
}
