//! Clearing and comparing memory in ways the BPF verifier can afford.
//!
//! Verifier: LLVM turns large or unaligned clears, copies and comparisons into memset, memmove and memcmp
//! calls, which bpf-linker supplies as byte loops; the verifier then walks every byte on every path, which
//! exceeded its 1,000,000-instruction limit. Volatile word stores and integer compares stay inline.

use core::mem::{align_of, size_of};

/// Types that are plain data, 8-byte aligned and a whole number of 8-byte words long.
///
/// # Safety
/// Every bit pattern of zeros must be a valid value, `align_of` must be at least 8 and `size_of` a multiple of 8.
pub unsafe trait Words: Sized {}

/// Sets every byte of `t` to zero with one store per 8-byte word.
#[inline(always)]
pub fn clear<T: Words>(t: &mut T) {
    const { assert!(align_of::<T>() >= 8 && size_of::<T>().is_multiple_of(8)) };
    let p = (t as *mut T).cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: `T: Words` makes word `i` in bounds, aligned, and zero a valid value.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Whether two 16-byte addresses are equal, compared as two words.
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    as_u128(a) == as_u128(b)
}

/// A 16-byte address as a big-endian integer, for ordering.
#[inline(always)]
pub fn as_u128(a: &[u8; 16]) -> u128 {
    u128::from_be_bytes(*a)
}

/// Copies `N` bytes from `src`, one volatile byte load each, so no memmove call is emitted.
///
/// # Safety
/// `src` must be valid for reads of `N` bytes.
#[inline(always)]
pub unsafe fn copy_from<const N: usize>(src: *const u8, dst: &mut [u8; N]) {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller guarantees N readable bytes at src.
        dst[i] = unsafe { core::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// `len` when it lies in `1..=max`, in a form that every supported verifier can follow to a helper call.
///
/// Verifier: before Linux 6.8 the not-taken side of `len == 0` (what `len < 1` compiles to) teaches the
/// verifier nothing, so a helper given `len` after `if len == 0 || len > max` could still get 0 as far as
/// 6.1 knew ("invalid access to map value ... size=0"). Testing an opaque `len - 1` against `max` and adding 1
/// back gives a register in `1..=max`.
#[inline(always)]
pub fn nonzero_len(len: usize, max: usize) -> Option<usize> {
    let below = core::hint::black_box(len.wrapping_sub(1));
    if below >= max {
        return None;
    }
    Some(below + 1)
}
