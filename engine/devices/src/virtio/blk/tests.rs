#![allow(clippy::unwrap_used)]

use super::*;
use hangar_block::backend::{MemoryDisk, RawFile};
use hangar_testkit::Rng;
use hangar_testkit::TempImage;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

type Mem = GuestMemoryMmap<()>;

const MEM_SIZE: usize = 0x10_0000;
const QSIZE: u16 = QUEUE_SIZE_MAX;
const HDR: u64 = 0x4000;
const STATUS: u64 = 0x4100;
const DATA: u64 = 0x1_0000;
const DATA2: u64 = 0x8_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn memory(size: usize) -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// Store `descs` at the start of a fresh queue's descriptor table (flags and
/// next exactly as given), make `head` available and pop its chain.
fn pop_chain<'a>(
    mem: &'a Mem,
    qsize: u16,
    descs: &[Descriptor],
    head: u16,
) -> DescriptorChain<&'a Mem> {
    let q = MockSplitQueue::new(mem, qsize);
    for (i, d) in descs.iter().enumerate() {
        q.desc_table()
            .store(i as u16, RawDescriptor::from(*d))
            .unwrap();
    }
    q.avail().ring().ref_at(0).unwrap().store(head);
    q.avail().idx().store(1);
    let mut queue: Queue = q.create_queue().unwrap();
    queue.pop_descriptor_chain(mem).unwrap()
}

/// A well-formed linked chain from (addr, len, device-writable) buffers.
fn linked(bufs: &[(u64, u32, bool)]) -> Vec<Descriptor> {
    bufs.iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let mut flags = if w { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            Descriptor::new(addr, len, flags, (i + 1) as u16)
        })
        .collect()
}

fn write_header(mem: &Mem, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

fn write_range(mem: &Mem, addr: u64, sector: u64, count: u32, flags: u32) {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&count.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&r, GuestAddress(addr)).unwrap();
}

fn read_mem(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn status_at(mem: &Mem, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

/// A device with every offered feature accepted.
fn device<B: BlockBackend>(backend: B) -> VirtioBlk<B> {
    let mut dev = VirtioBlk::new(backend, "hangar-disk-0");
    dev.ack_features(u64::MAX);
    dev
}

fn mem_device(sectors: u64) -> VirtioBlk<MemoryDisk> {
    device(MemoryDisk::new(sectors * SECTOR_SIZE).unwrap())
}

fn run<B: BlockBackend>(dev: &mut VirtioBlk<B>, mem: &Mem, descs: &[Descriptor]) -> RequestOutcome {
    let chain = pop_chain(mem, QSIZE, descs, 0);
    dev.process_request(mem, chain)
}

/// Run a request with the usual layout: header, data buffers, status.
fn request<B: BlockBackend>(
    dev: &mut VirtioBlk<B>,
    mem: &Mem,
    kind: u32,
    sector: u64,
    data: &[(u64, u32, bool)],
) -> RequestOutcome {
    write_header(mem, HDR, kind, sector);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend_from_slice(data);
    bufs.push((STATUS, 1, true));
    run(dev, mem, &linked(&bufs))
}

/// Assert a request ended with `status` written, and return the outcome.
fn expect_status(out: &RequestOutcome, mem: &Mem, status: u8) {
    assert_eq!(out.status, Some(status), "outcome {out:?}");
    assert_eq!(status_at(mem, STATUS), status);
}

#[test]
fn test_raw_file_write_then_read_round_trip() {
    let img = TempImage::new(64 * 512);
    let mut dev = device(RawFile::open(&img.0, false).unwrap());
    let mem = memory(MEM_SIZE);
    let pattern: Vec<u8> = (0..1536u32).map(|i| (i * 7 % 251) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();

    // Three sectors at sector 5, from two data buffers.
    let out = request(
        &mut dev,
        &mem,
        VIRTIO_BLK_T_OUT,
        5,
        &[(DATA, 1024, false), (DATA + 1024, 512, false)],
    );
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(out.used_len, 1);
    let file = std::fs::read(&img.0).unwrap();
    assert_eq!(&file[5 * 512..8 * 512], &pattern[..]);
    assert!(file[..5 * 512].iter().all(|&b| b == 0));

    // Read them back, split differently.
    let out = request(
        &mut dev,
        &mem,
        VIRTIO_BLK_T_IN,
        5,
        &[(DATA2, 512, true), (DATA2 + 4096, 1024, true)],
    );
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(out.used_len, 1537);
    assert_eq!(read_mem(&mem, DATA2, 512), &pattern[..512]);
    assert_eq!(read_mem(&mem, DATA2 + 4096, 1024), &pattern[512..]);
}

#[test]
fn test_any_layout_header_split_and_status_after_data() {
    let mut dev = mem_device(16);
    let mem = memory(MEM_SIZE);
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    // OUT: header in two pieces (10 + 6 bytes), data in the second piece's
    // descriptor too.
    write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 3);
    let mut joined = read_mem(&mem, HDR + 10, 6);
    joined.extend_from_slice(&[0x5a; 512]);
    mem.write_slice(&joined, GuestAddress(DATA2)).unwrap();
    let out = run(
        &mut dev,
        &mem,
        &linked(&[(HDR, 10, false), (DATA2, 518, false), (STATUS, 1, true)]),
    );
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(&dev.backend().contents()[3 * 512..4 * 512], &[0x5a; 512]);

    // IN: data and status in one writable descriptor.
    write_header(&mem, HDR, VIRTIO_BLK_T_IN, 3);
    let out = run(
        &mut dev,
        &mem,
        &linked(&[(HDR, 16, false), (DATA2, 513, true)]),
    );
    assert_eq!(out.status, Some(STATUS_OK));
    assert_eq!(out.used_len, 513);
    assert_eq!(read_mem(&mem, DATA2, 512), vec![0x5a; 512]);
    assert_eq!(status_at(&mem, DATA2 + 512), STATUS_OK);
}

#[test]
fn test_flush_reaches_the_backend() {
    let img = TempImage::new(8 * 512);
    let mut dev = device(RawFile::open(&img.0, false).unwrap());
    let mem = memory(MEM_SIZE);
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_FLUSH, 0, &[]);
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(out.used_len, 1);
    // A flush carries no data.
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_FLUSH, 0, &[(DATA, 512, true)]);
    expect_status(&out, &mem, STATUS_IOERR);
}

