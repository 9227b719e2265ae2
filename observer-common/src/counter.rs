//! Per-CPU counters: every packet a hook sees and every socket tracepoint call ends in exactly one outcome counter.

/// Name of the single-entry `PerCpuArray<CounterValues>` map holding the counters.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Index of a counter in the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Frames seen by the TC ingress program.
    SeenTcIngress = 0,
    /// Frames seen by the TC egress program.
    SeenTcEgress,
    /// Frames seen by the XDP program.
    SeenXdp,
    /// Records submitted to the ring buffer.
    Emitted,
    /// Records lost because the ring buffer was full.
    RingFull,
    /// Valid TCP or ARP frames left out by the `--port`/`--host` filter.
    Filtered,
    /// TCP segments left out by control-only mode.
    ControlSuppressed,
    /// Data segments folded into their flow's counters (`FOLDED`) while the packet ring was above its
    /// high-water mark.
    Folded,
    /// Frames that are neither TCP over IPv4/IPv6 nor ARP (ignored, not malformed).
    NotTcpOrArp,
    /// ARP for other hardware or protocol types (ignored, not malformed).
    ArpUnsupported,
    /// IPv4 or IPv6 fragments other than the first (skipped: no TCP header in them).
    NonFirstFragment,
    /// Malformed: a header is cut short by the end of the frame or of the IP payload.
    Truncated,
    /// Malformed: IPv4 IHL below 5, or a version field that does not match the EtherType.
    BadIpHeader,
    /// Malformed: IPv4 total length shorter than its header.
    BadIpLength,
    /// Malformed: TCP data offset below 5 or past the end of the segment.
    BadDataOffset,
    /// Malformed: a TCP option length below 2, or wrong for its kind (MSS 4, WS 3, SACK_PERM 2, TS 10, SACK 2+8n).
    BadOptionLength,
    /// Malformed: a TCP option runs past the end of the header.
    OptionOverrun,
    /// Malformed: more than two VLAN tags.
    TooManyVlanTags,
    /// Malformed: more than six IPv6 extension headers.
    TooManyExtHeaders,
    /// Socket programs: `inet_sock_set_state` calls.
    SockSeenState,
    /// Socket programs: `tcp_retransmit_synack` calls.
    SockSeenRetransmitSynack,
    /// Socket programs: `tcp_retransmit_skb` calls.
    SockSeenRetransmitSkb,
    /// Socket programs: `tcp_send_reset` calls.
    SockSeenSendReset,
    /// Socket programs: `tcp_receive_reset` calls.
    SockSeenReceiveReset,
    /// Socket programs: `tcp_destroy_sock` calls.
    SockSeenDestroy,
    /// Socket programs: `sock_rcvqueue_full` calls.
    SockSeenRcvqFull,
    /// Socket programs: `kfree_skb` calls (every dropped skb, TCP or not).
    SockSeenDrop,
    /// Socket events submitted to the ring buffer.
    SockEmitted,
    /// Socket events lost because the ring buffer was full.
    SockRingFull,
    /// Socket events of another network namespace (or of none that could be told), left out.
    SockOtherNetns,
    /// Socket events on sockets or skbs that are not TCP over IPv4/IPv6, left out.
    SockNotTcp,
    /// Socket events left out because a kernel read (bpf_probe_read_kernel) failed or the offsets were not set.
    SockUnreadable,
}

/// Number of counters.
pub const COUNTER_COUNT: u32 = Counter::SockUnreadable as u32 + 1;

/// One CPU's counters, indexed by [`Counter`]: one map lookup serves every increment of a packet.
pub type CounterValues = [u64; COUNTER_COUNT as usize];

impl Counter {
    /// Every counter in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::SeenTcIngress,
        Counter::SeenTcEgress,
        Counter::SeenXdp,
        Counter::Emitted,
        Counter::RingFull,
        Counter::Filtered,
        Counter::ControlSuppressed,
        Counter::Folded,
        Counter::NotTcpOrArp,
        Counter::ArpUnsupported,
        Counter::NonFirstFragment,
        Counter::Truncated,
        Counter::BadIpHeader,
        Counter::BadIpLength,
        Counter::BadDataOffset,
        Counter::BadOptionLength,
        Counter::OptionOverrun,
        Counter::TooManyVlanTags,
        Counter::TooManyExtHeaders,
        Counter::SockSeenState,
        Counter::SockSeenRetransmitSynack,
        Counter::SockSeenRetransmitSkb,
        Counter::SockSeenSendReset,
        Counter::SockSeenReceiveReset,
        Counter::SockSeenDestroy,
        Counter::SockSeenRcvqFull,
        Counter::SockSeenDrop,
        Counter::SockEmitted,
        Counter::SockRingFull,
        Counter::SockOtherNetns,
        Counter::SockNotTcp,
        Counter::SockUnreadable,
    ];

    /// Stable snake_case name, used in the exit report and the JSON output.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SeenTcIngress => "seen_tc_ingress",
            Counter::SeenTcEgress => "seen_tc_egress",
            Counter::SeenXdp => "seen_xdp",
            Counter::Emitted => "records_emitted",
            Counter::RingFull => "records_dropped_ring_full",
            Counter::Filtered => "filtered",
            Counter::ControlSuppressed => "control_only_suppressed",
            Counter::Folded => "folded",
            Counter::NotTcpOrArp => "not_tcp_or_arp",
            Counter::ArpUnsupported => "arp_unsupported",
            Counter::NonFirstFragment => "non_first_fragment",
            Counter::Truncated => "malformed_truncated",
            Counter::BadIpHeader => "malformed_bad_ip_header",
            Counter::BadIpLength => "malformed_bad_ip_length",
            Counter::BadDataOffset => "malformed_bad_data_offset",
            Counter::BadOptionLength => "malformed_bad_option_length",
            Counter::OptionOverrun => "malformed_option_overrun",
            Counter::TooManyVlanTags => "malformed_too_many_vlan_tags",
            Counter::TooManyExtHeaders => "malformed_too_many_ext_headers",
            Counter::SockSeenState => "sock_seen_state",
            Counter::SockSeenRetransmitSynack => "sock_seen_retransmit_synack",
            Counter::SockSeenRetransmitSkb => "sock_seen_retransmit_skb",
            Counter::SockSeenSendReset => "sock_seen_send_reset",
            Counter::SockSeenReceiveReset => "sock_seen_receive_reset",
            Counter::SockSeenDestroy => "sock_seen_destroy",
            Counter::SockSeenRcvqFull => "sock_seen_rcvq_full",
            Counter::SockSeenDrop => "sock_seen_drop",
            Counter::SockEmitted => "sock_events_emitted",
            Counter::SockRingFull => "sock_events_dropped_ring_full",
            Counter::SockOtherNetns => "sock_other_netns",
            Counter::SockNotTcp => "sock_not_tcp",
            Counter::SockUnreadable => "sock_unreadable",
        }
    }

    /// Whether this counter is a malformed-packet class.
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Counter::Truncated
                | Counter::BadIpHeader
                | Counter::BadIpLength
                | Counter::BadDataOffset
                | Counter::BadOptionLength
                | Counter::OptionOverrun
                | Counter::TooManyVlanTags
                | Counter::TooManyExtHeaders
        )
    }
}

const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};
