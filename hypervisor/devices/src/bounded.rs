//! Bounded storage and checking for what guests hand atoll on exit paths.
//!
//! An exit handler runs on a core's small stack (64 KiB on the APs) and must not take memory
//! from the heap every core shares (4 MiB, and running out of it panics). So everything a guest
//! can make atoll keep — REPORT results, `ATOLL-GUEST-CHECK {json}` lines, console lines waiting
//! for the serial port — goes into storage whose capacity is fixed when the enclave's run state is
//! created (creation is not an exit path), and guest JSON is checked by an iterative validator
//! with a depth limit instead of being parsed by serde_json's recursive descent. What does not
//! fit is refused and counted, never grown into.
//!
//! The raw bytes are turned into serde values only when the run summary is built, on the BSP
//! after every enclave ended, and by then the validator has proved their nesting shallow.
//!
//! Nothing in this module's exit-path API allocates: [`FixedBuf`], [`validate`], [`members`],
//! [`ReportStore::report`], [`ReportStore::insert`], [`ConsoleQueue::push_line`] and
//! [`lossy_utf8_into`] work in place. Only the constructors (creation) and
//! [`ReportStore::to_map`] (summary time) allocate.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;

/// Deepest nesting of objects and arrays a guest's JSON may use (the ABI's). The deepest report
/// atoll knows (atoll-check's: top object → `compute` → `per_cpu` array → one CPU's object) has
/// 4 levels; 8 leaves room while keeping serde_json's recursion at summary time to a few frames.
pub const MAX_JSON_DEPTH: usize = atoll_abi::MAX_REPORT_DEPTH;

/// Bytes of REPORT results (and console-reported values) one store keeps: keys, values and a
/// 5-byte header per key. Four full hypercall buffers ([`atoll_abi::MAX_HYPERCALL_BUFFER`]), or
/// three plus a full guest-check line; the guest suite reports about 600 bytes and atoll-check
/// about 2–3 KiB.
pub const REPORT_BUDGET: usize = 16 * 1024;

/// Bytes of console lines one vCPU may have waiting for the serial port (each line plus a 2-byte
/// length). Lines only wait while another core holds the port; at 115200 baud the port moves
/// about 11 KiB/s, so 32 KiB is seconds of output, at least seven full-length (4 KiB) lines or
/// hundreds of ordinary ones, and it costs every vCPU only 32 KiB of the shared heap (the queue
/// it replaces could hold 1,024 lines of 4 KiB: the whole heap).
pub const CONSOLE_BUDGET: usize = 32 * 1024;

// ---------------------------------------------------------------------------------------------
// Fixed buffers

/// A byte buffer of `N` bytes that never grows: [`FixedBuf::push`] refuses what does not fit
/// and counts it. Small ones live on the stack (formatting a number); large ones are boxed at
/// creation.
#[derive(Clone)]
pub struct FixedBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    dropped: u64,
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for FixedBuf<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FixedBuf")
            .field("len", &self.len)
            .field("capacity", &N)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl<const N: usize> FixedBuf<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
            dropped: 0,
        }
    }

    /// Appends `data` whole, or nothing (its length is counted as dropped) when it does not
    /// fit: a cut-off value would be worse than a missing one.
    pub fn push(&mut self, data: &[u8]) -> bool {
        match self.bytes.get_mut(self.len..self.len + data.len()) {
            Some(dst) if self.len + data.len() <= N => {
                dst.copy_from_slice(data);
                self.len += data.len();
                true
            }
            _ => {
                self.dropped += data.len() as u64;
                false
            }
        }
    }

    /// The bytes held.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Bytes refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Forgets the contents (not the drop count).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The fixed capacity.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> core::fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.push(s.as_bytes()) {
            Ok(())
        } else {
            Err(core::fmt::Error)
        }
    }
}

