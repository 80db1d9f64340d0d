//! The OCI runtime `config.json` of a container: what Docker gives a
//! container by default (namespaces, capabilities, masked and read-only
//! paths, a seccomp deny list, no_new_privs), plus the user's choices.

use std::path::Path;

use libcontainer::oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::{ConfigError, ContainerConfig, ContainerError, InternalError};

/// Docker's default capability set: everything else is dropped.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths under /proc and /sys that leak host information or control.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// System calls a container never needs and that reach the host kernel's
/// global state (Docker's default profile blocks the same ones). They fail
/// with EPERM; everything else is allowed, the capabilities above still
/// apply.
pub const BLOCKED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "sysfs",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// The CPU period the quota is a share of (the kernel's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The network namespace a spec gives its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecNetwork<'a> {
    /// A new, empty one (loopback only).
    New,
    /// The existing one at this path.
    Join(&'a Path),
    /// The runtime's own: Hangar's helper makes one network namespace per
    /// container and runs the runtime in it.
    Inherit,
}

/// What the spec needs besides the user's [`ContainerConfig`].
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    /// The merged root filesystem (overlay mount point).
    pub rootfs: &'a Path,
    /// argv of the process, resolved against the image's entrypoint/cmd.
    pub args: Vec<String>,
    /// Final environment.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// uid and gid the process runs as.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// The container's hostname.
    pub hostname: &'a str,
    /// cgroup path relative to the hierarchy roots, e.g. `/hangar/<id>`.
    pub cgroup_path: &'a str,
    /// Which network namespace the container gets.
    pub network: SpecNetwork<'a>,
    /// Files the engine writes for the container (`/etc/hosts`,
    /// `/etc/resolv.conf`), bind-mounted over the image's: host path and
    /// path inside.
    pub etc_files: Vec<(std::path::PathBuf, &'static str)>,
    /// Run by an unprivileged user (inside the helper's user namespace):
    /// no cgroup resources in the spec (the engine writes the limits, see
    /// `cgroup.rs`) and no mount options naming unmapped ids.
    pub rootless: bool,
}

/// Builds the runtime spec and checks it against the OCI schema types.
pub fn build_spec(
    config: &ContainerConfig,
    inputs: &SpecInputs<'_>,
) -> Result<Spec, ContainerError> {
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let mut devpts_options = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    // The tty group (5) is not mapped in a rootless user namespace.
    if !inputs.rootless {
        devpts_options.push("gid=5");
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": devpts_options}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (source, target) in &inputs.etc_files {
        mounts.push(json!({
            "destination": target,
            "type": "bind",
            "source": source,
            "options": ["rbind", "nosuid", "nodev", "noexec", "rw"],
        }));
    }
    for v in &config.volumes {
        let mut options = vec!["rbind", "nosuid", "nodev"];
        options.push(if v.read_only { "ro" } else { "rw" });
        mounts.push(json!({
            "destination": v.target,
            "type": "bind",
            "source": v.source,
            "options": options,
        }));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    match inputs.network {
        SpecNetwork::New => namespaces.push(json!({"type": "network"})),
        SpecNetwork::Join(p) => namespaces.push(json!({"type": "network", "path": p})),
        SpecNetwork::Inherit => {}
    }

    let mut resources = json!({
        // Only the usual character devices; libcontainer adds the
        // standard allow list (null, zero, full, tty, urandom, random, pts).
        "devices": [{"allow": false, "access": "rwm"}],
    });
    let limits = &config.limits;
    if let Some(mib) = limits.memory_mib {
        let bytes = mib
            .checked_mul(1 << 20)
            .ok_or(ConfigError::MemoryTooLarge { mib })?;
        resources["memory"] = json!({"limit": bytes});
    }
    if let Some(cpus) = limits.cpus {
        // `cpus` of the machine's time, as a quota per period.
        let quota = (cpus * CPU_PERIOD_US as f64).round() as i64;
        resources["cpu"] = json!({"quota": quota, "period": CPU_PERIOD_US});
    }
    if let Some(pids) = limits.pids {
        resources["pids"] = json!({"limit": pids});
    }

    let seccomp = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{
            "names": BLOCKED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }],
    });

    let mut linux = json!({
        "cgroupsPath": inputs.cgroup_path,
        "namespaces": namespaces,
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        "seccomp": seccomp,
    });
    if !inputs.rootless {
        linux["resources"] = resources;
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": config.terminal,
            "user": {"uid": inputs.uid, "gid": inputs.gid},
            "args": inputs.args,
            "env": inputs.env,
            "cwd": inputs.cwd,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": inputs.rootfs, "readonly": false},
        "hostname": inputs.hostname,
        "mounts": mounts,
        "linux": linux,
    });
    to_spec(spec)
}

