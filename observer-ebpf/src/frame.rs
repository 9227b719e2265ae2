//! `Frame` over the kernel's packet contexts.
//!
//! Fixed-size headers in the linear packet data are read directly (a bounds check and a load); a header
//! outside it, such as one in an skb's paged part, goes through the load-bytes helper, which checks at run
//! time. A helper call costs about 30 ns here, so the direct path is what keeps the per-packet cost down.
//! TCP options always go through the helper: one call with a variable length keeps the verifier's view of
//! the option walk to one state. A direct copy word by word, or direct reads of the common fixed lengths,
//! gave it one walk per length and exceeded its 1,000,000-instruction limit.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use observer_common::{
    mem::{copy_from, nonzero_len},
    parse::{Frame, MAX_OPTIONS_LEN, OptionBuf},
    record::{SNAP_LEN, Snap},
};

/// Largest offset read straight from the packet.
const MAX_DIRECT_OFFSET: usize = 255;

/// A packet context: its linear data and its load-bytes helper.
pub trait Context {
    /// Start and end of the linear data.
    fn bounds(&self) -> (usize, usize);
    /// Length of the whole frame.
    fn frame_len(&self) -> usize;
    /// The load-bytes helper: `len` bytes at `offset` into `dst`.
    fn helper_load(&self, offset: usize, dst: *mut u8, len: usize) -> bool;
    /// The VLAN id the stack moved from the frame into metadata.
    fn vlan(&self) -> Option<(u16, u16)>;
}

impl Context for TcContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn helper_load(&self, offset: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: the caller gives `len` writable bytes at `dst`; the helper checks the skb side.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset as u32, dst.cast(), len as u32) == 0 }
    }

    #[inline(always)]
    fn vlan(&self) -> Option<(u16, u16)> {
        let skb = self.skb.skb;
        // SAFETY: skb is the __sk_buff context; these fields are readable by TC programs.
        // vlan_proto holds the kernel's __be16 as loaded: network order.
        unsafe { ((*skb).vlan_present != 0).then(|| ((*skb).vlan_tci as u16, u16::from_be((*skb).vlan_proto as u16))) }
    }
}

impl Context for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn helper_load(&self, offset: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: the caller gives `len` writable bytes at `dst`; the helper checks the buffer side.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, dst.cast(), len as u32) == 0 }
    }

    #[inline(always)]
    fn vlan(&self) -> Option<(u16, u16)> {
        None
    }
}

/// The frame a program parses.
pub struct Packet<'a, C>(pub &'a C);

impl<C: Context> Packet<'_, C> {
    /// Start of `len` bytes at `offset` if they lie in the linear data.
    #[inline(always)]
    fn direct(&self, offset: usize, len: usize) -> Option<usize> {
        let (data, data_end) = self.0.bounds();
        // Verifier: the packet pointer's variable part needs a known maximum.
        if offset > MAX_DIRECT_OFFSET {
            return None;
        }
        // Verifier: black_box keeps the bounds check a packet-pointer compare; otherwise LLVM rewrites it into
        // `offset + len <= data_end - data`, a scalar compare that proves nothing about the pointer read.
        let start = core::hint::black_box(data + offset);
        (start + len <= data_end).then_some(start)
    }
}

impl<C: Context> Frame for Packet<'_, C> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.frame_len()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if let Some(start) = self.direct(offset, N) {
            // SAFETY: [start, start + N) lies inside the linear packet data, checked by `direct`.
            return Some(core::array::from_fn(|i| unsafe {
                core::ptr::read_volatile((start + i) as *const u8)
            }));
        }
        let mut buf = core::mem::MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: the helper wrote all N bytes when it returned success.
        self.0
            .helper_load(offset, buf.as_mut_ptr().cast(), N)
            .then(|| unsafe { buf.assume_init() })
    }

    #[inline(always)]
    fn load_into<const N: usize>(&self, offset: usize, dst: &mut [u8; N]) -> bool {
        if let Some(start) = self.direct(offset, N) {
            // SAFETY: [start, start + N) lies inside the linear packet data, checked by `direct`.
            unsafe { copy_from(start as *const u8, dst) };
            return true;
        }
        self.0.helper_load(offset, dst.as_mut_ptr(), N)
    }

    #[inline(always)]
    fn load_options(&self, offset: usize, buf: &mut OptionBuf, len: usize) -> Option<()> {
        // Verifier: the helper's length register must be provably in 1..=MAX_OPTIONS_LEN.
        let len = nonzero_len(len, MAX_OPTIONS_LEN)?;
        self.0.helper_load(offset, buf.bytes.as_mut_ptr(), len).then_some(())
    }

    #[inline(always)]
    fn load_prefix(&self, snap: &mut Snap, len: usize) -> Option<()> {
        // Verifier: the helper's length register must be provably in 1..=SNAP_LEN.
        let len = nonzero_len(len, SNAP_LEN)?;
        self.0.helper_load(0, snap.bytes.as_mut_ptr(), len).then_some(())
    }

    #[inline(always)]
    fn offloaded_vlan(&self) -> Option<(u16, u16)> {
        self.0.vlan()
    }
}
