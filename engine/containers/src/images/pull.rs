//! Pulling an image from an OCI registry. The manifest (and, for a
//! multi-platform image, the index) is kept byte for byte — re-serialising
//! would change its digest — and written with the config and layer blobs
//! into a temporary OCI layout, which the ordinary import then verifies
//! (every blob against its digest) and unpacks. A pull thus trusts the
//! registry no more than a file on disk.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use super::format::{self, ANNOTATION_REF_NAME, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX};
use super::{
    FormatError, ImageError, ImageProgressSink, ImageRecord, ImageStore, ImportProgress,
    ImportStage, PullError, RegistryFault,
};

/// Manifest types we ask the registry for.
const ACCEPTED: &[&str] = &[
    format::MEDIA_OCI_MANIFEST,
    MEDIA_OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    MEDIA_DOCKER_LIST,
];

/// How to talk to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryProtocol {
    /// HTTPS (every public registry).
    Https,
    /// Plain HTTP: only for a registry on this machine's loopback.
    Http,
}

pub(super) fn pull(
    store: &ImageStore,
    reference: &str,
    name: &str,
    protocol: RegistryProtocol,
    progress: ImageProgressSink<'_>,
) -> Result<ImageRecord, ImageError> {
    let reference: Reference = reference
        .parse()
        .map_err(|source| PullError::BadReference {
            reference: reference.to_string(),
            source,
        })?;
    if protocol == RegistryProtocol::Http && !is_loopback(reference.resolve_registry()) {
        return Err(PullError::PlainHttpRemote {
            registry: reference.resolve_registry().to_string(),
        }
        .into());
    }
    // Not in the store's tmp/: an import clears that.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = store
        .root()
        .join("downloads")
        .join(format!("pull-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(ImageError::io("create", &tmp))?;
    let result = (|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(PullError::NetworkRuntime)?;
        rt.block_on(fetch_layout(
            &reference,
            name,
            protocol,
            &tmp,
            &mut *progress,
        ))?;
        store.import(&tmp, Some(name), progress)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn is_loopback(registry: &str) -> bool {
    let host = registry
        .strip_prefix('[')
        .and_then(|r| r.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| registry.split(':').next().unwrap_or(registry));
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn pull_err(
    what: &'static str,
    reference: &Reference,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> ImageError {
    let reference = reference.to_string();
    move |e| {
        PullError::Registry {
            what,
            reference,
            source: RegistryFault(e),
        }
        .into()
    }
}

async fn fetch_layout(
    reference: &Reference,
    name: &str,
    protocol: RegistryProtocol,
    dir: &Path,
    progress: ImageProgressSink<'_>,
) -> Result<(), ImageError> {
    let client = Client::new(ClientConfig {
        protocol: match protocol {
            RegistryProtocol::Https => ClientProtocol::Https,
            RegistryProtocol::Http => ClientProtocol::Http,
        },
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    let blobs = dir.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(ImageError::io("create", &blobs))?;

    let (top, top_digest) = client
        .pull_manifest_raw(reference, &auth, ACCEPTED)
        .await
        .map_err(pull_err("manifest", reference))?;
    write_blob(&blobs, &top_digest, &top).await?;
    let top_json: Value = serde_json::from_slice(&top).map_err(ImageError::json("manifest"))?;
    let top_type = media_type(&top_json, "manifest");

    // A multi-platform index: fetch this host's manifest by digest.
    let manifest_json = if top_json.get("manifests").is_some() {
        let entry = top_json["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|d| {
                    d["platform"]["os"] == "linux"
                        && d["platform"]["architecture"] == format::host_arch()
                })
            })
            .ok_or_else(|| PullError::NoPlatform {
                reference: reference.to_string(),
                arch: format::host_arch(),
            })?;
        let digest = entry["digest"].as_str().ok_or(FormatError::MissingDigest {
            what: "index entry",
        })?;
        let by_digest = reference.clone_with_digest(digest.to_string());
        let (bytes, d) = client
            .pull_manifest_raw(&by_digest, &auth, ACCEPTED)
            .await
            .map_err(pull_err("platform manifest", reference))?;
        write_blob(&blobs, &d, &bytes).await?;
        serde_json::from_slice::<Value>(&bytes).map_err(ImageError::json("manifest"))?
    } else {
        top_json.clone()
    };

    let mut wanted: Vec<(String, u64)> = Vec::new();
    let config = &manifest_json["config"];
    wanted.push(descriptor(config)?);
    for l in manifest_json["layers"].as_array().into_iter().flatten() {
        wanted.push(descriptor(l)?);
    }
    let total: u64 = wanted.iter().map(|(_, s)| s).sum();
    let mut done = 0u64;
    for (i, (digest, size)) in wanted.iter().enumerate() {
        let hex = format::digest_hex(digest)?;
        let path = blobs.join(hex);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(ImageError::io("create", &path))?;
        client
            .pull_blob(reference, digest.as_str(), file)
            .await
            .map_err(pull_err("blob", reference))?;
        done += size;
        progress(ImportProgress {
            stage: ImportStage::Downloading,
            bytes_done: done,
            bytes_total: total,
            layers_done: i,
            layers_total: wanted.len() - 1,
        });
    }

    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": top_type,
            "digest": top_digest,
            "size": top.len(),
            "annotations": { ANNOTATION_REF_NAME: name },
        }],
    });
    let write = |rel: &str, bytes: Vec<u8>| {
        let p = dir.join(rel);
        std::fs::write(&p, bytes).map_err(ImageError::io("write", &p))
    };
    write("index.json", index.to_string().into_bytes())?;
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
    Ok(())
}

fn media_type(v: &Value, default_kind: &str) -> String {
    v["mediaType"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            if default_kind == "manifest" && v.get("manifests").is_some() {
                MEDIA_OCI_INDEX.to_string()
            } else {
                format::MEDIA_OCI_MANIFEST.to_string()
            }
        })
}

fn descriptor(v: &Value) -> Result<(String, u64), ImageError> {
    let digest = v["digest"].as_str().ok_or(FormatError::MissingDigest {
        what: "manifest entry",
    })?;
    format::digest_hex(digest)?;
    Ok((digest.to_string(), v["size"].as_u64().unwrap_or(0)))
}

async fn write_blob(blobs: &Path, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let p = blobs.join(format::digest_hex(digest)?);
    tokio::fs::write(&p, bytes)
        .await
        .map_err(ImageError::io("write", &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_may_use_http() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.0.0.1",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "example.org:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.evil:1",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
