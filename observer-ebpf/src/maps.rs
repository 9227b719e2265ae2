//! The maps shared with the agent, and the small operations the programs do on them.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use observer_common::{
    Config, Counter,
    control::{CONTROL_FLOWS_CAPACITY, ControlState, FlowKey, Update, decide},
    counter::CounterValues,
    fold::{CLOSING_CAPACITY, FOLDED_CAPACITY, FlowFold, FoldedFlow, closes, foldable},
    parse::OptionBuf,
    record::{ArpSnapRecord, RING_BYTES, SOCK_RING_BYTES, TcpRecord, TcpSnapRecord},
    sock::SockConfig,
};

/// The packet programs' records (the agent may resize it at load).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// The socket programs' records, in a ring of their own (the agent may resize it at load).
#[map]
pub static SOCK_EVENTS: RingBuf = RingBuf::with_byte_size(SOCK_RING_BYTES, 0);

/// Per-CPU outcome counters, all in one slot indexed by `Counter`.
#[map]
pub static COUNTERS: PerCpuArray<CounterValues> = PerCpuArray::with_max_entries(1, 0);

/// The agent's configuration (one entry).
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Kernel structure offsets and the network namespace for the socket programs (one entry).
#[map]
pub static SOCK_CONFIG: Array<SockConfig> = Array::with_max_entries(1, 0);

/// Data segments folded per flow while the packet ring was above its high-water mark (see `observer_common::fold`).
#[map]
pub static FOLDED: PerCpuHashMap<FlowKey, FoldedFlow> = PerCpuHashMap::with_max_entries(FOLDED_CAPACITY, 0);

/// Folded flows a FIN or RST is closing: their pure ACKs are recorded again (the value is unused).
#[map]
pub static CLOSING: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(CLOSING_CAPACITY, 0);

/// Flows in handshake or teardown, for control-only mode.
#[map]
pub static CONTROL_FLOWS: LruHashMap<FlowKey, ControlState> = LruHashMap::with_max_entries(CONTROL_FLOWS_CAPACITY, 0);

/// The TCP record being built and its option buffer.
#[repr(C)]
pub struct TcpScratch {
    /// The record, cleared for each frame, with room for the header bytes behind it; the trailer is filled
    /// (and cleared) only when `Config::snap` asks for it.
    pub record: TcpSnapRecord,
    /// The options of the frame; never cleared (only freshly loaded bytes are read).
    pub options: OptionBuf,
    /// Where the frame's TCP header ends (see `parse_tcp`).
    pub headers_end: usize,
}

/// Per-CPU scratch for the TCP record being built: it does not fit the 512-byte BPF stack beside the parser.
#[map]
pub static SCRATCH_TCP: PerCpuArray<TcpScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for the ARP record being built, for the same stack reason.
#[map]
pub static SCRATCH_ARP: PerCpuArray<ArpSnapRecord> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch slot of `map`.
#[allow(
    clippy::mut_from_ref,
    reason = "a per-CPU map hands out this CPU's slot; one program run at a time uses it"
)]
#[inline(always)]
pub fn scratch<T>(map: &'static PerCpuArray<T>) -> Option<&'static mut T> {
    let p = map.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot used by one program run at a time on this CPU.
    Some(unsafe { &mut *p })
}

/// Adds one to the frame's `seen` counter and to the counter of its outcome, with one map lookup.
#[inline(always)]
pub fn count(seen: Counter, outcome: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, written only from this CPU with preemption off.
        let values = unsafe { &mut *p };
        values[seen as usize] += 1;
        values[outcome as usize] += 1;
    }
}

/// Reserves, fills and submits (or, for benchmarks, discards) one record; the counter to add is `Emitted`.
#[inline(always)]
pub fn emit<T: Copy + 'static>(rec: &T, discard: bool) -> Result<Counter, Counter> {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        return Err(Counter::RingFull);
    };
    // Copy straight into the ring: a `write(*rec)` would stage the record on the stack.
    // SAFETY: the entry has room for one T and does not overlap the scratch record.
    unsafe { core::ptr::copy_nonoverlapping(rec, entry.as_mut_ptr(), 1) };
    if discard {
        entry.discard(0);
    } else {
        entry.submit(0);
    }
    Ok(Counter::Emitted)
}

/// Runs the control-only policy on a segment and applies its map update.
#[inline(always)]
pub fn control_allows(rec: &TcpRecord) -> bool {
    let (key, from_lo) = FlowKey::of(rec);
    // SAFETY: the value is copied out before any update of the same key.
    let state = unsafe { CONTROL_FLOWS.get(key) }.copied();
    let d = decide(rec, from_lo, state);
    match d.update {
        Update::Keep => {}
        Update::Store(s) => {
            // A full LRU map evicts an old flow; nothing to count.
            let _ = CONTROL_FLOWS.insert(key, s, 0);
        }
        Update::Delete => {
            let _ = CONTROL_FLOWS.remove(key);
        }
    }
    d.emit
}

/// Folds a stamped segment into its flow's counters when the packet ring holds more than `fold_above` unread
/// bytes and the segment may be folded; true when it was (the counter to add is `Folded`).
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, each map call copies the key to a stack slot of its own: 174 more classifier instructions"
)]
pub fn fold(rec: &TcpRecord, fold_above: u32) -> bool {
    if fold_above == 0 || EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) <= u64::from(fold_above) {
        return false;
    }
    let (key, from_lo) = FlowKey::of(rec);
    let entry = FOLDED.get_ptr_mut(&key);
    let flow = FlowFold {
        folded: entry.is_some(),
        // Looked up only where it can change the outcome: a pure ACK of a folded flow.
        // SAFETY: the value is only tested for presence.
        closing: entry.is_some() && rec.payload_len == 0 && unsafe { CLOSING.get(&key) }.is_some(),
    };
    if !foldable(rec, flow) {
        if flow.folded && closes(rec) {
            // A full LRU map forgets an old flow; its pure ACKs may then be folded again.
            let _ = CLOSING.insert(&key, &0, 0);
        }
        return false;
    }
    if let Some(p) = entry {
        // SAFETY: this CPU's value of the entry; preemption is off while the program runs.
        unsafe { &mut *p }.add(rec, from_lo, rec.header.ts_ns);
        return true;
    }
    let mut first = FoldedFlow::default();
    first.add(rec, from_lo, rec.header.ts_ns);
    // A full table: the segment is recorded as usual.
    FOLDED.insert(&key, &first, u64::from(BPF_NOEXIST)).is_ok()
}
