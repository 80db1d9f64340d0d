//! Pulling from a real OCI registry on this machine's loopback: Debian's
//! `docker-registry` started by the test on 127.0.0.1, the default image
//! pushed to it with `skopeo`, pulled back with `ImageStore::pull`. Only
//! loopback traffic. Needs the packages packaging/setup.sh installs.

// Test code: a failed step should panic with its error.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hangar_engine::images::{ImageError, ImageStore, RegistryProtocol};
use hangar_testkit::TempDir;

/// A docker-registry serving from `dir` on 127.0.0.1; killed at drop.
struct Registry {
    child: Child,
    addr: String,
    storage: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is missing: run packaging/setup.sh");
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < until,
                "the registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            storage,
        }
    }

    /// Pushes the set-up script's default image as `repo:tag`.
    fn push_default(&self, repo_tag: &str) {
        let src = hangar_engine::kit::data_dir()
            .unwrap()
            .join("images-src/default");
        assert!(
            src.join("index.json").exists(),
            "{} is missing: run packaging/setup.sh",
            src.display()
        );
        let status = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:default", src.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .status()
            .expect("skopeo is missing: run packaging/setup.sh");
        assert!(status.success(), "skopeo copy failed");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_from_a_loopback_registry() {
    let dir = TempDir::new("reg-ok");
    let reg = Registry::start(dir.path());
    reg.push_default("hangar/busybox:1.0");
    let store = ImageStore::open(&dir.join("data")).unwrap();
    let mut stages = Vec::new();
    let rec = store
        .pull(
            &format!("{}/hangar/busybox:1.0", reg.addr),
            "busybox",
            RegistryProtocol::Http,
            &mut |p| stages.push(p.stage),
        )
        .unwrap();
    assert_eq!(rec.name, "busybox");
    assert_eq!(rec.layers.len(), 1);
    let roots = store.layer_roots(&rec).unwrap();
    assert!(roots[0].join("bin/busybox").is_file());
    assert!(stages.contains(&hangar_engine::images::ImportStage::Downloading));
    // The manifest is kept byte for byte: its digest is the registry's.
    let local = std::fs::read_to_string(store.blob_path(&rec.manifest_digest).unwrap()).unwrap();
    assert_eq!(local, rec.manifest);
    assert!(std::fs::read_dir(store.root().join("downloads"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn corrupted_registry_blob_is_rejected_and_nothing_is_kept() {
    let dir = TempDir::new("reg-bad");
    let reg = Registry::start(dir.path());
    reg.push_default("hangar/busybox:bad");
    // Flip bytes of every blob in the registry's storage ("data" files).
    let mut stack = vec![reg.storage.clone()];
    let mut flipped = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "data")
                && p.to_string_lossy().contains("/blobs/")
                && std::fs::metadata(&p).unwrap().len() > 10_000
            {
                let mut b = std::fs::read(&p).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                std::fs::write(&p, b).unwrap();
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 1, "expected one layer blob to corrupt");
    let store = ImageStore::open(&dir.join("data")).unwrap();
    let err = store
        .pull(
            &format!("{}/hangar/busybox:bad", reg.addr),
            "busybox",
            RegistryProtocol::Http,
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::DigestMismatch { .. } | ImageError::Pull(_)),
        "{err}"
    );
    assert!(
        error_chain(&err).to_lowercase().contains("digest"),
        "{}",
        error_chain(&err)
    );
    assert!(store.list().unwrap().is_empty());
    assert!(std::fs::read_dir(store.root().join("downloads"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn plain_http_is_refused_for_remote_registries() {
    let dir = TempDir::new("reg-http");
    let store = ImageStore::open(dir.path()).unwrap();
    let err = store
        .pull(
            "registry.example:5000/x:1",
            "x",
            RegistryProtocol::Http,
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        error_chain(&err).contains("only for a registry on this machine"),
        "{}",
        error_chain(&err)
    );
}

/// The error and its sources joined with ": ", as the app shows them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