/// Writes `bytes` into `out` as text, each invalid UTF-8 sequence replaced by U+FFFD as
/// `String::from_utf8_lossy` does, and returns the text. `out` needs 3 bytes per input byte for
/// the worst case (every byte invalid); what does not fit is cut at a character boundary.
pub fn lossy_utf8_into<'o>(bytes: &[u8], out: &'o mut [u8]) -> &'o str {
    let mut len = 0;
    let mut put = |s: &str, len: &mut usize| -> bool {
        match out.get_mut(*len..*len + s.len()) {
            Some(dst) => {
                dst.copy_from_slice(s.as_bytes());
                *len += s.len();
                true
            }
            None => false,
        }
    };
    'chunks: for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        if !put(valid, &mut len) {
            // Cut at the last character that fits.
            for c in valid.chars() {
                if !put(c.encode_utf8(&mut [0; 4]), &mut len) {
                    break 'chunks;
                }
            }
            break;
        }
        if !chunk.invalid().is_empty() && !put("\u{fffd}", &mut len) {
            break;
        }
    }
    // Only whole characters were copied, so this cannot fail; an empty string if it ever did.
    core::str::from_utf8(&out[..len]).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// The JSON validator

/// Why guest JSON was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Longer than the limit.
    TooLarge,
    /// Objects and arrays nested deeper than the limit.
    TooDeep,
    /// Not JSON (RFC 8259): the byte offset where it went wrong.
    Syntax(usize),
    /// Valid JSON, but not an object where one is needed.
    NotObject,
}

/// Limits for [`validate`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deepest nesting of objects and arrays (a top-level object is depth 1); at most 64.
    pub depth: usize,
    /// Longest input in bytes.
    pub size: usize,
}

impl Limits {
    /// The limits for guest reports: [`MAX_JSON_DEPTH`] and one hypercall buffer or console line.
    pub const GUEST: Limits = Limits {
        depth: MAX_JSON_DEPTH,
        size: crate::uart::LINE_MAX,
    };
}

/// What the validator expects next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value.
    Value,
    /// A value or `]` (just after `[`).
    ValueOrClose,
    /// A key or `}` (just after `{`).
    KeyOrClose,
    /// A key (after a `,` in an object).
    Key,
    /// `:` after a key.
    Colon,
    /// `,` or the container's closing bracket, after a value.
    Next,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Checks that `input` is one complete JSON text (RFC 8259) within `limits`, without recursion:
/// the open containers are a bit stack (1 = object) in a `u64`, so the work is one pass and the
/// stack use is constant whatever the input. Strings must be UTF-8 with valid escapes (a
/// `\u` surrogate must be a proper pair, as serde_json requires); numbers follow the JSON grammar.
pub fn validate(input: &[u8], limits: Limits) -> Result<(), JsonError> {
    if input.len() > limits.size {
        return Err(JsonError::TooLarge);
    }
    let max_depth = limits.depth.min(64);
    let mut stack: u64 = 0; // bit i: container at depth i+1 is an object
    let mut depth = 0usize;
    let mut expect = Expect::Value;
    let mut i = 0usize;
    let at = |i: usize| input.get(i).copied();
    loop {
        while at(i).is_some_and(is_ws) {
            i += 1;
        }
        let Some(b) = at(i) else {
            // The end: fine only after a complete top-level value.
            return if depth == 0 && expect == Expect::Next {
                Ok(())
            } else {
                Err(JsonError::Syntax(i))
            };
        };
        if depth == 0 && expect == Expect::Next {
            return Err(JsonError::Syntax(i)); // something after the value
        }
        let in_object = depth > 0 && stack & (1 << (depth - 1)) != 0;
        match expect {
            Expect::Colon => {
                if b != b':' {
                    return Err(JsonError::Syntax(i));
                }
                i += 1;
                expect = Expect::Value;
            }
            Expect::Next => {
                match (b, in_object) {
                    (b',', true) => expect = Expect::Key,
                    (b',', false) => expect = Expect::Value,
                    (b'}', true) | (b']', false) => {
                        depth -= 1;
                        expect = Expect::Next;
                    }
                    _ => return Err(JsonError::Syntax(i)),
                }
                i += 1;
            }
            Expect::Key | Expect::KeyOrClose => {
                if b == b'}' && expect == Expect::KeyOrClose {
                    depth -= 1;
                    i += 1;
                    expect = Expect::Next;
                } else if b == b'"' {
                    i = string_end(input, i)?;
                    expect = Expect::Colon;
                } else {
                    return Err(JsonError::Syntax(i));
                }
            }
            Expect::Value | Expect::ValueOrClose => {
                if b == b']' && expect == Expect::ValueOrClose {
                    depth -= 1;
                    i += 1;
                    expect = Expect::Next;
                    continue;
                }
                match b {
                    b'{' | b'[' => {
                        if depth >= max_depth {
                            return Err(JsonError::TooDeep);
                        }
                        if b == b'{' {
                            stack |= 1 << depth;
                            expect = Expect::KeyOrClose;
                        } else {
                            stack &= !(1 << depth);
                            expect = Expect::ValueOrClose;
                        }
                        depth += 1;
                        i += 1;
                    }
                    b'"' => {
                        i = string_end(input, i)?;
                        expect = Expect::Next;
                    }
                    b'-' | b'0'..=b'9' => {
                        i = number_end(input, i)?;
                        expect = Expect::Next;
                    }
                    b't' | b'f' | b'n' => {
                        let word: &[u8] = match b {
                            b't' => b"true",
                            b'f' => b"false",
                            _ => b"null",
                        };
                        if input.get(i..i + word.len()) != Some(word) {
                            return Err(JsonError::Syntax(i));
                        }
                        i += word.len();
                        expect = Expect::Next;
                    }
                    _ => return Err(JsonError::Syntax(i)),
                }
            }
        }
    }
}