/// The runtime spec as JSON (`config.json`): what Hangar would give a
/// container, for tools that run it with another OCI runtime (the
/// benchmark gives crun and runc the same bundle).
pub fn runtime_spec_json(
    config: &ContainerConfig,
    inputs: &SpecInputs<'_>,
) -> Result<Value, ContainerError> {
    serde_json::to_value(build_spec(config, inputs)?)
        .map_err(|e| InternalError::EncodeSpec(e).into())
}

fn to_spec(v: Value) -> Result<Spec, ContainerError> {
    serde_json::from_value(v).map_err(|e| InternalError::InvalidSpec(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContainerLimits, Volume};
    use std::path::PathBuf;

    fn inputs(root: &Path) -> SpecInputs<'_> {
        SpecInputs {
            rootfs: root,
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: "abc",
            cgroup_path: "/hangar/abc",
            network: SpecNetwork::New,
            etc_files: Vec::new(),
            rootless: false,
        }
    }

    #[test]
    fn rootless_leaves_limits_to_the_engine_and_maps_no_tty_group() {
        let mut cfg = ContainerConfig::new("default");
        cfg.limits.memory_mib = Some(64);
        let mut i = inputs(Path::new("/r"));
        i.rootless = true;
        let v = serde_json::to_value(build_spec(&cfg, &i).unwrap()).unwrap();
        assert!(v["linux"].get("resources").is_none(), "{}", v["linux"]);
        let devpts = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["type"] == "devpts")
            .unwrap()
            .clone();
        assert!(!devpts["options"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "gid=5"));
        // No user namespace in the spec: the helper's is the container's.
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user"));
        i.network = SpecNetwork::Inherit;
        let v = serde_json::to_value(build_spec(&cfg, &i).unwrap()).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }

    #[test]
    fn defaults_drop_capabilities_and_block_mount() {
        let cfg = ContainerConfig::new("default");
        let spec = build_spec(&cfg, &inputs(Path::new("/r"))).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let bounding = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(!bounding.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let blocked = &v["linux"]["seccomp"]["syscalls"][0]["names"];
        assert!(blocked.as_array().unwrap().iter().any(|n| n == "mount"));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "ipc", "uts", "mount", "cgroup", "network"] {
            assert!(ns.contains(&want), "{want} namespace missing: {ns:?}");
        }
        assert!(v["linux"]["resources"].get("memory").is_none());
    }

    #[test]
    fn limits_and_volumes_reach_the_spec() {
        let mut cfg = ContainerConfig::new("default");
        cfg.limits = ContainerLimits {
            memory_mib: Some(64),
            cpus: Some(0.5),
            pids: Some(32),
        };
        cfg.volumes.push(Volume {
            source: PathBuf::from("/srv/data"),
            target: "/data".into(),
            read_only: true,
        });
        let spec = build_spec(&cfg, &inputs(Path::new("/r"))).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], 32);
        let m = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(m["source"], "/srv/data");
        assert!(m["options"].as_array().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn joins_a_given_network_namespace() {
        let cfg = ContainerConfig::new("default");
        let mut i = inputs(Path::new("/r"));
        let ns = PathBuf::from("/run/netns/x");
        i.network = SpecNetwork::Join(&ns);
        let v = serde_json::to_value(build_spec(&cfg, &i).unwrap()).unwrap();
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net["path"], "/run/netns/x");
    }
}
