//! The table: a slab of entries and an open-addressing index over it.

use std::hash::BuildHasher;

use foldhash::fast::FixedState;
use margay_rulecompiler::hint::prefetch;

use super::entry::ALL_STATES;
use super::pages::{Mapped, anon_huge_bytes};
use super::{Entry, FlowKey, RECLAIM_SCAN, State, Timeouts, timeout_ns};

/// Starts loading the first cache line of `e`: all an established flow's packet reads and
/// writes.
#[inline]
fn prefetch_line(e: &Entry) {
    prefetch(e);
}

/// Starts loading both cache lines of `e`, for a new entry's stores.
#[inline]
fn prefetch_lines(e: &Entry) {
    prefetch(e);
    prefetch(&e.reported);
}

/// Why an entry left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Idle past its timeout (or a closed TCP connection's grace period).
    Expired,
    /// Reclaimed to make room for a new flow.
    Reclaimed,
    /// Removed by the caller (policy change, TCP reopen).
    Removed,
}

/// A full table that could reclaim nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The table.
#[derive(Debug)]
pub struct Table {
    /// `(tag << 32) | (slab index + 1)`; 0 is empty. The tag is the hash's low 32 bits, which
    /// also give the home line ([`Table::home`]).
    index: Mapped<u64>,
    mask: usize,
    /// `capacity` entries, all initialised (unused ones `State::Free`); the first `used` have
    /// ever held a flow.
    slab: Mapped<Entry>,
    used: usize,
    free: Vec<u32>,
    live: usize,
    capacity: usize,
    hand: usize,
    hasher: FixedState,
    /// Idle timeout in ns by `State as usize` (the aging hand's check is one load).
    idle_ns: [u64; STATES],
}

/// Index slots per cache line.
const SLOTS_PER_LINE: usize = 64 / size_of::<u64>();

/// The first index slot `hash` probes in an index of `mask + 1` slots: the first slot of the
/// hash's line.
#[inline(always)]
fn home(hash: u32, mask: usize) -> usize {
    hash as usize & mask & !(SLOTS_PER_LINE - 1)
}

/// Whether what sits at `at` in a linearly probed array of `mask + 1` places, its probe
/// starting at `home`, may move back into `hole` (a place before `at`): when the hole lies on
/// its way from `home` to `at`. Backward-shift deletion's test, for the index's slots and
/// for `v4`'s lines alike.
#[inline]
fn may_move_back(at: usize, home: usize, hole: usize, mask: usize) -> bool {
    (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask)
}

/// The index slots from `pos` to the end of its cache line.
#[inline(always)]
pub(super) fn rest_of_line(index: &[u64], pos: usize) -> &[u64] {
    let end = (pos | (SLOTS_PER_LINE - 1)) + 1;
    index.get(pos..end).unwrap_or(&[])
}

/// Number of [`State`] values.
const STATES: usize = ALL_STATES.len();
const _: () = {
    assert!(STATES == State::Generic as usize + 1);
    let mut i = 0;
    while i < STATES {
        assert!(ALL_STATES[i] as usize == i);
        i += 1;
    }
};

/// Bytes a table for `capacity` entries reserves (and commits) for its index and slab:
/// [`Table::memory_bytes`] before the table is made.
pub fn reserved_bytes(capacity: usize) -> usize {
    let capacity = entries_for(capacity);
    index_slots(capacity) * size_of::<u64>() + capacity * size_of::<Entry>()
}

/// The entries a table asked for `capacity` holds: at least 1, and few enough that a slab
/// index (plus one) fits an index slot's 32 bits.
fn entries_for(capacity: usize) -> usize {
    capacity.clamp(1, u32::MAX as usize / 2)
}

/// Index slots for `capacity` entries: a load of at most one half, whole lines.
fn index_slots(capacity: usize) -> usize {
    (capacity * 2).next_power_of_two().max(SLOTS_PER_LINE)
}

