//! The PC's real-time clock and CMOS RAM: a Motorola MC146818 at ports
//! 0x70 (index, bit 7 masks NMIs) and 0x71 (data).
//!
//! The clock is the host's UTC wall clock plus an offset: when the guest
//! sets the time (`hwclock -w`), only the offset changes, so the RTC keeps
//! running across snapshots like a battery-backed one. Linux reads the time
//! at boot and polls register A's update-in-progress flag around every
//! read, so that flag is never shown set: a guest would spin on it.
//!
//! Interrupts: the update-ended and alarm flags are computed lazily, on
//! register reads and on [`Cmos::tick`]; IRQ 8 is raised only when the guest
//! has enabled the matching interrupt in register B. Periodic interrupts
//! are not generated (the rate is kept, the flag never set).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{BusDevice, GuestRequest, IrqLine, Persist};

/// The index port (0x70); the data port is the next one.
pub const CMOS_BASE: u16 = 0x70;
/// Index port and data port.
pub const CMOS_LEN: u64 = 2;
/// The RTC's ISA interrupt.
pub const CMOS_IRQ: u32 = 8;

/// Bytes of CMOS RAM, clock registers included.
const RAM_SIZE: usize = 128;

// Clock registers (indices into RAM).
const REG_SECONDS: usize = 0x00;
const REG_SECONDS_ALARM: usize = 0x01;
const REG_MINUTES: usize = 0x02;
const REG_MINUTES_ALARM: usize = 0x03;
const REG_HOURS: usize = 0x04;
const REG_HOURS_ALARM: usize = 0x05;
const REG_DAY_OF_WEEK: usize = 0x06;
const REG_DAY_OF_MONTH: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;

/// Registers that hold the current time and date.
const TIME_REGISTERS: [usize; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DAY_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    REG_CENTURY,
];

/// Register A: update in progress (read-only).
const REG_A_UIP: u8 = 0x80;
/// Register A at power-on: 32.768 kHz time base, 1024 Hz periodic rate.
const REG_A_DEFAULT: u8 = 0x26;

/// Register B: updates halted while the guest sets the time.
const REG_B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
const REG_B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
const REG_B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
const REG_B_UIE: u8 = 0x10;
/// Register B: binary (not BCD) data mode.
const REG_B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour (not 12-hour) mode.
const REG_B_24H: u8 = 0x02;
/// Register B at power-on as a BIOS leaves it: BCD, 24-hour. Linux's
/// rtc-cmos refuses 12-hour mode, so 24-hour is the default.
const REG_B_DEFAULT: u8 = REG_B_24H;

/// Register C: some enabled interrupt is pending.
const REG_C_IRQF: u8 = 0x80;
/// Register C: alarm matched.
const REG_C_AF: u8 = 0x20;
/// Register C: an update cycle ended.
const REG_C_UF: u8 = 0x10;

/// Register D: RAM and time are valid (battery good).
const REG_D_VRT: u8 = 0x80;

/// Hour register bit meaning PM in 12-hour mode.
const HOUR_PM: u8 = 0x80;
/// Alarm register values with both top bits set match any value.
const ALARM_DONT_CARE: u8 = 0xc0;

// Memory-size bytes BIOSes and old loaders read.
const REG_BASE_MEM_LO: usize = 0x15;
const REG_EXT_MEM_LO: usize = 0x17;
const REG_EXT_MEM_COPY_LO: usize = 0x30;
const REG_MEM_ABOVE_16M_LO: usize = 0x34;
const REG_MEM_ABOVE_4G: usize = 0x5b;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SECONDS_PER_DAY: i64 = 86_400;

/// Where the RTC gets the host's wall-clock time.
type Clock = Box<dyn Fn() -> SystemTime + Send>;

/// The RTC and CMOS RAM, for snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CmosState {
    /// Selected register (0..=127).
    pub index: u8,
    /// The guest masked NMIs through bit 7 of the index port.
    pub nmi_masked: bool,
    /// The 128 bytes of RAM. Time registers hold the last time shown or the
    /// time being set; register C holds the pending interrupt flags.
    pub ram: Vec<u8>,
    /// Guest time minus host UTC time, in seconds.
    pub clock_offset_secs: i64,
    /// Guest time (Unix seconds) up to which update and alarm flags have
    /// been computed.
    pub flags_computed_until: i64,
}

/// What a restored RTC is connected to.
pub struct CmosArgs {
    /// Its interrupt line (IRQ 8).
    pub irq: IrqLine,
}

/// Why an RTC state cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmosError {
    /// CMOS RAM is 128 bytes.
    #[error("CMOS RAM of {0} bytes, the RTC has {RAM_SIZE}")]
    RamSize(usize),
    /// The index port selects registers 0..=127.
    #[error("selected register {0:#04x} is past the RTC's 128")]
    Index(u8),
}

