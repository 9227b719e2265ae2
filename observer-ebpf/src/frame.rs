//! `Frame` over the kernel's packet contexts, reading through the load-bytes helpers.
//!
//! The helpers bounds-check at run time, so the parser needs no direct packet-pointer checks; the only
//! verifier obligation left is that each length is a constant or provably within the destination.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use observer_common::parse::{Frame, MAX_OPTIONS_LEN, OptionBuf};

/// A TC program's skb.
pub struct TcFrame<'a>(pub &'a TcContext);

/// An XDP program's buffer.
pub struct XdpFrame<'a>(pub &'a XdpContext);

impl Frame for TcFrame<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: buf is N writable bytes; the helper checks offset and length against the skb.
        let ret =
            unsafe { bpf_skb_load_bytes(self.0.skb.skb.cast(), offset as u32, buf.as_mut_ptr().cast(), N as u32) };
        (ret == 0).then_some(buf)
    }

    #[inline(always)]
    fn load_options(&self, offset: usize, buf: &mut OptionBuf, len: usize) -> Option<()> {
        // Verifier: the length register must be provably in 1..=MAX_OPTIONS_LEN at the call.
        if len == 0 || len > MAX_OPTIONS_LEN {
            return None;
        }
        // SAFETY: buf holds more than MAX_OPTIONS_LEN >= len bytes; the helper checks the skb side.
        let ret = unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb.cast(),
                offset as u32,
                buf.as_mut_ptr().cast(),
                len as u32,
            )
        };
        (ret == 0).then_some(())
    }

    #[inline(always)]
    fn offloaded_vlan(&self) -> Option<u16> {
        let skb = self.0.skb.skb;
        // SAFETY: skb is the __sk_buff context; these fields are readable by TC programs.
        unsafe { ((*skb).vlan_present != 0).then(|| (*skb).vlan_tci as u16) }
    }
}

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: buf is N writable bytes; the helper checks offset and length against the buffer.
        let ret = unsafe { bpf_xdp_load_bytes(self.0.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32) };
        (ret == 0).then_some(buf)
    }

    #[inline(always)]
    fn load_options(&self, offset: usize, buf: &mut OptionBuf, len: usize) -> Option<()> {
        // Verifier: the length register must be provably in 1..=MAX_OPTIONS_LEN at the call.
        if len == 0 || len > MAX_OPTIONS_LEN {
            return None;
        }
        // SAFETY: buf holds more than MAX_OPTIONS_LEN >= len bytes; the helper checks the buffer side.
        let ret = unsafe { bpf_xdp_load_bytes(self.0.ctx, offset as u32, buf.as_mut_ptr().cast(), len as u32) };
        (ret == 0).then_some(())
    }
}