impl Table {
    /// A table for at most `capacity` entries (at least 1), hashing with `seed`, on huge pages
    /// where the host allows ([`Table::with_pages`]).
    pub fn new(capacity: usize, timeouts: Timeouts, seed: u64) -> Table {
        Table::with_pages(capacity, timeouts, seed, true)
    }

    /// [`Table::new`], asking for transparent huge pages only when `huge_pages` (the daemon
    /// config's `[conntrack] huge_pages`).
    pub fn with_pages(capacity: usize, timeouts: Timeouts, seed: u64, huge_pages: bool) -> Table {
        let capacity = entries_for(capacity);
        let slots = index_slots(capacity);
        // Both arrays are faulted in here, so their pages are resident before the first
        // packet: new flows take no page fault (one per 32 entries otherwise, about a tenth of
        // a new flow's time in the profile). Zeroed entries are `State::Free`.
        Table {
            index: Mapped::zeroed(slots, huge_pages),
            slab: Mapped::zeroed(capacity, huge_pages),
            mask: slots - 1,
            used: 0,
            free: Vec::new(),
            live: 0,
            capacity,
            hand: 0,
            hasher: FixedState::with_seed(seed),
            idle_ns: ALL_STATES.map(|state| timeout_ns(&timeouts, state)),
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether `e` has been idle past its state's timeout at `now`.
    #[inline]
    fn expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) > self.idle_ns[e.state() as usize]
    }

    /// Slab slots the aging hand cycles over: those that have ever held a flow.
    pub fn slots(&self) -> usize {
        self.used
    }

