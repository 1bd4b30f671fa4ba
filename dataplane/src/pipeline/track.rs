//! A packet's way through conntrack and the policy: a tracked flow's packet moves its entry's
//! state (after a reclassification if the policy changed), an untracked flow's first packet
//! asks the policy and opens an entry, and every drop is counted and aggregated for the flow
//! log.

use margay_config::policy::Verdict;
use margay_rulecompiler::policy::Flow;
use margay_rulecompiler::policy::compile::Verdicts;

use super::{Lookup, Pipeline};
use crate::conntrack::{Advance, EndReason, Entry, State, flags};
use crate::counters::Drop;
use crate::flowlog::{DropKey, Reason};
use crate::forward::Resolved;
use crate::wire::{self, IcmpKind, PROTO_ICMP, Packet};

impl Pipeline {
    /// An ICMP error: allowed exactly when the flow it quotes is tracked (and still allowed).
    pub(super) fn related(&mut self, now: u64, p: &Packet, l: &Lookup, len: usize) -> Result<(), Drop> {
        match self.table.find_hinted(&l.key, l.hash, l.hint) {
            Some(i) => self.revalidate(now, i),
            None => Err(self.drop_logged(now, p, Drop::Invalid, None, len)),
        }
    }

    /// Classifies a tracked flow again when it was allowed under an older policy; cuts it
    /// when the policy in force denies it.
    #[inline(always)]
    fn revalidate(&mut self, now: u64, i: u32) -> Result<(), Drop> {
        if self.table.get(i).epoch == self.acct.policy.epoch {
            return Ok(());
        }
        self.reclassify(now, i)
    }

    /// [`Pipeline::revalidate`] of a flow from an older epoch.
    #[inline(never)]
    fn reclassify(&mut self, now: u64, i: u32) -> Result<(), Drop> {
        let e = self.table.get(i);
        self.acct.counters.reclassified += 1;
        let d = self.acct.policy.compiled.decide(&flow_of_entry(e));
        if d.verdict == Verdict::Deny {
            let acct = &mut self.acct;
            self.table.remove(i, EndReason::Removed, &mut |e, _| {
                acct.end(e, now, Reason::Drop(Drop::PolicyChanged), Verdict::Deny)
            });
            acct.counters.drops[Drop::PolicyChanged.index()] += 1;
            return Err(Drop::PolicyChanged);
        }
        let epoch = self.acct.policy.epoch;
        let e = self.table.get_mut(i);
        store_decision(e, &d, epoch);
        Ok(())
    }

    pub(super) fn track(
        &mut self,
        now: u64,
        p: &Packet,
        l: &Lookup,
        len: usize,
        hop: &Resolved,
    ) -> Result<(), Drop> {
        if p.icmp_kind() == Some(IcmpKind::Other) {
            return self.stateless(now, p, len);
        }
        let Some(i) = self.table.find_hinted(&l.key, l.hash, l.hint) else {
            return self.open(now, p, l, len);
        };
        // `revalidate`, with the entry looked up once on its common path.
        let mut e = self.table.get_mut(i);
        if e.epoch != self.acct.policy.epoch {
            self.reclassify(now, i)?;
            e = self.table.get_mut(i);
        }
        let from_orig = e.from_orig(l.a_to_b);
        match e.advance(from_orig, p.l4.flags, p.l4.ack, || p.icmp_kind()) {
            Advance::Valid => {}
            Advance::Reopen => {
                let acct = &mut self.acct;
                self.table.remove(i, EndReason::Removed, &mut |e, _| {
                    acct.end(e, now, Reason::Reopened, Verdict::Allow)
                });
                return self.open(now, p, l, len);
            }
            Advance::Invalid => return Err(self.drop_logged(now, p, Drop::Invalid, None, len)),
        }
        // A direction's first packet: the originator's opened the entry; the responder's is
        // the first to set REPLIED.
        let first_of_direction = !from_orig && e.flags & flags::REPLIED == 0;
        if !from_orig {
            e.flags |= flags::REPLIED;
        }
        e.count(from_orig, len, now);
        self.acct.counters.tracked_packets += 1;
        // A direction is offloaded from its second packet on: most short flows (a DNS query
        // and its answer, scans, floods) never send one, and an install costs a syscall.
        if self.acct.fast.is_some() && !first_of_direction {
            self.offer(i, from_orig, p, hop);
        }
        Ok(())
    }

    /// ICMP messages that are neither echo nor errors (router advertisements, timestamps...):
    /// the policy decides each one; nothing is tracked.
    fn stateless(&mut self, now: u64, p: &Packet, len: usize) -> Result<(), Drop> {
        let d = self.acct.classify(&flow_of_packet(p));
        self.log_hit(now, p, &d);
        if d.verdict == Verdict::Deny {
            return Err(self.drop_logged(now, p, Drop::Denied, Some(&d), len));
        }
        Ok(())
    }