/// Like [`validate`], and the top-level value must be an object (what REPORT merges).
pub fn validate_object(input: &[u8], limits: Limits) -> Result<(), JsonError> {
    validate(input, limits)?;
    match input.iter().copied().find(|b| !is_ws(*b)) {
        Some(b'{') => Ok(()),
        _ => Err(JsonError::NotObject),
    }
}

fn hex4(input: &[u8], i: usize) -> Option<u16> {
    let digits = input.get(i..i + 4)?;
    let mut v = 0u16;
    for d in digits {
        v = (v << 4) | u16::from((*d as char).to_digit(16)? as u8);
    }
    Some(v)
}

/// The index just past the string starting with the `"` at `start`.
fn string_end(input: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start + 1;
    loop {
        let Some(b) = input.get(i).copied() else {
            return Err(JsonError::Syntax(i));
        };
        match b {
            b'"' => return Ok(i + 1),
            // Control characters must be escaped (RFC 8259 §7).
            0x00..=0x1f => return Err(JsonError::Syntax(i)),
            b'\\' => match input.get(i + 1).copied() {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let unit = hex4(input, i + 2).ok_or(JsonError::Syntax(i))?;
                    i += 6;
                    match unit {
                        // A high surrogate needs a low one right after it.
                        0xd800..=0xdbff => {
                            let low = (input.get(i..i + 2) == Some(b"\\u"))
                                .then(|| hex4(input, i + 2))
                                .flatten();
                            match low {
                                Some(0xdc00..=0xdfff) => i += 6,
                                _ => return Err(JsonError::Syntax(i)),
                            }
                        }
                        0xdc00..=0xdfff => return Err(JsonError::Syntax(i)),
                        _ => {}
                    }
                }
                _ => return Err(JsonError::Syntax(i)),
            },
            0x20..=0x7f => i += 1,
            _ => {
                // A multi-byte UTF-8 character: its length from the lead byte, then checked.
                let len = match b {
                    0xc2..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf4 => 4,
                    _ => return Err(JsonError::Syntax(i)),
                };
                let ch = input.get(i..i + len).ok_or(JsonError::Syntax(i))?;
                if core::str::from_utf8(ch).is_err() {
                    return Err(JsonError::Syntax(i));
                }
                i += len;
            }
        }
    }
}

