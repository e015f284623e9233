//! atoll's IOMMU at boot and while the machine runs: the DMA canaries a machine description may
//! ask for, and (with a DMAR) the VT-d units.

use atoll::machine::frames::FRAME_SIZE;
use atoll::summary::CanaryReport;
use boot::HostPhysAddr;

use super::FRAMES;

/// The byte a canary page holds at `i`: never uniform, never what `edu` or a zeroing writes.
fn canary_byte(i: usize) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(0x3c)
}

/// One page of atoll's image, used only as a canary.
#[repr(C, align(4096))]
struct CanaryPage([u8; 4096]);

/// atoll's own canary page (in its image, so in memory no partition owns).
static mut ATOLL_CANARY: CanaryPage = CanaryPage([0; 4096]);

/// The two canary pages: one of atoll's image, one frame of the pool (atoll's frames).
pub struct Canaries {
    atoll: HostPhysAddr,
    pool: HostPhysAddr,
}

impl Canaries {
    /// Takes a pool frame and fills both pages with the pattern.
    pub fn new() -> Option<Self> {
        let pool = FRAMES.lock().allocate(1, FRAME_SIZE).ok()?.start;
        let atoll = HostPhysAddr::new(core::ptr::addr_of_mut!(ATOLL_CANARY) as u64);
        let c = Self { atoll, pool };
        for page in [c.atoll, c.pool] {
            for i in 0..4096 {
                // SAFETY: `page` is atoll's canary page (a static of 4096 bytes nothing else
                // touches) or a frame just allocated from atoll's pool for good; both are
                // identity-mapped for atoll, and `i` is inside the page.
                unsafe {
                    core::ptr::write_volatile(
                        (page.as_u64() as *mut u8).wrapping_add(i),
                        canary_byte(i),
                    )
                };
            }
        }
        Some(c)
    }

    /// The host's command-line word naming them: `atoll.dma_canaries=ATOLL,POOL`.
    pub fn cmdline_word(&self) -> alloc::string::String {
        alloc::format!(
            "atoll.dma_canaries={:#x},{:#x}",
            self.atoll.as_u64(),
            self.pool.as_u64()
        )
    }

    fn intact(page: HostPhysAddr) -> bool {
        (0..4096).all(|i| {
            // SAFETY: as in `new`: the page is atoll's for good and identity-mapped; a
            // volatile read because a device may have written it behind the compiler's back.
            let b =
                unsafe { core::ptr::read_volatile((page.as_u64() as *const u8).wrapping_add(i)) };
            b == canary_byte(i)
        })
    }

    /// Whether each page still holds the pattern.
    pub fn report(&self) -> CanaryReport {
        CanaryReport {
            atoll_address: alloc::format!("{:#x}", self.atoll.as_u64()),
            atoll_intact: Self::intact(self.atoll),
            pool_address: alloc::format!("{:#x}", self.pool.as_u64()),
            pool_intact: Self::intact(self.pool),
        }
    }
}
