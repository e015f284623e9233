//! A fake atoll for host tests: decodes requests with the ABI like atoll does and keeps a
//! tiny enclave table; tests refuse chosen requests and tamper with replies.

use crate::client::{Channel, Result};
use atoll_abi::control::{
    parse_request, write_reply, Accepted, Blob, ConsoleData, ConsoleRead, ConsoleWrite, CoreList,
    Create, Created, Info, Kind, Load, Record, Refusal, State, Status, Target, WireError, Writer,
    EXIT_KINDS, MAX_MESSAGE,
};
use std::cell::RefCell;
use std::rc::Rc;

/// One enclave of the fake.
#[derive(Clone, Debug)]
pub struct FakeEnclave {
    pub id: u16,
    pub name: String,
    pub state: State,
    pub cores: Vec<u32>,
    pub memory_mib: u64,
    pub description: String,
    pub image_len: u64,
    pub initrd_len: u64,
    pub image: Vec<u8>,
    pub initrd: Vec<u8>,
    pub exits: [u64; EXIT_KINDS.len()],
    /// A bare-metal enclave: no virtual platform, so no per-vCPU counts.
    pub bare: bool,
    pub reason: String,
    /// Console output kept, and how many bytes before it were lost.
    pub console: Vec<u8>,
    pub console_lost: u64,
    /// Console input received.
    pub input: Vec<u8>,
    /// Stops running (state Ended) once its output was read and this much input arrived.
    pub end_after_input: Option<usize>,
}

impl FakeEnclave {
    /// Its exits per vCPU by class: all on the first, as "other" (the rest quiet, as
    /// nohz_full CPUs are); none for a bare-metal enclave.
    pub fn vcpu_exits(&self) -> Vec<[u64; 4]> {
        if self.bare {
            return Vec::new();
        }
        let mut v = vec![[0; 4]; self.cores.len()];
        if let Some(first) = v.first_mut() {
            first[3] = self.exits.iter().sum();
        }
        v
    }

    pub fn new(id: u16, name: &str, cores: &[u32], memory_mib: u64) -> Self {
        FakeEnclave {
            id,
            name: name.into(),
            state: State::Running,
            cores: cores.to_vec(),
            memory_mib,
            description: String::new(),
            image_len: 0,
            initrd_len: 0,
            image: Vec::new(),
            initrd: Vec::new(),
            exits: [0; EXIT_KINDS.len()],
            bare: false,
            reason: String::new(),
            console: Vec::new(),
            console_lost: 0,
            input: Vec::new(),
            end_after_input: None,
        }
    }
}

/// Changes a reply's bytes.
pub type Tamper = Box<dyn FnMut(&mut Vec<u8>)>;

/// The fake's state, shared with the test.
#[derive(Default)]
pub struct Fake {
    pub enclaves: Vec<FakeEnclave>,
    /// Every request: its kind and a summary.
    pub log: Vec<(Kind, String)>,
    pub next_id: u16,
    /// Refuse requests of this kind with this status and reason.
    pub refuse: Option<(Kind, Status, String)>,
    /// Changes every reply's bytes.
    pub tamper: Option<Tamper>,
    /// Cores that are "online in the host".
    pub busy: Vec<u32>,
    /// Most console bytes one ConsoleRead returns, and ConsoleWrite accepts (0: no limit).
    pub read_chunk: usize,
    pub accept_chunk: usize,
    /// Added to every enclave's hlt exits at each Stats request.
    pub hlt_per_stats: u64,
    pub pool_bytes: u64,
}

/// The channel: a handle on the shared fake.
pub struct FakeChannel(pub Rc<RefCell<Fake>>);

fn refuse(w: &mut Writer<'_>, reason: &str) -> std::result::Result<(), WireError> {
    Refusal { reason }.write(w)
}

impl Fake {
    pub fn shared() -> Rc<RefCell<Fake>> {
        Rc::new(RefCell::new(Fake {
            next_id: 1,
            pool_bytes: 1 << 30,
            ..Default::default()
        }))
    }

    pub fn kinds(&self) -> Vec<Kind> {
        self.log.iter().map(|l| l.0).collect()
    }

    fn info(&self) -> Info {
        let used: u64 = self.enclaves.iter().map(|e| e.memory_mib << 20).sum();
        Info {
            pool_bytes: self.pool_bytes,
            pool_free_bytes: self.pool_bytes - used,
            max_enclaves: 8,
            enclaves: self.enclaves.len() as u32,
            staging_bytes: 0,
            requests_ok: self.log.len() as u64,
            requests_refused: 0,
            created: u64::from(self.next_id - 1),
            destroyed: 0,
            slots_busy: 0,
        }
    }