#[test]
fn test_get_id_writes_the_padded_serial() {
    let mut dev = mem_device(8);
    let mem = memory(MEM_SIZE);
    mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(out.used_len, 21);
    let mut want = b"hangar-disk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(read_mem(&mem, DATA, 20), want);
    assert_eq!(read_mem(&mem, DATA + 20, 12), vec![0xee; 12]);

    // A short buffer gets what fits; a long serial is cut to 20 bytes.
    let mut dev = device(MemoryDisk::new(512).unwrap());
    dev.serial = *b"0123456789abcdefghij";
    let long = VirtioBlk::new(MemoryDisk::new(512).unwrap(), "0123456789abcdefghijKLMN");
    assert_eq!(long.save().serial, *b"0123456789abcdefghij");
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 8, true)]);
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(out.used_len, 9);
    assert_eq!(read_mem(&mem, DATA, 8), b"01234567");

    let out = request(&mut dev, &mem, VIRTIO_BLK_T_GET_ID, 0, &[]);
    expect_status(&out, &mem, STATUS_IOERR);
}

#[test]
fn test_discard_and_write_zeroes_on_memory_disk() {
    let mut dev = device(MemoryDisk::from_bytes(vec![0xab; 32 * 512], false));
    let mem = memory(MEM_SIZE);
    write_range(&mem, DATA, 2, 3, 0);
    let out = request(
        &mut dev,
        &mem,
        VIRTIO_BLK_T_DISCARD,
        0,
        &[(DATA, 16, false)],
    );
    expect_status(&out, &mem, STATUS_OK);
    write_range(&mem, DATA, 10, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let out = request(
        &mut dev,
        &mem,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &[(DATA, 16, false)],
    );
    expect_status(&out, &mem, STATUS_OK);
    let disk = dev.backend().contents();
    assert!(disk[2 * 512..5 * 512].iter().all(|&b| b == 0));
    assert!(disk[10 * 512..12 * 512].iter().all(|&b| b == 0));
    assert_eq!(disk[2 * 512 - 1], 0xab);
    assert_eq!(disk[5 * 512], 0xab);
    assert_eq!(disk[12 * 512], 0xab);
}

#[test]
fn test_discard_and_write_zeroes_on_raw_file() {
    let img = TempImage::new(256 * 512);
    std::fs::write(&img.0, vec![0xab; 256 * 512]).unwrap();
    let mut dev = device(RawFile::open(&img.0, false).unwrap());
    let mem = memory(MEM_SIZE);
    // Discard is a hint: only its status is certain.
    write_range(&mem, DATA, 0, 8, 0);
    let out = request(
        &mut dev,
        &mem,
        VIRTIO_BLK_T_DISCARD,
        0,
        &[(DATA, 16, false)],
    );
    expect_status(&out, &mem, STATUS_OK);
    for (sector, flags) in [(16u64, 0u32), (64, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)] {
        write_range(&mem, DATA, sector, 9, flags);
        let out = request(
            &mut dev,
            &mem,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &[(DATA, 16, false)],
        );
        expect_status(&out, &mem, STATUS_OK);
    }
    let file = std::fs::read(&img.0).unwrap();
    assert_eq!(file.len(), 256 * 512);
    assert!(file[16 * 512..25 * 512].iter().all(|&b| b == 0));
    assert!(file[64 * 512..73 * 512].iter().all(|&b| b == 0));
    assert_eq!(file[25 * 512], 0xab);
    assert_eq!(file[73 * 512], 0xab);
}

#[test]
fn test_zeroing_flags_limits_and_negotiation() {
    let mem = memory(MEM_SIZE);
    let mut dev = mem_device(32);
    let cases: [(u32, u64, u32, u32, u8); 7] = [
        // Discard takes no flags; unknown write-zeroes flags are unsupported.
        (
            VIRTIO_BLK_T_DISCARD,
            0,
            1,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            STATUS_UNSUPP,
        ),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 2, STATUS_UNSUPP),
        // Past the end, overflowing, beyond max sectors.
        (VIRTIO_BLK_T_DISCARD, 31, 2, 0, STATUS_IOERR),
        (VIRTIO_BLK_T_WRITE_ZEROES, u64::MAX, 2, 0, STATUS_IOERR),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            MAX_ZEROING_SECTORS + 1,
            0,
            STATUS_IOERR,
        ),
        // Zero sectors is a no-op.
        (VIRTIO_BLK_T_DISCARD, 32, 0, 0, STATUS_OK),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0, 32, 0, STATUS_OK),
    ];
    for (kind, sector, count, flags, want) in cases {
        write_range(&mem, DATA, sector, count, flags);
        let out = request(&mut dev, &mem, kind, 0, &[(DATA, 16, false)]);
        expect_status(&out, &mem, want);
    }
    // Two ranges when one is allowed; a cut-off range; none.
    write_range(&mem, DATA + 16, 1, 1, 0);
    for data in [&[(DATA, 32, false)][..], &[(DATA, 17, false)], &[]] {
        let out = request(&mut dev, &mem, VIRTIO_BLK_T_DISCARD, 0, data);
        expect_status(&out, &mem, STATUS_IOERR);
    }
    // Not negotiated: unsupported.
    let mut plain = VirtioBlk::new(MemoryDisk::new(32 * 512).unwrap(), "");
    plain.ack_features(1 << VIRTIO_F_VERSION_1);
    write_range(&mem, DATA, 0, 1, 0);
    let out = request(
        &mut plain,
        &mem,
        VIRTIO_BLK_T_DISCARD,
        0,
        &[(DATA, 16, false)],
    );
    expect_status(&out, &mem, STATUS_UNSUPP);
    let out = request(
        &mut plain,
        &mem,
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &[(DATA, 16, false)],
    );
    expect_status(&out, &mem, STATUS_UNSUPP);
}

