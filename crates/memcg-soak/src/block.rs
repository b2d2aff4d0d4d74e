//! The tracked objects: raw blocks of the global allocator (fallible, so
//! a refusal under `OomPolicy::Fail` or in a fallible region is an outcome,
//! not an abort), and what each allocator charges for one.

use std::alloc::Layout;
use std::ptr::NonNull;

/// Which global allocator the binary was built with (chosen at compile
/// time: one binary each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `memcg::MemcgAlloc<System>`: each block charged its size plus
    /// the 8-byte trailer.
    Alloc,
    /// `memcg::MemcgMimalloc`: each block charged its size (at
    /// least 1).
    Heaps,
}

impl Flavor {
    /// The name `--allocator` and the summary use.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Alloc => "alloc",
            Flavor::Heaps => "heaps",
        }
    }

    /// Bytes the allocator charges for a block of `size_bytes` (any
    /// alignment): `crates/memcg/tests/alloc_basic.rs` and `alloc_heaps.rs`
    /// use the same formulas.
    pub fn charged_bytes(self, size_bytes: usize) -> u64 {
        match self {
            Flavor::Alloc => (size_bytes + memcg::TRAILER_BYTES) as u64,
            Flavor::Heaps => size_bytes.max(1) as u64,
        }
    }
}

/// One block of the global allocator, freed on drop (on whichever thread
/// drops it).
#[derive(Debug)]
pub struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Block` owns its allocation exclusively (like a `Box<[u8]>`);
// the global allocator may free it from any thread.
unsafe impl Send for Block {}

impl Block {
    /// Allocates `size_bytes` (> 0) aligned to `align` (a power of two);
    /// `None` when the allocator refuses (returns null).
    pub fn alloc(size_bytes: usize, align: usize, zeroed: bool) -> Option<Block> {
        let layout = Layout::from_size_align(size_bytes.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe {
            if zeroed {
                std::alloc::alloc_zeroed(layout)
            } else {
                std::alloc::alloc(layout)
            }
        };
        let ptr = NonNull::new(p)?;
        let b = Block { ptr, layout };
        b.touch();
        Some(b)
    }

    /// The caller's size of the block.
    pub fn size_bytes(&self) -> usize {
        self.layout.size()
    }

    /// Resizes the block with the allocator's `realloc`; `false` (and the
    /// block unchanged) when the allocator refuses.
    pub fn realloc(&mut self, new_size_bytes: usize) -> bool {
        let new_size_bytes = new_size_bytes.max(1);
        let Ok(new_layout) = Layout::from_size_align(new_size_bytes, self.layout.align()) else {
            return false;
        };
        // SAFETY:
        // - `ptr` was allocated by the global allocator with `layout`;
        // - `new_size_bytes` is non-zero and, rounded up to the alignment,
        //   fits `isize` (checked by `Layout::from_size_align`).
        let p = unsafe { std::alloc::realloc(self.ptr.as_ptr(), self.layout, new_size_bytes) };
        match NonNull::new(p) {
            Some(ptr) => {
                self.ptr = ptr;
                self.layout = new_layout;
                self.touch();
                true
            }
            None => false,
        }
    }

    /// Writes the first and last byte, so the allocation is used (the
    /// optimizer may not drop it) and the pages are really there.
    fn touch(&self) {
        let p = std::hint::black_box(self.ptr.as_ptr());
        // SAFETY: both offsets are inside the block of `layout.size() >= 1`
        // bytes this `Block` owns.
        unsafe {
            p.write_volatile(0xa5);
            p.add(self.layout.size() - 1).write_volatile(0x5a);
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by the global allocator with `layout`
        // and is freed once, here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A tracked object: a block and the group the soak says it is charged to
/// (a model id; a removed group's objects belong to its nearest live
/// ancestor, see `model::Model::resolve`).
#[derive(Debug)]
pub struct Obj {
    /// The memory.
    pub block: Block,
    /// The model id of the group charged when it was allocated.
    pub owner: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charged_bytes_are_the_size_plus_the_trailer_for_alloc_only() {
        assert_eq!(Flavor::Alloc.charged_bytes(1), 9);
        assert_eq!(Flavor::Alloc.charged_bytes(16), 24);
        assert_eq!(Flavor::Heaps.charged_bytes(1), 1);
        assert_eq!(Flavor::Heaps.charged_bytes(17), 17);
    }

    #[test]
    fn block_realloc_keeps_alignment() {
        let mut b = Block::alloc(100, 64, false).unwrap();
        assert!(b.realloc(5000));
        assert_eq!(b.ptr.as_ptr() as usize % 64, 0);
        assert_eq!(b.size_bytes(), 5000);
    }
}