    /// Carries out one request: the status and the payload writer's result in `out`.
    fn handle(&mut self, kind: Kind, p: &[u8], out: &mut [u8], seq: u32) -> usize {
        let k = kind as u16;
        let reply =
            |out: &mut [u8],
             st: Status,
             f: &dyn Fn(&mut Writer<'_>) -> std::result::Result<(), WireError>| {
                write_reply(out, k, seq, st, f).expect("fake reply fits")
            };
        let malformed = |out: &mut [u8], e: WireError| {
            reply(out, Status::Malformed, &|w| refuse(w, &e.to_string()))
        };
        if let Some((rk, st, reason)) = self.refuse.clone() {
            if rk == kind {
                self.log.push((kind, "refused".into()));
                return reply(out, st, &|w| refuse(w, &reason));
            }
        }
        match kind {
            Kind::Info => {
                self.log.push((kind, String::new()));
                let i = self.info();
                reply(out, Status::Ok, &|w| i.write(w))
            }
            Kind::Create => {
                let c = match Create::read(p) {
                    Ok(c) => c,
                    Err(e) => return malformed(out, e),
                };
                self.log.push((kind, c.description.to_string()));
                let t: toml::Table = match c.description.parse() {
                    Ok(t) => t,
                    Err(_) => return reply(out, Status::Invalid, &|w| refuse(w, "not TOML")),
                };
                let name = t
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                let cores: Vec<u32> = t
                    .get("cores")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_integer())
                            .map(|i| i as u32)
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(c) = cores.iter().find(|c| self.busy.contains(c)) {
                    let r = format!("core {c} is online in the host");
                    return reply(out, Status::CoreBusy, &|w| refuse(w, &r));
                }
                let id = self.next_id;
                self.next_id += 1;
                let mut e = FakeEnclave::new(
                    id,
                    &name,
                    &cores,
                    t.get("memory_mib")
                        .and_then(|v| v.as_integer())
                        .unwrap_or(0) as u64,
                );
                e.state = State::Loading;
                e.description = c.description.into();
                e.image_len = c.image_len;
                e.initrd_len = c.initrd_len;
                self.enclaves.push(e);
                reply(out, Status::Ok, &|w| Created { id }.write(w))
            }
            Kind::Load => {
                let l = match Load::read(p) {
                    Ok(l) => l,
                    Err(e) => return malformed(out, e),
                };
                self.log.push((
                    kind,
                    format!("{} {:?} {} {}", l.id, l.blob, l.offset, l.data.len()),
                ));
                let Some(e) = self.enclaves.iter_mut().find(|e| e.id == l.id) else {
                    return reply(out, Status::NotFound, &|w| refuse(w, "no such id"));
                };
                let buf = match l.blob {
                    Blob::Image => &mut e.image,
                    Blob::Initrd => &mut e.initrd,
                };
                if l.offset != buf.len() as u64 {
                    return reply(out, Status::BadImage, &|w| refuse(w, "offset out of order"));
                }
                buf.extend_from_slice(l.data);
                reply(out, Status::Ok, &|_| Ok(()))
            }
            Kind::Start | Kind::Destroy | Kind::List | Kind::Stats => {
                let t = match Target::read(p) {
                    Ok(t) => t,
                    Err(e) => return malformed(out, e),
                };
                self.log.push((kind, format!("{} {}", t.id, t.name)));
                let pos = self.enclaves.iter().position(|e| {
                    if t.name.is_empty() {
                        e.id == t.id
                    } else {
                        e.name == t.name
                    }
                });
                match kind {
                    Kind::Start => {
                        let Some(e) = pos.map(|i| &mut self.enclaves[i]) else {
                            return reply(out, Status::NotFound, &|w| refuse(w, "no such id"));
                        };
                        if e.image.len() as u64 != e.image_len
                            || e.initrd.len() as u64 != e.initrd_len
                        {
                            return reply(out, Status::BadImage, &|w| {
                                refuse(w, "image incomplete")
                            });
                        }
                        e.state = State::Running;
                        reply(out, Status::Ok, &|_| Ok(()))
                    }
                    Kind::Destroy => match pos {
                        Some(i) => {
                            self.enclaves.remove(i);
                            reply(out, Status::Ok, &|_| Ok(()))
                        }
                        None => {
                            let r = format!("no enclave named {:?}", t.name);
                            reply(out, Status::NotFound, &|w| refuse(w, &r))
                        }
                    },
                    _ => {
                        if kind == Kind::Stats {
                            for e in &mut self.enclaves {
                                e.exits[1] += self.hlt_per_stats;
                            }
                        }
                        let list: Vec<&FakeEnclave> = if kind == Kind::Stats && !t.name.is_empty() {
                            match pos {
                                Some(i) => vec![&self.enclaves[i]],
                                None => {
                                    return reply(out, Status::NotFound, &|w| {
                                        refuse(w, "no such enclave")
                                    })
                                }
                            }
                        } else {
                            self.enclaves.iter().collect()
                        };
                        reply(out, Status::Ok, &|w| {
                            w.u32(list.len() as u32)?;
                            for e in &list {
                                Record {
                                    id: e.id,
                                    state: e.state,
                                    name: &e.name,
                                    cores: CoreList::from_bytes(&[]).expect("empty"),
                                    memory_mib: e.memory_mib,
                                    uptime_us: 61_500_000,
                                    exits: e.exits,
                                    vcpu_exits: Default::default(),
                                    interrupts_injected: 7,
                                    ipis_dropped: 3,
                                    console_bytes_dropped: 2,
                                    device_interrupts: 7,
                                    dma_faults: 1,
                                    interrupt_faults: 0,
                                    virtio_chains: 0,
                                    virtio_bad_chains: 0,
                                    virtio_host_errors: 0,
                                    restarts: 1,
                                    reason: &e.reason,
                                }
                                .write_with(
                                    &e.cores,
                                    &e.vcpu_exits(),
                                    w,
                                )?;
                            }
                            Ok(())
                        })
                    }
                }
            }
            Kind::ConsoleRead => {
                let c = match ConsoleRead::read(p) {
                    Ok(c) => c,
                    Err(e) => return malformed(out, e),
                };
                self.log.push((kind, format!("{} {}", c.name, c.cursor)));
                let chunk = self.read_chunk;
                let Some(e) = self.enclaves.iter_mut().find(|e| e.name == c.name) else {
                    return reply(out, Status::NotFound, &|w| refuse(w, "no such enclave"));
                };
                let start = c.cursor.max(e.console_lost);
                let from = (start - e.console_lost) as usize;
                let mut to = e.console.len().min(from + c.max as usize);
                if chunk > 0 {
                    to = to.min(from + chunk).max(from.min(e.console.len()));
                }
                let from = from.min(to);
                let data = e.console[from..to].to_vec();
                if to == e.console.len() && e.end_after_input.is_some_and(|n| e.input.len() >= n) {
                    e.state = State::Ended;
                }
                let running = e.state == State::Running;
                reply(out, Status::Ok, &|w| {
                    ConsoleData {
                        start,
                        next: start + data.len() as u64,
                        running,
                        data: &data,
                    }
                    .write(w)
                })
            }
            Kind::ConsoleWrite => {
                let c = match ConsoleWrite::read(p) {
                    Ok(c) => c,
                    Err(e) => return malformed(out, e),
                };
                self.log
                    .push((kind, String::from_utf8_lossy(c.data).into()));
                let chunk = self.accept_chunk;
                let Some(e) = self.enclaves.iter_mut().find(|e| e.name == c.name) else {
                    return reply(out, Status::NotFound, &|w| refuse(w, "no such enclave"));
                };
                let n = if chunk > 0 {
                    c.data.len().min(chunk)
                } else {
                    c.data.len()
                };
                e.input.extend_from_slice(&c.data[..n]);
                reply(out, Status::Ok, &|w| Accepted { bytes: n as u32 }.write(w))
            }
        }
    }
}

impl Channel for FakeChannel {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        let mut f = self.0.borrow_mut();
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = match parse_request(request) {
            Ok(r) => f.handle(r.kind, r.payload, &mut out, r.seq),
            Err((seq, kind, e)) => {
                let st = match e {
                    WireError::Kind(_) => Status::UnknownKind,
                    WireError::Version(_) => Status::Version,
                    _ => Status::Malformed,
                };
                write_reply(&mut out, kind, seq, st, |w| refuse(w, &e.to_string())).expect("fits")
            }
        };
        out.truncate(n);
        if let Some(t) = f.tamper.as_mut() {
            t(&mut out);
        }
        Ok(out)
    }
}