/// The index just past the number starting at `start`: `-? (0 | [1-9][0-9]*) (. [0-9]+)?
/// ([eE] [+-]? [0-9]+)?` (RFC 8259 §6).
fn number_end(input: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start;
    let digit = |i: usize| input.get(i).is_some_and(u8::is_ascii_digit);
    let digits = |mut i: usize| -> Result<usize, JsonError> {
        if !digit(i) {
            return Err(JsonError::Syntax(i));
        }
        while digit(i) {
            i += 1;
        }
        Ok(i)
    };
    if input.get(i) == Some(&b'-') {
        i += 1;
    }
    match input.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i)?,
        _ => return Err(JsonError::Syntax(i)),
    }
    if input.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(input.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(input.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    // serde_json refuses a number beyond f64's range (1e400); so does the validator, so that
    // everything it accepts parses at summary time. core's parser needs no allocation.
    let finite = core::str::from_utf8(&input[start..i])
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .is_some_and(f64::is_finite);
    if !finite {
        return Err(JsonError::Syntax(start));
    }
    Ok(i)
}

/// The top-level members of a JSON object that [`validate_object`] accepted: each key's raw
/// text (between its quotes, escapes as written) and its value's raw text. No recursion, no
/// allocation; on input that is not a valid object it stops early (never panics).
pub fn members(object: &[u8]) -> Members<'_> {
    let start = object
        .iter()
        .position(|b| !is_ws(*b))
        .filter(|&p| object[p] == b'{')
        .map_or(object.len(), |p| p + 1);
    Members {
        input: object,
        i: start,
    }
}

/// Iterator of [`members`].
pub struct Members<'a> {
    input: &'a [u8],
    i: usize,
}

impl<'a> Members<'a> {
    fn skip_ws(&mut self) {
        while self.input.get(self.i).copied().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    /// The index past the value starting at `start` (already validated: only brackets and
    /// strings need tracking).
    fn value_end(&self, start: usize) -> Option<usize> {
        let input = self.input;
        let mut i = start;
        match *input.get(i)? {
            b'"' => string_end(input, i).ok(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *input.get(i)? {
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        b'"' => {
                            i = string_end(input, i).ok()?;
                            continue;
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                while input
                    .get(i)
                    .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !is_ws(*b))
                {
                    i += 1;
                }
                Some(i)
            }
        }
    }
}

impl<'a> Iterator for Members<'a> {
    /// (key without its quotes, value).
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.skip_ws();
        if self.input.get(self.i) == Some(&b',') {
            self.i += 1;
            self.skip_ws();
        }
        if self.input.get(self.i) != Some(&b'"') {
            self.i = self.input.len();
            return None;
        }
        let key_end = string_end(self.input, self.i).ok()?;
        let key = self.input.get(self.i + 1..key_end - 1)?;
        self.i = key_end;
        self.skip_ws();
        if self.input.get(self.i) != Some(&b':') {
            self.i = self.input.len();
            return None;
        }
        self.i += 1;
        self.skip_ws();
        let start = self.i;
        let end = self.value_end(start)?;
        self.i = end;
        Some((key, self.input.get(start..end)?))
    }
}

// ---------------------------------------------------------------------------------------------
// The report store

/// How a stored value is shown in the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Validated JSON, parsed at summary time.
    Json = 0,
    /// Text, shown as a JSON string (a guest-check line that was not valid JSON).
    Text = 1,
}

/// Why a store refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The JSON was refused (nothing stored, nothing counted as dropped).
    Json(JsonError),
    /// Valid, but the store's budget is spent: nothing stored, the bytes counted as dropped.
    Full,
}

/// Record header: kind (1 byte), key length and value length (2 bytes each, little-endian).
const HEADER: usize = 5;

/// One enclave's results: key → raw value, in a byte budget fixed at creation.
///
/// Records are packed one after another (`kind, key_len, value_len, key, value`), one per key.
/// A key reported again replaces its value: the old record is cut out (the tail moves down) and
/// the new one appended, so the order of records is the order of last change — the summary's
/// map is sorted by key anyway. Keys are compared by their raw text between the quotes, escapes
/// as written (a guest writing one key two ways gets two records; the summary then keeps the
/// later one, as serde_json's map would). A REPORT is all or nothing: when its merged result
/// would not fit, nothing of it is stored and its length is counted in [`Self::dropped`].
pub struct ReportStore {
    data: Box<[u8]>,
    used: usize,
    dropped: u64,
}

