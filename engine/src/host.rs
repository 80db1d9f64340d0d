//! What kind of virtualization this host offers, in words a user understands.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The host's KVM, as far as running guests is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostCapability {
    /// KVM backed by VT-x or AMD-V: every guest runs at native speed.
    HardwareKvm {
        /// "Intel VT-x" or "AMD-V".
        technology: String,
    },
    /// KVM without hardware virtualization (e.g. kvm_pvm, a software
    /// hypervisor for nested clouds): only small bare guests run, slowly.
    SoftwareKvm {
        /// The KVM module found, e.g. "kvm_pvm".
        module: String,
    },
    /// No usable /dev/kvm.
    NoKvm {
        /// Why, e.g. "/dev/kvm does not exist".
        reason: String,
    },
}

impl HostCapability {
    /// True if Linux guests can boot here.
    pub fn can_run_linux(&self) -> bool {
        matches!(self, HostCapability::HardwareKvm { .. })
    }

    /// True if any guest (including bare test programs) can run.
    pub fn has_kvm(&self) -> bool {
        !matches!(self, HostCapability::NoKvm { .. })
    }

    /// One or two sentences for the GUI and the CLI.
    pub fn summary(&self) -> String {
        match self {
            HostCapability::HardwareKvm { technology } => {
                format!("KVM with hardware virtualization ({technology}) is available.")
            }
            HostCapability::SoftwareKvm { module } => format!(
                "This computer's KVM has no hardware virtualization (VT-x/AMD-V): Linux guests cannot start here. \
                 Its KVM is {module}, a software hypervisor; enable VT-x/AMD-V in the firmware or use a machine that has it."
            ),
            HostCapability::NoKvm { reason } => format!(
                "KVM is not available ({reason}): virtual machines cannot start. \
                 Load the kvm_intel or kvm_amd module and make sure you may open /dev/kvm."
            ),
        }
    }

    /// The error to give when a Linux guest is asked for on this host.
    pub fn linux_refusal(&self) -> Option<String> {
        (!self.can_run_linux()).then(|| self.summary())
    }
}

/// Reads the host's state; paths are injectable for tests.
#[derive(Debug, Clone)]
pub struct HostProbe {
    /// Usually "/dev/kvm".
    pub kvm_device: &'static str,
    /// Usually "/proc/cpuinfo".
    pub cpuinfo: &'static str,
    /// Usually "/sys/module".
    pub modules: &'static str,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self {
            kvm_device: "/dev/kvm",
            cpuinfo: "/proc/cpuinfo",
            modules: "/sys/module",
        }
    }
}

impl HostProbe {
    /// Probe the real host.
    pub fn probe() -> HostCapability {
        Self::default().run()
    }

    /// Probe with these paths.
    pub fn run(&self) -> HostCapability {
        if let Err(e) = hangar_vmm::open_kvm(self.kvm_device) {
            let reason = if Path::new(self.kvm_device).exists() {
                format!("{} cannot be opened: {e}", self.kvm_device)
            } else {
                format!("{} does not exist", self.kvm_device)
            };
            return HostCapability::NoKvm { reason };
        }
        let modules = Path::new(self.modules);
        let cpu_flags = std::fs::read_to_string(self.cpuinfo).unwrap_or_default();
        classify(&cpu_flags, |m| modules.join(m).exists())
    }
}

/// Decide from the CPU flags and the loaded modules. PVM shows neither `vmx`
/// nor `svm` to the host, and its module is named `kvm_pvm`.
fn classify(cpuinfo: &str, module_loaded: impl Fn(&str) -> bool) -> HostCapability {
    if module_loaded("kvm_pvm") {
        return HostCapability::SoftwareKvm {
            module: "kvm_pvm".into(),
        };
    }
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    if flags.contains(&"vmx") {
        HostCapability::HardwareKvm {
            technology: "Intel VT-x".into(),
        }
    } else if flags.contains(&"svm") {
        HostCapability::HardwareKvm {
            technology: "AMD-V".into(),
        }
    } else {
        HostCapability::SoftwareKvm {
            module: "an unknown KVM module without VT-x/AMD-V".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_classify_pvm_is_software() {
        let cap = classify("flags\t: fpu sse2 vmx\n", |m| m == "kvm_pvm");
        assert!(matches!(cap, HostCapability::SoftwareKvm { .. }));
        assert!(!cap.can_run_linux());
        assert!(cap
            .summary()
            .contains("no hardware virtualization (VT-x/AMD-V)"));
    }

    #[test]
    fn test_classify_svm_and_vmx_are_hardware() {
        let amd = classify("flags\t: fpu svm npt\n", |_| false);
        assert_eq!(
            amd,
            HostCapability::HardwareKvm {
                technology: "AMD-V".into()
            }
        );
        let intel = classify("flags\t: fpu vmx ept\n", |_| false);
        assert!(intel.can_run_linux());
        assert!(intel.linux_refusal().is_none());
    }

    #[test]
    fn test_classify_no_flags_is_software() {
        let cap = classify("flags\t: fpu sse2\n", |_| false);
        assert!(matches!(cap, HostCapability::SoftwareKvm { .. }));
    }

    #[test]
    fn test_probe_missing_device_is_no_kvm() {
        let probe = HostProbe {
            kvm_device: "/nonexistent/kvm",
            ..HostProbe::default()
        };
        let cap = probe.run();
        assert!(matches!(cap, HostCapability::NoKvm { .. }), "{cap:?}");
        assert!(cap.summary().contains("does not exist"));
    }

    #[test]
    fn test_probe_this_host() {
        // On the project's machines /dev/kvm is kvm_pvm; elsewhere whatever
        // the host has. The probe must agree with /sys/module.
        let cap = HostProbe::probe();
        if Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists() {
            assert!(matches!(cap, HostCapability::SoftwareKvm { .. }), "{cap:?}");
        }
        if !Path::new("/dev/kvm").exists() {
            assert!(matches!(cap, HostCapability::NoKvm { .. }));
        }
    }
}
