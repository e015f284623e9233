//! Test doubles: an MSR table (with the Bochs capability values from the fixture file) and a
//! VMCS held in a map.

use crate::caps::MsrReader;
use crate::error::VmFail;
use crate::fields::{Field, VmcsAccess};
use crate::msr::Msr;
use std::collections::HashMap;

/// MSRs from a table; absent ones read as `None`.
#[derive(Clone, Debug, Default)]
pub struct MsrTable(HashMap<u32, u64>);

impl MsrTable {
    pub fn new(entries: &[(u32, u64)]) -> Self {
        Self(entries.iter().copied().collect())
    }

    pub fn set(&mut self, msr: u32, value: u64) {
        self.0.insert(msr, value);
    }

    pub fn remove(&mut self, msr: u32) {
        self.0.remove(&msr);
    }
}

impl MsrReader for MsrTable {
    fn read(&mut self, msr: Msr) -> Option<u64> {
        self.0.get(&msr.0).copied()
    }
}

/// The capability MSRs atoll read in Bochs 2.7 (`corei7_skylake_x`), from
/// `tests/fixtures/vmx/bochs-corei7_skylake_x.msr`.
pub fn bochs() -> MsrTable {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/vmx/bochs-corei7_skylake_x.msr"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
    let mut table = MsrTable::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(index), Some(value), None) = (words.next(), words.next(), words.next()) else {
            panic!("{path}: malformed line {line:?}");
        };
        let (Ok(index), Ok(value)) = (hex(index), hex(value)) else {
            panic!("{path}: malformed line {line:?}");
        };
        table.set(index as u32, value);
    }
    table
}

/// A VMCS as a map from encoding to value; every field writes successfully. Absent fields
/// read as 0, or, in a [`FakeVmcs::strict`] one, fail as VMREAD of a field the processor lacks
/// does (VMfailValid 12): exit translation is tested that way, so a test sees every field it
/// reads and what a failed read does.
#[derive(Clone, Debug, Default)]
pub struct FakeVmcs {
    fields: HashMap<u32, u64>,
    strict: bool,
}

impl FakeVmcs {
    /// A VMCS whose absent fields fail to read.
    pub fn strict() -> Self {
        Self {
            fields: HashMap::new(),
            strict: true,
        }
    }

    pub fn get(&self, encoding: u32) -> Option<u64> {
        self.fields.get(&encoding).copied()
    }

    /// Sets `field` (as the processor does on a VM exit).
    pub fn set(&mut self, field: impl Into<Field>, value: u64) -> &mut Self {
        self.fields.insert(field.into().encoding(), value);
        self
    }
}

impl VmcsAccess for FakeVmcs {
    fn read(&mut self, field: Field) -> Result<u64, VmFail> {
        match self.get(field.encoding()) {
            Some(v) => Ok(v),
            None if self.strict => Err(VmFail::Valid(
                crate::error::VmInstructionError::UnsupportedVmcsComponent,
            )),
            None => Ok(0),
        }
    }

    fn write(&mut self, field: Field, value: u64) -> Result<(), VmFail> {
        self.fields.insert(field.encoding(), value);
        Ok(())
    }
}

#[test]
fn the_fixture_has_every_capability_msr() {
    let mut t = bochs();
    for index in [0x3a].into_iter().chain(0x480..=0x490) {
        assert!(t.read(Msr(index)).is_some(), "{index:#x}");
    }
    assert_eq!(t.read(Msr(0x48e)), Some(0xf7f9_fffe_0400_6172));
}