    /// Most entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of the index and the slab the kernel has placed on huge pages (`None` when
    /// `/proc/self/smaps` cannot be read; an estimate when the kernel merged them with other
    /// memory: see `anon_huge_bytes`). Reads and parses that file: not for the packet path.
    pub fn huge_page_bytes(&self) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        Some(anon_huge_bytes(&smaps, self.index.range())? + anon_huge_bytes(&smaps, self.slab.range())?)
    }

    /// Bytes reserved by the index and the slab at full capacity.
    pub fn memory_bytes(&self) -> usize {
        self.index.bytes() + self.slab.bytes()
    }

    /// The 32-bit hash of `key`.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// Starts loading the index line `hash` probes first.
    #[inline]
    pub fn prefetch_index(&self, hash: u32) {
        prefetch(&self.index[self.home(hash)]);
    }

    /// The first index slot `hash` probes: the first of its line. Probing from the line's
    /// start keeps 99.3% of the keys in the line a lookup loads, against 94.5% from a home slot
    /// anywhere in the line. Each key left out costs two dependent misses (the next index line,
    /// then the entry, neither prefetched), which outweighs scanning 2.9 slots a lookup instead
    /// of 1.5 (docs/benchmarks.md, 2026-12-01, AMD).
    #[inline]
    fn home(&self, hash: u32) -> usize {
        home(hash, self.mask)
    }

    /// The index and the slab, viewed once for a pass over a burst: [`Probe::prefetch_entry`].
    #[inline]
    pub fn probe(&self) -> Probe<'_> {
        Probe { index: &self.index, slab: &self.slab, mask: self.mask }
    }

    /// [`Table::find`], trying slab index `hint` first ([`Probe::prefetch_entry`]'s answer
    /// for `hash`). The hint is only a guess, and may be stale: the table may have changed
    /// since it was taken (an earlier packet of the burst opened, ended or reopened a flow).
    /// It is taken only when its entry is live and holds `key`, which makes it `key`'s entry,
    /// as a key is live at most once.
    #[inline(always)]
    pub fn find_hinted(&self, key: &FlowKey, hash: u32, hint: Hint) -> Option<u32> {
        if let Some(e) = self.slab.get(hint.0 as usize)
            && e.key == *key
            && e.state() != State::Free
        {
            return Some(hint.0);
        }
        self.find(key, hash)
    }

    /// The slab index of `key`'s entry.
    #[inline(always)]
    pub fn find(&self, key: &FlowKey, hash: u32) -> Option<u32> {
        // Each view of a mapping checks its alignment and length: once per lookup, not per
        // probe.
        let (index, slab): (&[u64], &[Entry]) = (&self.index, &self.slab);
        let mut pos = self.home(hash);
        loop {
            let s = index[pos];
            if s == 0 {
                return None;
            }
            if (s >> 32) as u32 == hash {
                let i = s as u32 - 1;
                if slab[i as usize].key == *key {
                    return Some(i);
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// The entry at slab index `i`.
    #[inline]
    pub fn get(&self, i: u32) -> &Entry {
        &self.slab[i as usize]
    }

    /// The entry at slab index `i`, mutably.
    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.slab[i as usize]
    }

    /// Inserts `entry` (whose key is not in the table), reclaiming when full; a reclaimed
    /// entry is passed to `ended` before it is overwritten.
    pub fn insert(
        &mut self,
        entry: Entry,
        hash: u32,
        now: u64,
        ended: &mut impl FnMut(&Entry, EndReason),
    ) -> Result<u32, Full> {
        if self.live >= self.capacity {
            self.reclaim(now, ended)?;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = entry;
                i
            }
            None => {
                // `used < capacity` here: `live < capacity` and no slot is free.
                let i = self.used;
                self.slab[i] = entry;
                self.used += 1;
                i as u32
            }
        };
        let mut pos = self.home(hash);
        while self.index[pos] != 0 {
            pos = (pos + 1) & self.mask;
        }
        self.index[pos] = (u64::from(hash) << 32) | u64::from(i + 1);
        self.live += 1;
        self.prefetch_next_slot();
        Ok(i)
    }

    /// Starts loading both lines of the slab slot the next insert will write (the free list's
    /// top, else the first never-used slot), so that insert's stores find them in cache.
    #[inline]
    fn prefetch_next_slot(&self) {
        let next = self.free.last().map_or(self.used, |&f| f as usize);
        if let Some(e) = self.slab.get(next) {
            prefetch_lines(e);
        }
    }

    /// Frees one entry: the first expired one within [`RECLAIM_SCAN`] of the hand, else the
    /// first unestablished one seen.
    fn reclaim(&mut self, now: u64, ended: &mut impl FnMut(&Entry, EndReason)) -> Result<(), Full> {
        let n = self.used;
        let mut candidate = None;
        for k in 0..RECLAIM_SCAN.min(n) {
            let i = (self.hand + k) % n;
            let e = &self.slab[i];
            if e.state() == State::Free {
                continue;
            }
            // An offloaded flow's last packet may be in the fast path's table, not here: the
            // aging hand, which reads it, ends it if it is over.
            if e.flags & super::flags::FAST == 0 && self.expired(e, now) {
                self.hand = (i + 1) % n;
                self.remove(i as u32, EndReason::Expired, ended);
                return Ok(());
            }
            if candidate.is_none() && !e.established() {
                candidate = Some(i);
            }
        }
        self.hand = (self.hand + RECLAIM_SCAN) % n.max(1);
        match candidate {
            Some(i) => {
                self.remove(i as u32, EndReason::Reclaimed, ended);
                Ok(())
            }
            None => Err(Full),
        }
    }

    /// Removes the entry at slab index `i`, passing it to `ended` first.
    pub fn remove(&mut self, i: u32, why: EndReason, ended: &mut impl FnMut(&Entry, EndReason)) {
        let e = self.slab[i as usize];
        if e.state() == State::Free {
            return;
        }
        ended(&e, why);
        let hash = self.hash(&e.key);
        let mut pos = self.home(hash);
        let want = (u64::from(hash) << 32) | u64::from(i + 1);
        while self.index[pos] != want {
            if self.index[pos] == 0 {
                // Not indexed: only reachable if the slab and index disagree.
                debug_assert!(false, "conntrack entry {i} missing from the index");
                return;
            }
            pos = (pos + 1) & self.mask;
        }
        self.unlink(pos);
        self.slab[i as usize].set_state(State::Free);
        self.free.push(i);
        self.live -= 1;
    }

    /// Backward-shift deletion of index slot `hole`.
    fn unlink(&mut self, mut hole: usize) {
        self.index[hole] = 0;
        let mut j = (hole + 1) & self.mask;
        loop {
            let s = self.index[j];
            if s == 0 {
                return;
            }
            if may_move_back(j, self.home((s >> 32) as u32), hole, self.mask) {
                self.index[hole] = s;
                self.index[j] = 0;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
    }

    /// Visits up to `budget` slab slots from the aging hand: an offloaded entry that looks
    /// expired is passed to `refresh` first (which folds in what the fast path counted), then
    /// expired entries are removed (passed to `ended`), live ones are passed to `visit` (for
    /// periodic records).
    pub fn age(
        &mut self,
        now: u64,
        budget: usize,
        refresh: &mut impl FnMut(&mut Entry),
        visit: &mut impl FnMut(&mut Entry),
        ended: &mut impl FnMut(&Entry, EndReason),
    ) {
        let n = self.used;
        if n == 0 {
            return;
        }
        for _ in 0..budget.min(n) {
            let i = self.hand;
            self.hand = if i + 1 == n { 0 } else { i + 1 };
            if self.slab[i].state() == State::Free {
                continue;
            }
            // An offloaded entry's own last-seen time lags: before ending it, read what the
            // fast path saw (only then, so a long flow costs no read per sweep).
            if self.slab[i].flags & super::flags::FAST != 0 && self.expired(&self.slab[i], now) {
                refresh(&mut self.slab[i]);
            }
            if self.expired(&self.slab[i], now) {
                self.remove(i as u32, EndReason::Expired, ended);
            } else {
                visit(&mut self.slab[i]);
            }
        }
    }

    /// Live entries with their slab indexes.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.slab[..self.used]
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state() != State::Free)
            .map(|(i, e)| (i as u32, e))
    }
}

/// Where a lookup's entry probably is: the slab index [`Probe::prefetch_entry`] started
/// loading, for [`Table::find_hinted`] to try before it walks the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint(pub(super) u32);

impl Hint {
    /// No guess: [`Table::find_hinted`] walks the index.
    pub const NONE: Hint = Hint(u32::MAX);

    /// A guess of slab index `i`, right or wrong.
    #[cfg(test)]
    pub(super) fn at(i: u32) -> Hint {
        Hint(i)
    }
}

/// The table's arrays, viewed for a pass over a burst. Each view of a mapping checks its
/// alignment and length; a loop that also stores (the hints) takes the views again for
/// every packet, as the compiler cannot tell the stores leave the table alone: about 14
/// instructions a packet in callgrind (docs/benchmarks.md, 2026-12-01 evening).
#[derive(Debug, Clone, Copy)]
pub struct Probe<'a> {
    index: &'a [u64],
    slab: &'a [Entry],
    mask: usize,
}

impl Probe<'_> {
    /// Starts loading the entry of the first slot tagged `hash` in its home line of the index
    /// (which [`Table::prefetch_index`] loaded), and returns where it is. At a load of one
    /// half, 99.3% of the entries are in their home line, and an entry not prefetched costs
    /// two misses in [`Table::find`]: the next index line, then the entry. With the hint, the
    /// lookup does not read the index again: a dependent load less on its way to the entry
    /// (docs/benchmarks.md).
    #[inline]
    pub fn prefetch_entry(&self, hash: u32) -> Hint {
        for &s in rest_of_line(self.index, home(hash, self.mask)) {
            if s == 0 {
                return Hint::NONE;
            }
            if (s >> 32) as u32 == hash {
                let i = s as u32 - 1;
                if let Some(e) = self.slab.get(i as usize) {
                    prefetch_line(e);
                }
                return Hint(i);
            }
        }
        Hint::NONE
    }
}
