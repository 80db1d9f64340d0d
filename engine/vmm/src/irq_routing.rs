//! KVM's GSI routing table: the PC's legacy interrupt pins plus one MSI
//! route per MSI-X vector, as the guest programs them.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use hangar_devices::bus::lock;
use hangar_devices::irq::InterruptSink;
use hangar_devices::pci::MsixMessage;
use hangar_devices::virtio::MsiRouting;

/// Pins of the in-kernel IOAPIC.
const IOAPIC_PINS: u32 = 24;

/// The routing table of one VM. KVM_SET_GSI_ROUTING replaces the whole
/// table, so this keeps every MSI route and rebuilds the table (legacy
/// entries as KVM's defaults have them, then the MSI routes) on each change.
pub(crate) struct KvmMsiRouting {
    vm: Arc<VmFd>,
    routes: Mutex<BTreeMap<u32, MsixMessage>>,
}

impl KvmMsiRouting {
    pub(crate) fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            routes: Mutex::new(BTreeMap::new()),
        }
    }
}

/// The PC's ISA interrupt pins (PIC and IOAPIC pins 0-15).
pub(crate) const ISA_IRQS: u32 = 16;

/// The legacy devices' pins raised with KVM_IRQ_LINE on the thread that
/// triggers them: mostly a vCPU thread serving the guest's port I/O, so
/// the interrupt is pending before that vCPU enters the guest again. An
/// irqfd instead hands it to a KVM worker, which then has to kick a vCPU
/// that is likely back in the guest. QEMU raises these pins the direct
/// way; the lane's nested SVM is where the difference was suspected (see
/// tests/nested-kvm/README.md, "Lane stability").
pub(crate) struct KvmIrqLine(pub(crate) Arc<VmFd>);

impl InterruptSink for KvmIrqLine {
    fn pulse(&self, gsi: u32) -> io::Result<()> {
        self.0
            .set_irq_line(gsi, true)
            .and_then(|()| self.0.set_irq_line(gsi, false))
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, m: &MsixMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.address as u32;
    e.u.msi.address_hi = (m.address >> 32) as u32;
    e.u.msi.data = m.data;
    e
}

/// KVM's default table (kvm_setup_default_irq_routing): GSIs 0..15 on both
/// PICs and the IOAPIC, 16..23 on the IOAPIC only.
fn legacy_entries() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

impl MsiRouting for KvmMsiRouting {
    fn route(&self, gsi: u32, message: MsixMessage) -> io::Result<()> {
        let mut routes = lock(&self.routes);
        routes.insert(gsi, message);
        let mut entries = legacy_entries();
        entries.extend(routes.iter().map(|(&g, m)| msi(g, m)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}