impl core::fmt::Debug for ReportStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReportStore")
            .field("used", &self.used)
            .field("capacity", &self.data.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

fn record_len(key: &[u8], value: &[u8]) -> usize {
    HEADER + key.len() + value.len()
}

impl ReportStore {
    /// An empty store of `capacity` bytes (allocated now, never again).
    pub fn new(capacity: usize) -> Self {
        Self {
            data: vec![0u8; capacity].into_boxed_slice(),
            used: 0,
            dropped: 0,
        }
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The budget.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Bytes refused because the budget was spent.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The records: (kind, key, value).
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            data: &self.data[..self.used],
        }
    }

    /// Where the record of `key` is: (offset, length).
    fn find(&self, key: &[u8]) -> Option<(usize, usize)> {
        let mut off = 0;
        for (_, k, v) in self.entries() {
            let len = record_len(k, v);
            if k == key {
                return Some((off, len));
            }
            off += len;
        }
        None
    }

    fn cut(&mut self, off: usize, len: usize) {
        self.data.copy_within(off + len..self.used, off);
        self.used -= len;
    }

    /// Appends a record; the caller checked that it fits.
    fn append(&mut self, kind: ValueKind, key: &[u8], value: &[u8]) {
        let len = record_len(key, value);
        let rec = &mut self.data[self.used..self.used + len];
        rec[0] = kind as u8;
        rec[1..3].copy_from_slice(&(key.len() as u16).to_le_bytes());
        rec[3..5].copy_from_slice(&(value.len() as u16).to_le_bytes());
        rec[HEADER..HEADER + key.len()].copy_from_slice(key);
        rec[HEADER + key.len()..].copy_from_slice(value);
        self.used += len;
    }

    /// Sets `key` (plain text: no quotes or backslashes) to `value`, replacing what it had.
    pub fn insert(&mut self, key: &str, value: &[u8], kind: ValueKind) -> Result<(), StoreError> {
        let key = key.as_bytes();
        let fits_header =
            key.len() <= usize::from(u16::MAX) && value.len() <= usize::from(u16::MAX);
        let old = self.find(key).map_or(0, |(_, len)| len);
        if !fits_header || self.used - old + record_len(key, value) > self.capacity() {
            self.dropped += value.len() as u64;
            return Err(StoreError::Full);
        }
        if let Some((off, len)) = self.find(key) {
            self.cut(off, len);
        }
        self.append(kind, key, value);
        Ok(())
    }

    /// Merges the JSON object `json` (a REPORT's buffer): validated first ([`Limits::GUEST`],
    /// an object), then each top-level key set as by [`Self::insert`] — a key that occurs twice
    /// in `json` takes its last value, as serde_json's map would.
    pub fn report(&mut self, json: &[u8]) -> Result<(), StoreError> {
        validate_object(json, Limits::GUEST).map_err(StoreError::Json)?;
        let last = |idx: usize, key: &[u8]| !members(json).skip(idx + 1).any(|(k, _)| k == key);
        // What the store will hold afterwards, before changing anything.
        let mut after = self.used;
        for (idx, (k, v)) in members(json).enumerate() {
            if !last(idx, k) {
                continue;
            }
            if k.len() > usize::from(u16::MAX) || v.len() > usize::from(u16::MAX) {
                after = usize::MAX;
                break;
            }
            after = after - self.find(k).map_or(0, |(_, len)| len) + record_len(k, v);
        }
        if after > self.capacity() {
            self.dropped += json.len() as u64;
            return Err(StoreError::Full);
        }
        for (idx, (k, v)) in members(json).enumerate() {
            if last(idx, k) {
                if let Some((off, len)) = self.find(k) {
                    self.cut(off, len);
                }
                self.append(ValueKind::Json, k, v);
            }
        }
        Ok(())
    }

    /// The results as the summary shows them. Allocates and runs serde_json: for the summary
    /// only (on the BSP after the enclaves ended), never on an exit path. The values were
    /// validated with [`MAX_JSON_DEPTH`], so serde_json's recursion stays shallow.
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        let text = |b: &[u8]| serde_json::Value::String(String::from_utf8_lossy(b).into_owned());
        let mut map = serde_json::Map::new();
        for (kind, k, v) in self.entries() {
            let mut quoted = alloc::vec::Vec::with_capacity(k.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(k);
            quoted.push(b'"');
            let key = serde_json::from_slice::<String>(&quoted)
                .unwrap_or_else(|_| String::from_utf8_lossy(k).into_owned());
            let value = match kind {
                // Should serde_json still refuse something the validator passed, its text shows.
                ValueKind::Json => serde_json::from_slice(v).unwrap_or_else(|_| text(v)),
                ValueKind::Text => text(v),
            };
            map.insert(key, value);
        }
        map
    }
}