/// An MC146818 RTC with 128 bytes of CMOS RAM.
pub struct Cmos {
    index: u8,
    nmi_masked: bool,
    ram: [u8; RAM_SIZE],
    clock_offset_secs: i64,
    flags_computed_until: i64,
    irq: IrqLine,
    clock: Clock,
}

impl Cmos {
    /// An RTC showing the host's UTC time, with the memory-size bytes set
    /// from the guest's RAM below and above 4 GiB (in bytes).
    pub fn new(mem_below_4g: u64, mem_above_4g: u64, irq: IrqLine) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, irq, Box::new(SystemTime::now))
    }

    /// Like [`Cmos::new`] with another time source, so tests can fix time.
    fn with_clock(mem_below_4g: u64, mem_above_4g: u64, irq: IrqLine, clock: Clock) -> Self {
        let mut ram = [0u8; RAM_SIZE];
        ram[REG_A] = REG_A_DEFAULT;
        ram[REG_B] = REG_B_DEFAULT;
        ram[REG_D] = REG_D_VRT;
        write_memory_sizes(&mut ram, mem_below_4g, mem_above_4g);
        let mut cmos = Self {
            index: 0,
            nmi_masked: false,
            ram,
            clock_offset_secs: 0,
            flags_computed_until: 0,
            irq,
            clock,
        };
        cmos.flags_computed_until = cmos.guest_now();
        cmos.show_time();
        cmos
    }

    /// [`Persist::restore`] with another time source, so tests can fix time.
    fn restore_with_clock(
        args: CmosArgs,
        state: &CmosState,
        clock: Clock,
    ) -> Result<Self, CmosError> {
        let ram = <[u8; RAM_SIZE]>::try_from(state.ram.as_slice())
            .map_err(|_| CmosError::RamSize(state.ram.len()))?;
        if usize::from(state.index) >= RAM_SIZE {
            return Err(CmosError::Index(state.index));
        }
        Ok(Self {
            index: state.index,
            nmi_masked: state.nmi_masked,
            ram,
            clock_offset_secs: state.clock_offset_secs,
            flags_computed_until: state.flags_computed_until,
            irq: args.irq,
            clock,
        })
    }

    /// Whether the guest has masked NMIs (bit 7 of the last index write).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// Bring the update-ended and alarm flags up to date and raise IRQ 8 if
    /// the guest enabled one that became pending. Flags are also updated
    /// whenever the guest reads a register; a VMM that wants alarms and
    /// update interrupts delivered to a waiting guest (`hwclock` waits for
    /// one) calls this a few times a second.
    pub fn tick(&mut self) {
        self.update_flags();
    }

    /// Host UTC time in whole seconds since the Unix epoch.
    fn host_now(&self) -> i64 {
        match (self.clock)().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
        }
    }

    /// The guest's idea of now, in Unix seconds.
    fn guest_now(&self) -> i64 {
        self.host_now().saturating_add(self.clock_offset_secs)
    }

    fn binary_mode(&self) -> bool {
        self.ram[REG_B] & REG_B_DM_BINARY != 0
    }

    fn hour_24_mode(&self) -> bool {
        self.ram[REG_B] & REG_B_24H != 0
    }

    fn halted(&self) -> bool {
        self.ram[REG_B] & REG_B_SET != 0
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary_mode() {
            value
        } else {
            to_bcd(value)
        }
    }

    fn decode(&self, raw: u8) -> Option<u8> {
        if self.binary_mode() {
            Some(raw)
        } else {
            from_bcd(raw)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.hour_24_mode() {
            return self.encode(hour);
        }
        // 12-hour clock: 12 AM is midnight, 12 PM is noon.
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, raw: u8) -> Option<u8> {
        if self.hour_24_mode() {
            return self.decode(raw).filter(|&h| h < 24);
        }
        let h12 = self
            .decode(raw & !HOUR_PM)
            .filter(|h| (1..=12).contains(h))?;
        let pm = raw & HOUR_PM != 0;
        Some(h12 % 12 + if pm { 12 } else { 0 })
    }

    /// Write the guest's current time into the time registers.
    fn show_time(&mut self) {
        let t = CalendarTime::from_unix(self.guest_now());
        self.ram[REG_SECONDS] = self.encode(t.second);
        self.ram[REG_MINUTES] = self.encode(t.minute);
        self.ram[REG_HOURS] = self.encode_hour(t.hour);
        self.ram[REG_DAY_OF_WEEK] = self.encode(t.day_of_week);
        self.ram[REG_DAY_OF_MONTH] = self.encode(t.day);
        self.ram[REG_MONTH] = self.encode(t.month);
        self.ram[REG_YEAR] = self.encode(t.year_of_century);
        self.ram[REG_CENTURY] = self.encode(t.century);
    }

    /// Take the time registers as the guest's new time: only the offset
    /// from host time changes. Values no real clock could hold (month 13,
    /// bad BCD) are refused and the clock runs on unchanged.
    fn commit_time(&mut self) {
        let Some(new_time) = self.time_in_registers() else {
            log::warn!(
                "cmos: guest set an invalid time {:02x?}, keeping the clock",
                TIME_REGISTERS.map(|r| self.ram[r])
            );
            return;
        };
        self.clock_offset_secs = new_time.saturating_sub(self.host_now());
        // A jump is not a string of update cycles: start counting afresh.
        self.flags_computed_until = new_time;
    }

    fn time_in_registers(&self) -> Option<i64> {
        let second = self.decode(self.ram[REG_SECONDS]).filter(|&s| s < 60)?;
        let minute = self.decode(self.ram[REG_MINUTES]).filter(|&m| m < 60)?;
        let hour = self.decode_hour(self.ram[REG_HOURS])?;
        let day = self
            .decode(self.ram[REG_DAY_OF_MONTH])
            .filter(|d| (1..=31).contains(d))?;
        let month = self
            .decode(self.ram[REG_MONTH])
            .filter(|m| (1..=12).contains(m))?;
        let year = self.decode(self.ram[REG_YEAR]).filter(|&y| y < 100)?;
        let century = self.decode(self.ram[REG_CENTURY]).filter(|&c| c < 100)?;
        let full_year = i64::from(century) * 100 + i64::from(year);
        let days = days_from_civil(full_year, month, day);
        Some(
            days * SECONDS_PER_DAY
                + i64::from(hour) * 3600
                + i64::from(minute) * 60
                + i64::from(second),
        )
    }

    /// Whether the alarm registers match the time of day `t` (Unix seconds).
    fn alarm_matches(&self, t: i64) -> bool {
        let secs_of_day = t.rem_euclid(SECONDS_PER_DAY);
        let hms = [
            (REG_HOURS_ALARM, secs_of_day / 3600),
            (REG_MINUTES_ALARM, secs_of_day / 60 % 60),
            (REG_SECONDS_ALARM, secs_of_day % 60),
        ];
        hms.iter().all(|&(reg, now)| {
            let raw = self.ram[reg];
            if raw & ALARM_DONT_CARE == ALARM_DONT_CARE {
                return true;
            }
            let wanted = if reg == REG_HOURS_ALARM {
                self.decode_hour(raw)
            } else {
                self.decode(raw)
            };
            wanted.is_some_and(|w| i64::from(w) == now)
        })
    }

    /// Account for the update cycles since the last call: set UF, set AF if
    /// the alarm time passed, and raise IRQ 8 if that made an enabled
    /// interrupt pending.
    fn update_flags(&mut self) {
        let now = self.guest_now();
        if self.halted() || now <= self.flags_computed_until {
            // No update cycles run while SET is on; time that went backwards
            // (host clock stepped) just restarts the count.
            self.flags_computed_until = now;
            return;
        }
        let mut flags = self.ram[REG_C] | REG_C_UF;
        // Every time of day occurs within a day, so a longer gap need not
        // be checked second by second.
        let first = self
            .flags_computed_until
            .saturating_add(1)
            .max(now.saturating_sub(SECONDS_PER_DAY - 1));
        if flags & REG_C_AF == 0 && (first..=now).any(|t| self.alarm_matches(t)) {
            flags |= REG_C_AF;
        }
        self.flags_computed_until = now;
        self.set_flags(flags);
    }

    /// Store new register C flags, computing IRQF, and raise the interrupt
    /// when IRQF goes from clear to set.
    fn set_flags(&mut self, flags: u8) {
        let enabled = self.ram[REG_B] & (REG_B_PIE | REG_B_AIE | REG_B_UIE);
        // Flag bits line up with their enable bits in register B.
        let pending = flags & enabled & (REG_C_AF | REG_C_UF) != 0;
        let was_pending = self.ram[REG_C] & REG_C_IRQF != 0;
        let irqf = if pending { REG_C_IRQF } else { 0 };
        self.ram[REG_C] = (flags & !REG_C_IRQF) | irqf | (self.ram[REG_C] & REG_C_IRQF);
        if pending && !was_pending {
            if let Err(e) = self.irq.trigger() {
                log::warn!("cmos: cannot raise IRQ {}: {e}", self.irq.gsi());
            }
        }
    }

    fn read_register(&mut self, reg: usize) -> u8 {
        self.update_flags();
        match reg {
            // Never "update in progress": Linux polls for it to clear.
            REG_A => self.ram[REG_A] & !REG_A_UIP,
            REG_C => std::mem::take(&mut self.ram[REG_C]),
            REG_D => REG_D_VRT,
            r if TIME_REGISTERS.contains(&r) => {
                // While SET is on the registers hold what the guest wrote.
                if !self.halted() {
                    self.show_time();
                }
                self.ram[r]
            }
            r => self.ram[r],
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            REG_A => self.ram[REG_A] = value & !REG_A_UIP,
            REG_B => self.write_register_b(value),
            // Read-only status registers.
            REG_C | REG_D => {}
            r if TIME_REGISTERS.contains(&r) => {
                if self.halted() {
                    // The guest is setting the clock; it counts once SET clears.
                    self.ram[r] = value;
                } else {
                    // Change one field of the running clock.
                    self.show_time();
                    self.ram[r] = value;
                    self.commit_time();
                }
            }
            r => self.ram[r] = value,
        }
    }

    fn write_register_b(&mut self, value: u8) {
        let was_halted = self.halted();
        let mut value = value;
        if value & REG_B_SET != 0 {
            // Freeze the shown time; an MC146818 also drops UIE under SET.
            if !was_halted {
                self.show_time();
            }
            value &= !REG_B_UIE;
        }
        self.ram[REG_B] = value;
        if was_halted && value & REG_B_SET == 0 {
            self.commit_time();
        }
        // Enabling an interrupt whose flag is already up asserts it.
        let flags = self.ram[REG_C];
        self.set_flags(flags);
    }
}