    /// A `log` record when a `log` rule matched the new flow of `p` (rate-limited, counted).
    fn log_hit(&mut self, now: u64, p: &Packet, d: &Verdicts) {
        if !d.logged() {
            return;
        }
        let acct = &mut self.acct;
        if acct.log.log(&drop_key(p, Drop::Denied), d, now, acct.policy.epoch) {
            acct.counters.log_records += 1;
        } else {
            acct.counters.log_suppressed += 1;
        }
    }

    /// A packet of an untracked flow: if it may open one and the policy allows it, track it.
    fn open(&mut self, now: u64, p: &Packet, l: &Lookup, len: usize) -> Result<(), Drop> {
        let Some(state) =
            crate::conntrack::opening(p.l4.proto, p.l4.flags, || p.icmp_kind(), self.tcp_pickup)
        else {
            return Err(self.drop_logged(now, p, Drop::Invalid, None, len));
        };
        let d = self.acct.classify(&flow_of_packet(p));
        self.log_hit(now, p, &d);
        if d.verdict == Verdict::Deny {
            return Err(self.drop_logged(now, p, Drop::Denied, Some(&d), len));
        }
        let mut e = Entry::new(l.key, state, now);
        // A picked-up connection's ISN is unknown; its first segment's sequence number is not it.
        e.isn = if state == State::TcpSynSent { p.l4.seq } else { 0 };
        e.flags = if l.a_to_b { flags::ORIG_IS_A } else { 0 };
        store_decision(&mut e, &d, self.acct.policy.epoch);
        let acct = &mut self.acct;
        let inserted = self.table.insert(e, l.hash, now, &mut |old, why| {
            let reason =
                if why == EndReason::Expired { Reason::Expired } else { Reason::Drop(Drop::TableFull) };
            acct.end(old, now, reason, Verdict::Allow);
        });
        if inserted.is_err() {
            return Err(self.drop_logged(now, p, Drop::TableFull, Some(&d), len));
        }
        let acct = &mut self.acct;
        acct.counters.flows_started += 1;
        acct.counters.tcp_picked_up += u64::from(state == State::TcpEstablished);
        acct.counters.tracked_packets += 1;
        acct.log.start(&e, now, len, &acct.versions);
        // Not offloaded: a direction is, from its second packet on (`track`).
        Ok(())
    }

    /// Counts a dropped packet and adds it to the interval's drop aggregates.
    pub(super) fn drop_logged(
        &mut self,
        now: u64,
        p: &Packet,
        d: Drop,
        decision: Option<&Verdicts>,
        len: usize,
    ) -> Drop {
        self.acct.drop(d);
        if !self.acct.log.dropped(drop_key(p, d).with_decision(decision), now, len) {
            self.acct.counters.records_lost += 1;
        }
        d
    }
}

/// The drop-aggregate key of `p` dropped for `d`, without a decision.
fn drop_key(p: &Packet, d: Drop) -> DropKey {
    let (src_port, dst_port) =
        if p.has_ports() || p.icmp_kind().is_some() { (p.l4.sport, p.l4.dport) } else { (0, 0) };
    DropKey {
        proto: p.l4.proto,
        src: p.src,
        src_port,
        dst: p.dst,
        dst_port,
        reason: Reason::Drop(d),
        egress: None,
        ingress: None,
        staged: None,
    }
}

/// What the policy sees of a packet.
fn flow_of_packet(p: &Packet) -> Flow {
    let ports = p.has_ports();
    Flow {
        protocol: p.l4.proto,
        src: p.src,
        dst: p.dst,
        src_port: ports.then_some(p.l4.sport),
        dst_port: ports.then_some(p.l4.dport),
        icmp: p.l4.icmp,
    }
}

/// The flow a tracked entry was opened by, as the policy saw it.
fn flow_of_entry(e: &Entry) -> Flow {
    let ((src, sport), (dst, dport)) = e.endpoints();
    let ports = wire::has_ports(e.key.proto);
    let icmp = match (e.state(), e.key.proto) {
        (State::Icmp, PROTO_ICMP) => Some((8, 0)),
        (State::Icmp, _) => Some((128, 0)),
        _ => None,
    };
    Flow {
        protocol: e.key.proto,
        src,
        dst,
        src_port: ports.then_some(sport),
        dst_port: ports.then_some(dport),
        icmp,
    }
}

/// Records an allow decision in an entry.
fn store_decision(e: &mut Entry, d: &Verdicts, epoch: u32) {
    let keep = flags::ORIG_IS_A | flags::REPLIED | flags::FIN_BY_ORIG;
    let mut f = e.flags & keep;
    if let Some(s) = d.egress {
        f |= flags::EGRESS | if s.tier_default { flags::EGRESS_TIER_DEFAULT } else { 0 };
        e.egress_meta = s.meta;
    }
    if let Some(s) = d.ingress {
        f |= flags::INGRESS | if s.tier_default { flags::INGRESS_TIER_DEFAULT } else { 0 };
        e.ingress_meta = s.meta;
    }
    if let Some(v) = d.staged {
        f |= flags::STAGED | if v == Verdict::Deny { flags::STAGED_DENY } else { 0 };
    }
    if d.logged() {
        f |= flags::LOGGED;
    }
    e.flags = f;
    e.epoch = epoch;
}