#[test]
fn test_read_only_disk_refuses_writes() {
    let img = TempImage::new(16 * 512);
    std::fs::write(&img.0, vec![0x11; 16 * 512]).unwrap();
    let mut dev = device(RawFile::open(&img.0, true).unwrap());
    let features = dev.device_features();
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(features & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    let mem = memory(MEM_SIZE);
    mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, false)]);
    expect_status(&out, &mem, STATUS_IOERR);
    assert!(matches!(out.error, Some(RequestError::ReadOnly)));
    write_range(&mem, DATA2, 0, 1, 0);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let out = request(&mut dev, &mem, kind, 0, &[(DATA2, 16, false)]);
        expect_status(&out, &mem, STATUS_IOERR);
    }
    assert_eq!(std::fs::read(&img.0).unwrap(), vec![0x11; 16 * 512]);
    // Reads and flushes still work.
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_IN, 15, &[(DATA, 512, true)]);
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(read_mem(&mem, DATA, 512), vec![0x11; 512]);
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_FLUSH, 0, &[]);
    expect_status(&out, &mem, STATUS_OK);
}

#[test]
fn test_unknown_request_types_are_unsupported() {
    let mut dev = mem_device(8);
    let mem = memory(MEM_SIZE);
    for kind in [2u32, 3, 14, 0xdead_beef, u32::MAX] {
        let out = request(&mut dev, &mem, kind, 0, &[]);
        expect_status(&out, &mem, STATUS_UNSUPP);
        assert_eq!(out.used_len, 1);
    }
}