impl Persist for Cmos {
    type State = CmosState;
    type Args = CmosArgs;
    type Error = CmosError;

    /// The RTC's registers, RAM and clock offset.
    fn save(&self) -> CmosState {
        CmosState {
            index: self.index,
            nmi_masked: self.nmi_masked,
            ram: self.ram.to_vec(),
            clock_offset_secs: self.clock_offset_secs,
            flags_computed_until: self.flags_computed_until,
        }
    }

    /// The clock keeps the state's offset from host time, so it has moved
    /// on by the time the VM was stopped, like a battery-backed clock.
    fn restore(args: CmosArgs, state: &CmosState) -> Result<Self, CmosError> {
        Self::restore_with_clock(args, state, Box::new(SystemTime::now))
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let &mut [ref mut out] = data else {
            data.fill(0xff);
            return;
        };
        *out = match offset {
            // The index port is write-only on a PC.
            0 => 0xff,
            1 => self.read_register(usize::from(self.index)),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        let &[value] = data else {
            return None;
        };
        match offset {
            0 => {
                self.index = value & 0x7f;
                self.nmi_masked = value & 0x80 != 0;
            }
            1 => self.write_register(usize::from(self.index), value),
            _ => {}
        }
        None
    }
}

/// Fill in the memory-size bytes a BIOS would, from RAM sizes in bytes.
fn write_memory_sizes(ram: &mut [u8; RAM_SIZE], mem_below_4g: u64, mem_above_4g: u64) {
    let put16 = |ram: &mut [u8; RAM_SIZE], at: usize, v: u64| {
        let v = u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();
        ram[at..at + 2].copy_from_slice(&v);
    };
    // Conventional memory: 640 KiB whenever there is that much.
    put16(ram, REG_BASE_MEM_LO, (mem_below_4g / KIB).min(640));
    // KiB above 1 MiB, capped at 0xffff (just under 64 MiB).
    let extended = mem_below_4g.saturating_sub(MIB) / KIB;
    put16(ram, REG_EXT_MEM_LO, extended);
    put16(ram, REG_EXT_MEM_COPY_LO, extended);
    // 64 KiB units above 16 MiB, capped at 0xffff (just under 4 GiB).
    put16(
        ram,
        REG_MEM_ABOVE_16M_LO,
        mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB),
    );
    // 64 KiB units above 4 GiB, 24 bits.
    let above = (mem_above_4g / (64 * KIB)).min(0x00ff_ffff).to_le_bytes();
    ram[REG_MEM_ABOVE_4G..REG_MEM_ABOVE_4G + 3].copy_from_slice(&above[..3]);
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10 % 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

/// A moment broken down the way the RTC shows it.
#[derive(Debug, PartialEq, Eq)]
struct CalendarTime {
    second: u8,
    minute: u8,
    hour: u8,
    /// 1 = Sunday.
    day_of_week: u8,
    day: u8,
    month: u8,
    year_of_century: u8,
    century: u8,
}

impl CalendarTime {
    fn from_unix(t: i64) -> Self {
        let days = t.div_euclid(SECONDS_PER_DAY);
        let secs = t.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        // The RTC only has two BCD digits each for year and century.
        let year = year.rem_euclid(10_000);
        // 1970-01-01 was a Thursday (5 with Sunday = 1).
        let day_of_week = (days + 4).rem_euclid(7) + 1;
        // Every value below is reduced into 0..100 first, so `as` is exact.
        Self {
            second: (secs % 60) as u8,
            minute: (secs / 60 % 60) as u8,
            hour: (secs / 3600) as u8,
            day_of_week: day_of_week as u8,
            day,
            month,
            year_of_century: (year % 100) as u8,
            century: (year / 100) as u8,
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`). Days past the month's end roll into the next month.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u8, day as u8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// 2024-02-29 13:45:56 UTC, a Thursday.
    const LEAP_DAY_AFTERNOON: i64 = 1_709_214_356;

    /// A clock the test can move.
    #[derive(Clone)]
    struct FakeClock(Arc<AtomicI64>);

    impl FakeClock {
        fn new(t: i64) -> Self {
            Self(Arc::new(AtomicI64::new(t)))
        }
        fn advance(&self, secs: i64) {
            self.0.fetch_add(secs, Ordering::SeqCst);
        }
        fn set(&self, t: i64) {
            self.0.store(t, Ordering::SeqCst);
        }
        fn source(&self) -> Clock {
            let t = self.0.clone();
            Box::new(move || {
                let secs = t.load(Ordering::SeqCst);
                if secs >= 0 {
                    UNIX_EPOCH + Duration::from_secs(secs as u64)
                } else {
                    UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                }
            })
        }
    }

    fn cmos_at(t: i64) -> (Cmos, FakeClock, IrqLine) {
        let clock = FakeClock::new(t);
        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let observer = irq.try_clone().unwrap();
        let cmos = Cmos::with_clock(512 * MIB, 0, irq, clock.source());
        (cmos, clock, observer)
    }

    fn read_reg(c: &mut Cmos, reg: u8) -> u8 {
        assert_eq!(c.write(0, &[reg]), None);
        let mut b = [0u8; 1];
        c.read(1, &mut b);
        b[0]
    }

    fn write_reg(c: &mut Cmos, reg: u8, v: u8) {
        assert_eq!(c.write(0, &[reg]), None);
        assert_eq!(c.write(1, &[v]), None);
    }

    fn time_regs(c: &mut Cmos) -> [u8; 8] {
        [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|r| read_reg(c, r as u8))
    }

    fn irq_count(irq: &IrqLine) -> u64 {
        irq.eventfd().read().unwrap_or(0)
    }

    #[test]
    fn test_time_reads_in_bcd_by_default() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        // sec, min, hour, weekday (Thursday = 5), day, month, year, century
        assert_eq!(
            time_regs(&mut c),
            [0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn test_time_reads_in_binary_when_dm_set() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [56, 45, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn test_epoch_and_far_dates_convert() {
        assert_eq!(
            CalendarTime::from_unix(0),
            CalendarTime {
                second: 0,
                minute: 0,
                hour: 0,
                day_of_week: 5,
                day: 1,
                month: 1,
                year_of_century: 70,
                century: 19
            }
        );
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        let feb28_2100 = days_from_civil(2100, 2, 28);
        assert_eq!(civil_from_days(feb28_2100 + 1), (2100, 3, 1));
        for days in [-800_000i64, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        // Absurd instants must not panic.
        CalendarTime::from_unix(i64::MAX);
        CalendarTime::from_unix(i64::MIN);
    }

    #[test]
    fn test_twelve_hour_mode_sets_pm_flag() {
        let (mut c, clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x0b, 0); // BCD, 12-hour
        assert_eq!(read_reg(&mut c, 0x04), 0x80 | 0x01, "13h is 1 PM");
        clock.set(LEAP_DAY_AFTERNOON - 13 * 3600 - 45 * 60); // 00:00:56
        assert_eq!(read_reg(&mut c, 0x04), 0x12, "midnight is 12 AM");
        clock.set(LEAP_DAY_AFTERNOON - 3600 - 45 * 60); // 12:00:56
        assert_eq!(read_reg(&mut c, 0x04), 0x80 | 0x12, "noon is 12 PM");
        write_reg(&mut c, 0x0b, REG_B_DM_BINARY); // binary, 12-hour
        clock.set(LEAP_DAY_AFTERNOON + 10 * 3600); // 23:45:56
        assert_eq!(read_reg(&mut c, 0x04), 0x80 | 11);
    }

    #[test]
    fn test_guest_set_time_persists_as_offset() {
        let (mut c, clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        // As Linux's mc146818_set_time: SET, write fields, clear SET.
        write_reg(&mut c, 0x0b, REG_B_SET | REG_B_24H);
        for (reg, v) in [(0x00, 0x00), (0x02, 0x30), (0x04, 0x08)] {
            write_reg(&mut c, reg, v);
        }
        for (reg, v) in [(0x07, 0x01), (0x08, 0x01), (0x09, 0x30)] {
            write_reg(&mut c, reg, v);
        }
        // While SET is on, the clock holds what was written.
        clock.advance(5);
        assert_eq!(read_reg(&mut c, 0x02), 0x30);
        write_reg(&mut c, 0x0b, REG_B_24H);
        let set_at = days_from_civil(2030, 1, 1) * SECONDS_PER_DAY + 8 * 3600 + 30 * 60;
        assert_eq!(
            c.save().clock_offset_secs,
            set_at - (LEAP_DAY_AFTERNOON + 5)
        );

        clock.advance(61);
        assert_eq!(&time_regs(&mut c)[..3], &[0x01, 0x31, 0x08]);
        assert_eq!(read_reg(&mut c, 0x09), 0x30);
        assert_eq!(read_reg(&mut c, 0x32), 0x20);

        // The offset survives a snapshot and keeps running with host time.
        let state = c.save();
        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut restored =
            Cmos::restore_with_clock(CmosArgs { irq }, &state, clock.source()).unwrap();
        clock.advance(60);
        assert_eq!(read_reg(&mut restored, 0x02), 0x32);
    }

    #[test]
    fn test_single_field_write_without_set_changes_only_that_field() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x02, 0x10);
        assert_eq!(
            time_regs(&mut c),
            [0x56, 0x10, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
        // 2025 has no Feb 29: like a clock running on, the date becomes
        // Saturday Mar 1.
        write_reg(&mut c, 0x09, 0x25);
        assert_eq!(
            time_regs(&mut c),
            [0x56, 0x10, 0x13, 0x07, 0x01, 0x03, 0x25, 0x20]
        );
    }

    #[test]
    fn test_invalid_time_is_refused() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x0b, REG_B_SET | REG_B_24H);
        write_reg(&mut c, 0x08, 0x13); // month 13
        write_reg(&mut c, 0x0b, REG_B_24H);
        assert_eq!(c.save().clock_offset_secs, 0);
        write_reg(&mut c, 0x00, 0x5a); // bad BCD
        assert_eq!(c.save().clock_offset_secs, 0);
        assert_eq!(read_reg(&mut c, 0x00), 0x56);
    }

    #[test]
    fn test_register_a_never_shows_update_in_progress() {
        let (mut c, clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        assert_eq!(read_reg(&mut c, 0x0a), REG_A_DEFAULT);
        write_reg(&mut c, 0x0a, 0xff);
        for _ in 0..1000 {
            clock.advance(1);
            assert_eq!(read_reg(&mut c, 0x0a) & REG_A_UIP, 0);
        }
        assert_eq!(read_reg(&mut c, 0x0a), 0x7f);
    }

    #[test]
    fn test_register_d_is_valid_and_read_only() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        assert_eq!(read_reg(&mut c, 0x0d), 0x80);
        write_reg(&mut c, 0x0d, 0);
        assert_eq!(read_reg(&mut c, 0x0d), 0x80);
    }

    #[test]
    fn test_register_b_defaults_to_24h_bcd() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        assert_eq!(read_reg(&mut c, 0x0b), 0x02);
    }

    #[test]
    fn test_register_c_read_clears_flags_without_irq_when_disabled() {
        let (mut c, clock, irq) = cmos_at(LEAP_DAY_AFTERNOON);
        assert_eq!(read_reg(&mut c, 0x0c), 0);
        clock.advance(1);
        assert_eq!(read_reg(&mut c, 0x0c), REG_C_UF);
        assert_eq!(read_reg(&mut c, 0x0c), 0);
        clock.advance(3600);
        c.tick();
        assert_eq!(irq_count(&irq), 0, "no interrupt was enabled");
    }

    #[test]
    fn test_update_interrupt_raises_irq_when_enabled() {
        let (mut c, clock, irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_UIE);
        read_reg(&mut c, 0x0c);
        c.tick();
        assert_eq!(irq_count(&irq), 0, "no second has passed");
        clock.advance(1);
        c.tick();
        assert_eq!(irq_count(&irq), 1);
        clock.advance(1);
        c.tick();
        assert_eq!(irq_count(&irq), 0, "IRQF still set: no new edge");
        assert_eq!(read_reg(&mut c, 0x0c), REG_C_IRQF | REG_C_UF);
        clock.advance(1);
        c.tick();
        assert_eq!(irq_count(&irq), 1);
    }

    #[test]
    fn test_alarm_interrupt_fires_at_alarm_time() {
        let (mut c, clock, irq) = cmos_at(LEAP_DAY_AFTERNOON); // 13:45:56
        write_reg(&mut c, 0x01, 0x00);
        write_reg(&mut c, 0x03, 0x46);
        write_reg(&mut c, 0x05, 0xc0); // any hour
        read_reg(&mut c, 0x0c);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_AIE);
        clock.advance(3);
        c.tick();
        assert_eq!(irq_count(&irq), 0);
        assert_eq!(read_reg(&mut c, 0x0c), REG_C_UF);
        clock.advance(1); // 13:46:00
        c.tick();
        assert_eq!(irq_count(&irq), 1);
        assert_eq!(read_reg(&mut c, 0x0c), REG_C_IRQF | REG_C_AF | REG_C_UF);
    }

    #[test]
    fn test_alarm_passed_during_a_long_gap_is_noticed() {
        let (mut c, clock, irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x01, 0x30);
        write_reg(&mut c, 0x03, 0x15);
        write_reg(&mut c, 0x05, 0x02);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_AIE);
        clock.advance(30 * SECONDS_PER_DAY);
        c.tick();
        assert_eq!(irq_count(&irq), 1);
    }

    #[test]
    fn test_enabling_interrupt_with_flag_pending_raises_it() {
        let (mut c, clock, irq) = cmos_at(LEAP_DAY_AFTERNOON);
        clock.advance(1);
        c.tick();
        assert_eq!(irq_count(&irq), 0);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_UIE);
        assert_eq!(irq_count(&irq), 1);
    }

    #[test]
    fn test_set_bit_halts_updates_and_clears_uie() {
        let (mut c, clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x0b, REG_B_SET | REG_B_UIE | REG_B_24H);
        assert_eq!(read_reg(&mut c, 0x0b), REG_B_SET | REG_B_24H);
        clock.advance(10);
        assert_eq!(read_reg(&mut c, 0x00), 0x56);
        assert_eq!(read_reg(&mut c, 0x0c), 0);
    }

    #[test]
    fn test_memory_size_bytes() {
        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut c = Cmos::new(3 * 1024 * MIB, 5 * 1024 * MIB, irq);
        let r16 = |c: &mut Cmos, lo: u8| {
            u16::from(read_reg(c, lo)) | (u16::from(read_reg(c, lo + 1)) << 8)
        };
        assert_eq!(r16(&mut c, 0x15), 640);
        assert_eq!(r16(&mut c, 0x17), 0xffff, "capped");
        assert_eq!(r16(&mut c, 0x30), 0xffff);
        assert_eq!(
            u64::from(r16(&mut c, 0x34)),
            (3 * 1024 - 16) * MIB / (64 * KIB)
        );
        let above = u32::from(read_reg(&mut c, 0x5b))
            | (u32::from(read_reg(&mut c, 0x5c)) << 8)
            | (u32::from(read_reg(&mut c, 0x5d)) << 16);
        assert_eq!(u64::from(above), 5 * 1024 * MIB / (64 * KIB));

        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut small = Cmos::new(32 * MIB, 0, irq);
        assert_eq!(r16(&mut small, 0x17), 31 * 1024);
        assert_eq!(r16(&mut small, 0x34), (16 * MIB / (64 * KIB)) as u16);
        assert_eq!(read_reg(&mut small, 0x5b), 0);

        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut huge = Cmos::new(u64::MAX, u64::MAX, irq);
        assert_eq!(r16(&mut huge, 0x34), 0xffff);
        assert_eq!(read_reg(&mut huge, 0x5d), 0xff);
        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut tiny = Cmos::new(0, 0, irq);
        assert_eq!(r16(&mut tiny, 0x15), 0);
        assert_eq!(r16(&mut tiny, 0x17), 0);
    }

    #[test]
    fn test_index_is_masked_and_nmi_bit_recorded() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x40, 0xab);
        // 0xc0 selects register 0x40 with NMIs masked.
        assert_eq!(read_reg(&mut c, 0xc0), 0xab);
        assert!(c.nmi_masked());
        assert_eq!(c.save().index, 0x40);
        assert_eq!(read_reg(&mut c, 0x40), 0xab);
        assert!(!c.nmi_masked());
        // 0x8a is register A with NMIs masked, as Linux's CMOS_READ does.
        assert_eq!(read_reg(&mut c, 0x8a), REG_A_DEFAULT);
    }

    #[test]
    fn test_plain_ram_bytes_are_kept() {
        let (mut c, _clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        for reg in 0x0e..0x80u8 {
            if usize::from(reg) != REG_CENTURY {
                write_reg(&mut c, reg, reg ^ 0x5a);
            }
        }
        for reg in 0x0e..0x80u8 {
            if usize::from(reg) != REG_CENTURY {
                assert_eq!(read_reg(&mut c, reg), reg ^ 0x5a);
            }
        }
    }

    #[test]
    fn test_odd_accesses_do_not_panic() {
        let (mut c, clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        for len in [0usize, 2, 4, 8] {
            let mut d = vec![0u8; len];
            c.read(0, &mut d);
            c.read(1, &mut d);
            assert!(d.iter().all(|&b| b == 0xff));
            assert_eq!(c.write(0, &d), None);
            assert_eq!(c.write(1, &d), None);
        }
        let mut b = [0u8; 1];
        c.read(0, &mut b);
        assert_eq!(b[0], 0xff);
        c.read(7, &mut b);
        assert_eq!(c.write(u64::MAX, &[1]), None);
        // Every register with every value, in every mode.
        for b_value in [0x00, 0x02, 0x04, 0x06, 0x82, 0xff] {
            for reg in 0..=255u8 {
                for v in [0x00, 0x09, 0x12, 0x59, 0x5a, 0x7f, 0x80, 0x99, 0xc0, 0xff] {
                    write_reg(&mut c, reg, v);
                    read_reg(&mut c, reg);
                }
                write_reg(&mut c, 0x0b, b_value);
                clock.advance(7);
            }
        }
        // Absurd clock values.
        clock.set(i64::MAX);
        read_reg(&mut c, 0x00);
        clock.set(i64::MIN + 1);
        read_reg(&mut c, 0x00);
        write_reg(&mut c, 0x00, 0x01);
        c.tick();
    }

    #[test]
    fn test_state_round_trip() {
        let (mut c, clock, _irq) = cmos_at(LEAP_DAY_AFTERNOON);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_DM_BINARY);
        write_reg(&mut c, 0x50, 0x77);
        write_reg(&mut c, 0x09, 40); // year 2040
        write_reg(&mut c, 0x85, 0x00); // select an alarm register, mask NMIs
        let state = c.save();
        let json = serde_json::to_string(&state).unwrap();
        let parsed: CmosState = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, state);

        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut restored =
            Cmos::restore_with_clock(CmosArgs { irq }, &parsed, clock.source()).unwrap();
        assert_eq!(restored.save(), state);
        assert!(restored.nmi_masked());
        assert_eq!(read_reg(&mut restored, 0x50), 0x77);
        assert_eq!(read_reg(&mut restored, 0x09), 40);
        assert_eq!(read_reg(&mut restored, 0x0b), REG_B_24H | REG_B_DM_BINARY);
    }

    #[test]
    fn test_restore_refuses_wrong_ram_size_and_index() {
        let restore = |state: &CmosState| {
            let irq = IrqLine::new(CMOS_IRQ).unwrap();
            Cmos::restore(CmosArgs { irq }, state)
        };
        let state = CmosState {
            index: 0x7f,
            nmi_masked: false,
            ram: vec![0x11; RAM_SIZE],
            clock_offset_secs: i64::MAX,
            flags_computed_until: i64::MIN,
        };
        for len in [0, 3, RAM_SIZE - 1, RAM_SIZE + 1, 1000] {
            let wrong = CmosState {
                ram: vec![0x22; len],
                ..state.clone()
            };
            assert_eq!(restore(&wrong).err(), Some(CmosError::RamSize(len)));
        }
        for index in [0x80, 0xff] {
            let wrong = CmosState {
                index,
                ..state.clone()
            };
            assert_eq!(restore(&wrong).err(), Some(CmosError::Index(index)));
        }
        // Any clock offset is a time the guest may have set: absurd ones
        // restore and read without panicking.
        let mut c = restore(&state).unwrap();
        assert_eq!(c.save(), state);
        read_reg(&mut c, 0x00);
        read_reg(&mut c, 0x0c);
    }

    #[test]
    fn test_real_clock_is_close_to_host_time() {
        let irq = IrqLine::new(CMOS_IRQ).unwrap();
        let mut c = Cmos::new(MIB, 0, irq);
        write_reg(&mut c, 0x0b, REG_B_24H | REG_B_DM_BINARY);
        let century = i64::from(read_reg(&mut c, 0x32));
        let year = i64::from(read_reg(&mut c, 0x09));
        let host_year = civil_from_days(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                / SECONDS_PER_DAY,
        )
        .0;
        // Around New Year the two reads may straddle a year boundary.
        assert!((century * 100 + year - host_year).abs() <= 1);
    }
}
