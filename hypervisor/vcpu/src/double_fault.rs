//! What happens to an event queued for the next entry when an exit handler raises an exception
//! on top of it.
//!
//! After an exit that interrupted the delivery of an event (an interrupt, NMI or exception),
//! the backends queue that event again for the next entry. If the exit handler then raises an
//! exception, the exception was caused by that delivery (an exit during event delivery is never
//! one for an instruction the handler emulates), so it combines with the queued event as the
//! processor combines an exception raised while delivering another (Intel SDM Vol. 3A §6.15,
//! "Interrupt 8—Double Fault Exception", Tables 6-4 and 6-5; AMD APM Vol. 2 §8.2.9): usually the
//! new exception simply replaces the queued event (the processor handles them serially: a
//! faulting instruction re-executes, an interrupt whose delivery faulted is lost, as on bare
//! metal); two contributory or page-fault-class exceptions make a #DF; anything of those
//! classes on top of a #DF shuts the guest down.

/// The class of an exception vector (SDM Vol. 3A Table 6-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    /// #DB, NMI, #BP, #OF, #BR, #UD, #NM, #MF, #AC, #MC, #XM, and every other vector.
    Benign,
    /// #DE (0), #TS (10), #NP (11), #SS (12), #GP (13), #CP (21).
    Contributory,
    /// #PF (14) and #VE (20).
    PageFault,
    /// #DF (8).
    DoubleFault,
}

impl ExceptionClass {
    /// The class of exception `vector`.
    pub const fn of(vector: u8) -> Self {
        match vector {
            0 | 10 | 11 | 12 | 13 | 21 => Self::Contributory,
            14 | 20 => Self::PageFault,
            8 => Self::DoubleFault,
            _ => Self::Benign,
        }
    }
}

/// #DF's vector (its error code is always 0).
pub const DOUBLE_FAULT: u8 = 8;

/// What to queue when exception `new` is raised while an event is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combined {
    /// Queue `new` in place of the queued event (or nothing was queued).
    New,
    /// Queue #DF with error code 0.
    DoubleFault,
    /// The guest shuts down (triple fault); nothing can be injected.
    Shutdown,
}

/// Combines `new` with the queued event; `queued_exception` is the vector of the queued event
/// when it is a hardware exception, `None` when nothing is queued or the queued event is an
/// external interrupt, an NMI or a software interrupt or exception (INT n, INT3, INTO, INT1),
/// all of which count as benign (SDM Vol. 3A Table 6-5).
pub const fn combine(queued_exception: Option<u8>, new: u8) -> Combined {
    let Some(first) = queued_exception else {
        return Combined::New;
    };
    use ExceptionClass::*;
    match (ExceptionClass::of(first), ExceptionClass::of(new)) {
        (Contributory, Contributory) | (PageFault, Contributory | PageFault) => {
            Combined::DoubleFault
        }
        (DoubleFault, Contributory | PageFault) => Combined::Shutdown,
        _ => Combined::New,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_table_6_4() {
        for v in [0, 10, 11, 12, 13, 21] {
            assert_eq!(ExceptionClass::of(v), ExceptionClass::Contributory, "{v}");
        }
        assert_eq!(ExceptionClass::of(14), ExceptionClass::PageFault);
        assert_eq!(ExceptionClass::of(20), ExceptionClass::PageFault);
        assert_eq!(ExceptionClass::of(8), ExceptionClass::DoubleFault);
        for v in [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 32, 255] {
            assert_eq!(ExceptionClass::of(v), ExceptionClass::Benign, "{v}");
        }
    }

    #[test]
    fn combinations_follow_table_6_5() {
        // Nothing queued, or an interrupt/NMI/software event queued: the new exception.
        assert_eq!(combine(None, 13), Combined::New);
        // Benign first: serially.
        for new in [6, 13, 14, 8] {
            assert_eq!(combine(Some(6), new), Combined::New);
        }
        // Contributory first.
        assert_eq!(combine(Some(13), 6), Combined::New);
        assert_eq!(combine(Some(13), 11), Combined::DoubleFault);
        assert_eq!(combine(Some(0), 13), Combined::DoubleFault);
        assert_eq!(combine(Some(13), 14), Combined::New);
        // Page fault first.
        assert_eq!(combine(Some(14), 6), Combined::New);
        assert_eq!(combine(Some(14), 13), Combined::DoubleFault);
        assert_eq!(combine(Some(14), 14), Combined::DoubleFault);
        // Double fault first.
        assert_eq!(combine(Some(8), 6), Combined::New);
        assert_eq!(combine(Some(8), 13), Combined::Shutdown);
        assert_eq!(combine(Some(8), 14), Combined::Shutdown);
    }
}