/// Iterator of [`ReportStore::entries`].
pub struct Entries<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = (ValueKind, &'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.data.get(..HEADER)?;
        let kind = if h[0] == ValueKind::Text as u8 {
            ValueKind::Text
        } else {
            ValueKind::Json
        };
        let klen = usize::from(u16::from_le_bytes([h[1], h[2]]));
        let vlen = usize::from(u16::from_le_bytes([h[3], h[4]]));
        let key = self.data.get(HEADER..HEADER + klen)?;
        let value = self.data.get(HEADER + klen..HEADER + klen + vlen)?;
        self.data = &self.data[HEADER + klen + vlen..];
        Some((kind, key, value))
    }
}

// ---------------------------------------------------------------------------------------------
// The console queue

/// Console lines waiting for the serial port, in a byte budget fixed at creation. A line that
/// does not fit is dropped whole and its bytes counted (the lines already queued are older and
/// keep their order; the count is printed when the queue is flushed and goes into the summary).
pub struct ConsoleQueue {
    data: Box<[u8]>,
    /// First byte of the oldest record.
    head: usize,
    /// One past the newest record.
    tail: usize,
    dropped: u64,
}

/// Record header: the line's length (2 bytes, little-endian).
const LINE_HEADER: usize = 2;

impl core::fmt::Debug for ConsoleQueue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConsoleQueue")
            .field("bytes", &(self.tail - self.head))
            .field("capacity", &self.data.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl ConsoleQueue {
    /// An empty queue of `capacity` bytes (allocated now, never again).
    pub fn new(capacity: usize) -> Self {
        Self {
            data: vec![0u8; capacity].into_boxed_slice(),
            head: 0,
            tail: 0,
            dropped: 0,
        }
    }

    /// The budget.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Bytes of lines dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether no line waits.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Queues the line made of `parts` (joined), or drops it whole when it does not fit.
    pub fn push_line(&mut self, parts: &[&str]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let need = LINE_HEADER + len;
        if len > usize::from(u16::MAX) || need > self.capacity() - (self.tail - self.head) {
            self.dropped += len as u64;
            return false;
        }
        if self.tail + need > self.capacity() {
            // Move the waiting lines to the front (only when the end is reached: amortized).
            self.data.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        self.data[self.tail..self.tail + LINE_HEADER].copy_from_slice(&(len as u16).to_le_bytes());
        let mut at = self.tail + LINE_HEADER;
        for p in parts {
            self.data[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        self.tail = at;
        true
    }

    /// The oldest line.
    pub fn front(&self) -> Option<&str> {
        let h = self.data.get(self.head..self.head + LINE_HEADER)?;
        if self.is_empty() {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([h[0], h[1]]));
        let start = self.head + LINE_HEADER;
        // Whole `&str`s went in, so the bytes are UTF-8.
        core::str::from_utf8(self.data.get(start..start + len)?).ok()
    }

    /// Forgets the oldest line.
    pub fn pop_front(&mut self) {
        if let Some(h) = self.data.get(self.head..self.head + LINE_HEADER) {
            if !self.is_empty() {
                let len = usize::from(u16::from_le_bytes([h[0], h[1]]));
                self.head = (self.head + LINE_HEADER + len).min(self.tail);
                if self.head == self.tail {
                    self.head = 0;
                    self.tail = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
