//! atoll's own page tables (the identity map the boot code builds): what splitting a 2 MiB page
//! into 4 KiB pages writes, so a stack's guard page can be unmapped (`entry::unmap_page`).

/// Bytes of a 2 MiB page.
pub const LARGE: u64 = 2 << 20;
/// Present and writable, the flags of every boot mapping below 4 GiB.
pub const PRESENT_WRITABLE: u64 = 0x3;
/// PDE bit 7: this entry maps a 2 MiB page (SDM Vol. 3A Table 4-18).
pub const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical-address bits of a paging-structure entry.
pub const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Why a page could not be unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapError {
    /// Only the boot tables' first 4 GiB are split into 4 KiB pages.
    NotBelow4GiB(u64),
    /// No frame was given for the page table the split needs.
    NoFrame,
}

/// The 4 KiB page-table entries that map the same memory as the 2 MiB page `pde` does
/// (identity, present and writable; SDM Vol. 3A §4.5, Table 4-19).
pub fn split_large_page(pde: u64) -> [u64; 512] {
    let base = pde & ADDRESS & !(LARGE - 1);
    core::array::from_fn(|i| (base + i as u64 * 4096) | PRESENT_WRITABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_maps_the_same_two_mebibytes_page_by_page() {
        let pde = (7 * LARGE) | PAGE_SIZE_BIT | PRESENT_WRITABLE;
        let t = split_large_page(pde);
        assert_eq!(t[0], (7 * LARGE) | PRESENT_WRITABLE);
        assert_eq!(t[1], (7 * LARGE + 4096) | PRESENT_WRITABLE);
        assert_eq!(t[511], (8 * LARGE - 4096) | PRESENT_WRITABLE);
        assert!(
            t.iter().all(|e| e & PAGE_SIZE_BIT == 0),
            "4 KiB entries have no PS bit"
        );
        // Flag bits of the PDE (PS, accessed, dirty) never leak into the address.
        let noisy = pde | 0x60;
        assert_eq!(split_large_page(noisy), t);
    }
}