/// A backend whose every operation fails.
struct BrokenDisk;

impl BlockBackend for BrokenDisk {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("broken"))
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("broken"))
    }
    fn flush(&self) -> io::Result<()> {
        Err(io::Error::other("broken"))
    }
}

#[test]
fn test_backend_errors_become_ioerr() {
    let mut dev = device(BrokenDisk);
    let mem = memory(MEM_SIZE);
    mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    for (kind, data) in [
        (VIRTIO_BLK_T_IN, (DATA, 512, true)),
        (VIRTIO_BLK_T_OUT, (DATA, 512, false)),
    ] {
        let out = request(&mut dev, &mem, kind, 0, &[data]);
        expect_status(&out, &mem, STATUS_IOERR);
        assert!(matches!(out.error, Some(RequestError::Io(_))));
        assert_eq!(out.used_len, 1);
    }
    assert_eq!(read_mem(&mem, DATA, 512), vec![0x77; 512]);
    let out = request(&mut dev, &mem, VIRTIO_BLK_T_FLUSH, 0, &[]);
    expect_status(&out, &mem, STATUS_IOERR);
}

/// A hostile chain: name, descriptors, header type and sector, expected status.
type HostileCase = (&'static str, Vec<Descriptor>, u32, u64, Option<u8>);

/// The hostile-chain suite: every malformation ends with an error status
/// when a status byte is usable, with none otherwise, and never touches
/// memory or disk beyond that byte.
#[test]
fn test_hostile_chains() {
    let mem = memory(MEM_SIZE);
    let end = MEM_SIZE as u64;
    let io = Some(STATUS_IOERR);
    let none = None;
    let w = WRITE;
    let r = 0u16;
    let cases: Vec<HostileCase> = vec![
        (
            "header only",
            linked(&[(HDR, 16, false)]),
            VIRTIO_BLK_T_IN,
            0,
            none,
        ),
        (
            "status not writable",
            linked(&[(HDR, 16, false), (STATUS, 1, false)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "status zero length",
            linked(&[(HDR, 16, false), (STATUS, 0, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "status outside memory",
            linked(&[(HDR, 16, false), (end, 1, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "status address overflows",
            linked(&[(HDR, 16, false), (u64::MAX, 2, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "status at u64::MAX",
            linked(&[(HDR, 16, false), (u64::MAX, 1, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "loop",
            vec![
                Descriptor::new(HDR, 16, r | NEXT, 1),
                Descriptor::new(STATUS, 1, w | NEXT, 0),
            ],
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "self loop",
            vec![Descriptor::new(STATUS, 1, w | NEXT, 0)],
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "next out of the table",
            vec![
                Descriptor::new(HDR, 16, r | NEXT, 300),
                Descriptor::new(STATUS, 1, w, 0),
            ],
            VIRTIO_BLK_T_FLUSH,
            0,
            none,
        ),
        (
            "no header",
            linked(&[(STATUS, 1, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            io,
        ),
        (
            "header too short",
            linked(&[(HDR, 8, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            io,
        ),
        (
            "header outside memory",
            linked(&[(end - 8, 16, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            io,
        ),
        (
            "header address overflows",
            linked(&[(u64::MAX - 4, 16, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_FLUSH,
            0,
            io,
        ),
        (
            "readable after writable",
            linked(&[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA2, 512, false),
                (STATUS, 1, true),
            ]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
        (
            "read into readable buffer",
            linked(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
        (
            "write from writable buffer",
            linked(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_OUT,
            0,
            io,
        ),
        (
            "read not sector multiple",
            linked(&[(HDR, 16, false), (DATA, 513, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
        (
            "write not sector multiple",
            linked(&[(HDR, 16, false), (DATA, 100, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_OUT,
            0,
            io,
        ),
        (
            "read at capacity",
            linked(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            64,
            io,
        ),
        (
            "read across the end",
            linked(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            63,
            io,
        ),
        (
            "write across the end",
            linked(&[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_OUT,
            63,
            io,
        ),
        (
            "sector overflows",
            linked(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            u64::MAX,
            io,
        ),
        (
            "sector times 512 overflows",
            linked(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_OUT,
            u64::MAX / 256,
            io,
        ),
        (
            "read buffer outside memory",
            linked(&[(HDR, 16, false), (end, 512, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
        (
            "read buffer partly outside memory",
            linked(&[(HDR, 16, false), (end - 512, 1024, true), (STATUS, 1, true)]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
        (
            "second read buffer outside memory",
            linked(&[
                (HDR, 16, false),
                (DATA, 512, true),
                (u64::MAX - 511, 512, true),
                (STATUS, 1, true),
            ]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
        (
            "write buffer outside memory",
            linked(&[(HDR, 16, false), (1 << 40, 512, false), (STATUS, 1, true)]),
            VIRTIO_BLK_T_OUT,
            0,
            io,
        ),
        (
            "absurd buffer length",
            linked(&[
                (HDR, 16, false),
                (DATA, u32::MAX - 511, true),
                (STATUS, 1, true),
            ]),
            VIRTIO_BLK_T_IN,
            0,
            io,
        ),
    ];
    for (name, descs, kind, sector, want) in cases {
        let mut dev = device(MemoryDisk::from_bytes(vec![0x33; 64 * 512], false));
        // Canary everywhere, then the header.
        mem.write_slice(&vec![0xc5; MEM_SIZE], GuestAddress(0))
            .unwrap();
        write_header(&mem, HDR, kind, sector);
        let chain = pop_chain(&mem, QSIZE, &descs, 0);
        let before = read_mem(&mem, 0, MEM_SIZE);
        let out = dev.process_request(&mem, chain);
        assert_eq!(out.status, want, "{name}: {out:?}");
        assert!(out.error.is_some(), "{name}: no error reported");
        let after = read_mem(&mem, 0, MEM_SIZE);
        let changed: Vec<usize> = (0..MEM_SIZE).filter(|&i| before[i] != after[i]).collect();
        match want {
            Some(s) => {
                assert_eq!(out.used_len, 1, "{name}");
                assert_eq!(
                    changed,
                    vec![STATUS as usize],
                    "{name}: only the status changes"
                );
                assert_eq!(after[STATUS as usize], s);
            }
            None => {
                assert_eq!(out.used_len, 0, "{name}");
                assert!(changed.is_empty(), "{name}: memory changed at {changed:?}");
            }
        }
        assert_eq!(
            dev.backend().contents(),
            vec![0x33; 64 * 512],
            "{name}: disk changed"
        );
    }
}

#[test]
fn test_empty_chain_from_a_bad_indirect_table() {
    let mem = memory(MEM_SIZE);
    let mut dev = mem_device(8);
    // An indirect table whose length is not whole descriptors.
    let chain = pop_chain(&mem, QSIZE, &[Descriptor::new(DATA, 17, INDIRECT, 0)], 0);
    let out = dev.process_request(&mem, chain);
    assert_eq!(out.status, None);
    assert!(matches!(out.error, Some(RequestError::EmptyChain)));
}

#[test]
fn test_indirect_chain_is_followed() {
    let mem = memory(MEM_SIZE);
    let mut dev = mem_device(8);
    let table = DATA2;
    for (i, d) in linked(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)])
        .into_iter()
        .enumerate()
    {
        mem.write_obj(RawDescriptor::from(d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 1);
    mem.write_slice(&[0x44; 512], GuestAddress(DATA)).unwrap();
    let chain = pop_chain(&mem, QSIZE, &[Descriptor::new(table, 48, INDIRECT, 0)], 0);
    let out = dev.process_request(&mem, chain);
    expect_status(&out, &mem, STATUS_OK);
    assert_eq!(&dev.backend().contents()[512..1024], &[0x44; 512]);
}

#[test]
fn test_too_many_descriptors() {
    let mem = memory(MEM_SIZE);
    let mut dev = mem_device(8);
    // Header, 300 one-sector buffers, status: in an indirect table, which
    // may be longer than the queue.
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend((0..300).map(|_| (DATA, 512, true)));
    bufs.push((STATUS, 1, true));
    let table = DATA2;
    for (i, d) in linked(&bufs).into_iter().enumerate() {
        mem.write_obj(RawDescriptor::from(d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let chain = pop_chain(
        &mem,
        QSIZE,
        &[Descriptor::new(table, 16 * 302, INDIRECT, 0)],
        0,
    );
    let out = dev.process_request(&mem, chain);
    expect_status(&out, &mem, STATUS_IOERR);
    assert!(matches!(
        out.error,
        Some(RequestError::TooManyDescriptors { count: 302, .. })
    ));
}

#[test]
fn test_request_larger_than_advertised_is_refused() {
    // 2 x 128 MiB buffers over the same (lazily mapped) guest memory.
    const BIG: u32 = 128 << 20;
    let mem = memory(BIG as usize + (1 << 20));
    let mut dev = mem_device(1 << 20);
    let out = request(
        &mut dev,
        &mem,
        VIRTIO_BLK_T_IN,
        0,
        &[(0x10_0000, BIG, true), (0x10_0000, BIG, true)],
    );
    expect_status(&out, &mem, STATUS_IOERR);
    assert!(matches!(out.error, Some(RequestError::TooLarge(_))));
}

#[test]
fn test_config_space_layout_and_features() {
    let dev = mem_device(1000);
    let c = dev.config();
    assert_eq!(c.capacity, 1000);
    assert_eq!(c.seg_max, 254);
    assert_eq!(c.blk_size, 512);
    let b = c.to_bytes();
    assert_eq!(&b[0..8], &1000u64.to_le_bytes());
    assert_eq!(&b[12..16], &254u32.to_le_bytes());
    assert_eq!(&b[20..24], &512u32.to_le_bytes());
    assert_eq!(&b[40..44], &1u32.to_le_bytes());
    assert_eq!(b[56], 1);
    let mut w = [0u8; 4];
    dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), 254);
    dev.read_config(58, &mut w);
    assert_eq!(w, [0; 4], "past the end reads zero");
    dev.read_config(u64::MAX, &mut w);
    assert_eq!(w, [0; 4]);

    let f = dev.device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let mut dev = dev;
    dev.ack_features(u64::MAX);
    assert_eq!(dev.acked_features(), f, "unknown bits are dropped");
}

#[test]
fn test_state_round_trip() {
    let mut dev = VirtioBlk::new(MemoryDisk::new(64 * 512).unwrap(), "snap");
    dev.ack_features(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH);
    let state = dev.save();
    let json = serde_json::to_string(&state).unwrap();
    let parsed: BlkState = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, state);
    let restored = VirtioBlk::restore(MemoryDisk::new(64 * 512).unwrap(), &parsed).unwrap();
    assert_eq!(restored.save(), state);

    let err = VirtioBlk::restore(MemoryDisk::new(32 * 512).unwrap(), &parsed)
        .err()
        .unwrap();
    assert!(matches!(
        err,
        BlkError::CapacityMismatch {
            saved: 64,
            actual: 32
        }
    ));
    let err = VirtioBlk::restore(MemoryDisk::from_bytes(vec![0; 64 * 512], true), &parsed)
        .err()
        .unwrap();
    assert!(matches!(err, BlkError::ReadOnlyMismatch));
    let mut forged = parsed.clone();
    forged.config.seg_max = u32::MAX;
    assert!(VirtioBlk::restore(MemoryDisk::new(64 * 512).unwrap(), &forged).is_err());
    let mut forged = parsed.clone();
    forged.acked_features |= 1 << 40;
    assert!(matches!(
        VirtioBlk::restore(MemoryDisk::new(64 * 512).unwrap(), &forged),
        Err(BlkError::FeaturesNotOffered(f)) if f == 1 << 40
    ));
}

/// 10 000 random chains over a small memory filled with a canary: no panic,
/// a written status is always OK / IOERR / UNSUPP, and no byte outside the
/// chain's writable buffers (and the status) ever changes.
#[test]
fn test_random_chains_stay_inside_their_buffers() {
    const SMALL: usize = 0x1_0000;
    const Q: u16 = 16;
    let mem = memory(SMALL);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut dev = mem_device(64);
    let kinds = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        2,
        0xffff_ffff,
    ];
    let mut statuses = [0u32; 4];
    for _ in 0..10_000 {
        let mut canary = vec![0u8; SMALL - 0x1000];
        for b in canary.iter_mut() {
            *b = 0xa5;
        }
        mem.write_slice(&canary, GuestAddress(0x1000)).unwrap();
        let n = 1 + rng.below(6) as usize;
        let mut descs = Vec::with_capacity(n);
        for i in 0..n {
            let addr = match rng.below(10) {
                0 => SMALL as u64 - rng.below(600),
                1 => rng.next_u64(),
                _ => 0x1000 + rng.below(SMALL as u64 - 0x1000),
            };
            let len = match rng.below(4) {
                0 => rng.pick(&[0u32, 1, 15, 16, 17, 32, 511, 512, 513, 1024, 4096]),
                1 => rng.next_u64() as u32,
                _ => rng.below(2048) as u32,
            };
            let mut flags = if rng.below(2) == 0 { WRITE } else { 0 };
            if i == 0 && rng.below(3) != 0 {
                flags = 0;
            }
            if i + 1 == n && rng.below(4) != 0 {
                flags = WRITE;
            }
            let mut next = (i + 1) as u16;
            if i + 1 < n {
                flags |= NEXT;
            }
            match rng.below(40) {
                0 => flags |= INDIRECT,
                1 => next = rng.below(u64::from(Q) + 4) as u16,
                2 => flags ^= NEXT,
                _ => {}
            }
            descs.push(Descriptor::new(addr, len, flags, next));
            // Give readable buffers plausible content: a header, ranges.
            let readable = flags & WRITE == 0;
            if readable && mem.check_range(GuestAddress(addr), 32, Permissions::Read) {
                let (wild_sector, wild_range) = (rng.next_u64(), rng.next_u64());
                let kind = rng.pick(&kinds);
                let sector = rng.pick(&[0, 1, 62, 63, 64, wild_sector]);
                write_header(&mem, addr, kind, sector);
                let sector = rng.pick(&[0, 8, 63, 64, wild_range]);
                let count = rng.pick(&[0, 1, 8, u32::MAX]);
                let flags = rng.pick(&[0, 1, 2]);
                write_range(&mem, addr + 16, sector, count, flags);
            }
        }
        let chain = pop_chain(&mem, Q, &descs, 0);
        let yielded: Vec<Descriptor> = chain.clone().collect();
        let before = read_mem(&mem, 0, SMALL);
        let out = dev.process_request(&mem, chain);
        let after = read_mem(&mem, 0, SMALL);

        let writable: Vec<(u64, u64)> = yielded
            .iter()
            .filter(|d| d.is_write_only())
            .map(|d| (d.addr().0, d.addr().0.saturating_add(u64::from(d.len()))))
            .collect();
        let total_writable: u64 = writable.iter().map(|(a, b)| b - a).sum();
        assert!(u64::from(out.used_len) <= total_writable, "{out:?}");
        for i in (0..SMALL).filter(|&i| before[i] != after[i]) {
            let a = i as u64;
            assert!(
                writable.iter().any(|&(s, e)| s <= a && a < e),
                "byte {a:#x} changed outside the writable buffers of {yielded:?}"
            );
        }
        match out.status {
            Some(s) => {
                assert!(s <= STATUS_UNSUPP, "status {s}");
                statuses[usize::from(s)] += 1;
                let last = yielded.last().unwrap();
                assert!(last.is_write_only());
                let status_addr = last.addr().0 + u64::from(last.len()) - 1;
                assert_eq!(after[status_addr as usize], s);
                assert!(out.used_len >= 1);
            }
            None => {
                statuses[3] += 1;
                assert_eq!(out.used_len, 0);
                assert!(before == after, "memory changed without a status");
            }
        }
    }
    // The mix reached every outcome.
    assert!(
        statuses.iter().all(|&c| c > 0),
        "outcomes OK/IOERR/UNSUPP/none: {statuses:?}"
    );
}
