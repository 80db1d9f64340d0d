//! The virtio-PCI registers and bits as the spec (virtio 1.2) names them,
//! written down apart from the transport's own code: the tests that drive a
//! device as a driver would (this module's and the device manager's) check
//! the transport against these numbers, not against its own.

// Common configuration registers (virtio 1.2, 4.1.4.3).
pub(crate) const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub(crate) const DEVICE_FEATURE: u64 = 0x04;
pub(crate) const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub(crate) const DRIVER_FEATURE: u64 = 0x0c;
pub(crate) const MSIX_CONFIG: u64 = 0x10;
pub(crate) const NUM_QUEUES: u64 = 0x12;
pub(crate) const DEVICE_STATUS: u64 = 0x14;
pub(crate) const CONFIG_GENERATION: u64 = 0x15;
pub(crate) const QUEUE_SELECT: u64 = 0x16;
pub(crate) const QUEUE_SIZE: u64 = 0x18;
pub(crate) const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub(crate) const QUEUE_ENABLE: u64 = 0x1c;
pub(crate) const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub(crate) const QUEUE_DESC: u64 = 0x20;
pub(crate) const QUEUE_DRIVER: u64 = 0x28;
pub(crate) const QUEUE_DEVICE: u64 = 0x30;

// device_status bits.
pub(crate) const ACKNOWLEDGE: u8 = 1;
pub(crate) const DRIVER: u8 = 2;
pub(crate) const DRIVER_OK: u8 = 4;
pub(crate) const FEATURES_OK: u8 = 8;
pub(crate) const NEEDS_RESET: u8 = 0x40;
pub(crate) const FAILED: u8 = 0x80;

// Feature bits.
pub(crate) const F_BARRIER: u64 = 1 << 0;
pub(crate) const F_FLUSH: u64 = 1 << 9;
pub(crate) const F_EVENT_IDX: u64 = 1 << 29;
pub(crate) const F_VERSION_1: u64 = 1 << 32;
pub(crate) const F_ACCESS_PLATFORM: u64 = 1 << 33;
