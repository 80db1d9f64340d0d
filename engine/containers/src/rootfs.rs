//! A container's root: an overlayfs with the image's unpacked layers as
//! read-only lower directories and the container's own upper directory, so
//! writes never reach the shared layers. Also the image-side lookups that
//! need that root (users and groups from its /etc, through RESOLVE_IN_ROOT
//! so a hostile image's symlinks cannot point the lookup at host files).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{ConfigError, ContainerError, HostError, InternalError};
use crate::images::unpack::{open_file_in, open_root};

/// The kernel refuses mount options longer than a page.
const MAX_MOUNT_DATA: usize = 4095;

/// Mounts the overlay of `lower` (bottom layer first) with `upper`/`work`
/// on `target`. `rootless`: inside a user namespace, where overlayfs keeps
/// its metadata (whiteouts, opaque directories) in `user.` xattrs.
pub(crate) fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    rootless: bool,
) -> Result<(), ContainerError> {
    if lower.is_empty() {
        return Err(ConfigError::NoLayers.into());
    }
    let mut all = lower.to_vec();
    all.extend([upper.to_path_buf(), work.to_path_buf()]);
    for p in &all {
        let s = p.as_os_str().as_bytes();
        // overlayfs splits its options on ',' and lowerdir on ':'.
        if s.iter().any(|b| matches!(b, b',' | b':' | b'\\')) {
            return Err(HostError::OverlayPath { path: p.clone() }.into());
        }
    }
    // overlayfs wants the top layer first.
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    if rootless {
        data.push_str(",userxattr");
    }
    if data.len() > MAX_MOUNT_DATA {
        return Err(HostError::TooManyLayers {
            layers: lower.len(),
        }
        .into());
    }
    let c = |s: &[u8]| {
        CString::new(s).map_err(|_| InternalError::NulInPath {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(s)),
        })
    };
    let (src, fstype, tgt, opts) = (
        c(b"overlay")?,
        c(b"overlay")?,
        c(target.as_os_str().as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings that outlive
    // the call; mount(2) does not keep them.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        let source = std::io::Error::last_os_error();
        return Err(HostError::MountOverlay {
            target: target.to_path_buf(),
            source,
        }
        .into());
    }
    Ok(())
}

/// Resolves `spec` (`name`, `uid`, `uid:gid`, `name:group`; empty = root)
/// against the image's /etc/passwd and /etc/group, read from its unpacked
/// `layers` (bottom first: the topmost copy of each file counts, as in the
/// mounted root, which only the helper sees).
pub(crate) fn resolve_user(layers: &[PathBuf], spec: &str) -> Result<(u32, u32), ContainerError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_etc(layers, "etc/passwd");
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd.as_deref().and_then(|p| {
                lookup(p, |f| f.get(2) == Some(&user)).and_then(|f| f.get(3)?.parse().ok())
            });
            (uid, gid.unwrap_or(uid))
        }
        Err(_) => {
            let fields = passwd
                .as_deref()
                .and_then(|p| lookup(p, |f| f.first() == Some(&user)));
            let parsed =
                fields.and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)));
            parsed.ok_or_else(|| ConfigError::UnknownUser {
                user: user.to_string(),
            })?
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_etc(layers, "etc/group")
                .as_deref()
                .and_then(|t| {
                    lookup(t, |f| f.first() == Some(&g)).and_then(|f| f.get(2)?.parse().ok())
                })
                .ok_or_else(|| ConfigError::UnknownGroup {
                    group: g.to_string(),
                })?,
        },
    };
    Ok((uid, gid))
}

/// A small text file of the image: its topmost copy in `layers`, or
/// `None` if absent or unreadable. A layer where the path exists but
/// cannot be opened as a file (a whiteout device, a symlink leaving the
/// layer) hides the lower ones.
fn read_etc(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers.iter().rev() {
        let root = open_root(layer).ok()?;
        match open_file_in(root.as_fd(), rel) {
            Ok(f) => {
                let mut s = String::new();
                // A passwd file bigger than this is not one we want to parse.
                f.take(1 << 20).read_to_string(&mut s).ok()?;
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        }
    }
    None
}

fn lookup<'a>(text: &'a str, pred: impl Fn(&Vec<&'a str>) -> bool) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| pred(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with_etc() -> tempfile_dir::Dir {
        let d = tempfile_dir::Dir::new();
        std::fs::create_dir_all(d.0.join("etc")).unwrap();
        std::fs::write(
            d.0.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.0.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        d
    }

    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("hangar-rootfs-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let d = root_with_etc();
        assert_eq!(
            resolve_user(std::slice::from_ref(&d.0), "").unwrap(),
            (0, 0)
        );
        assert_eq!(
            resolve_user(std::slice::from_ref(&d.0), "app").unwrap(),
            (1000, 1001)
        );
        assert_eq!(
            resolve_user(std::slice::from_ref(&d.0), "1000").unwrap(),
            (1000, 1001)
        );
        assert_eq!(
            resolve_user(std::slice::from_ref(&d.0), "4242").unwrap(),
            (4242, 4242)
        );
        assert_eq!(
            resolve_user(std::slice::from_ref(&d.0), "app:staff").unwrap(),
            (1000, 50)
        );
        assert_eq!(
            resolve_user(std::slice::from_ref(&d.0), "5:6").unwrap(),
            (5, 6)
        );
        assert!(resolve_user(std::slice::from_ref(&d.0), "ghost").is_err());
        assert!(resolve_user(std::slice::from_ref(&d.0), "app:ghosts").is_err());
    }

    #[test]
    fn the_topmost_layer_s_passwd_counts() {
        let lower = root_with_etc();
        let upper = tempfile_dir::Dir::new();
        std::fs::create_dir_all(upper.0.join("etc")).unwrap();
        std::fs::write(upper.0.join("etc/passwd"), "app:x:2000:2000::/:/bin/sh\n").unwrap();
        let layers = [lower.0.clone(), upper.0.clone()];
        assert_eq!(resolve_user(&layers, "app").unwrap(), (2000, 2000));
        // etc/group only in the lower layer: found there.
        assert_eq!(resolve_user(&layers, "app:staff").unwrap(), (2000, 50));
        // A layer without etc/passwd hides nothing.
        let empty = tempfile_dir::Dir::new();
        let layers = [lower.0.clone(), empty.0.clone()];
        assert_eq!(resolve_user(&layers, "app").unwrap(), (1000, 1001));
    }

    #[test]
    fn passwd_symlink_out_of_the_root_is_not_followed() {
        let d = root_with_etc();
        let outside = tempfile_dir::Dir::new();
        std::fs::write(outside.0.join("passwd"), "evil:x:7:7::/:/bin/sh\n").unwrap();
        std::fs::remove_file(d.0.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(outside.0.join("passwd"), d.0.join("etc/passwd")).unwrap();
        // The absolute target is resolved inside the root, where it does
        // not exist: the host file is never read.
        assert!(resolve_user(std::slice::from_ref(&d.0), "evil").is_err());
    }
}
