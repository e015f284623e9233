//! The subcommands above the [`Client`]: each writes its result to `out`, notes to `err`.

use crate::client::{decode, Client, Error, Result};
use crate::cpus::Root;
use crate::enclave::{self, cores_text, table, uptime_text};
use crate::stats::{self, StatsDoc};
use atoll_abi::control::{Blob, Create, Created, Kind, Load, Target, MAX_DESCRIPTION};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a description file says that the CLI itself needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// The text atoll gets: one enclave as a single table.
    pub text: String,
    /// Its name (for messages).
    pub name: String,
    /// Its cores (APIC ids).
    pub cores: Vec<u32>,
    /// The kernel or image file, resolved.
    pub image: PathBuf,
    /// The initrd file, resolved.
    pub initrd: Option<PathBuf>,
    /// The PCI functions it passes through (`devices`, `vf`), unresolved.
    pub devices: Vec<crate::passthrough::DeviceRef>,
    /// How many `[[enclave.virtio]]` devices it has (atoll validates them; the CLI only
    /// starts `atoll-channeld` when there are any).
    pub virtio: usize,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: {what}", path.display()))
}

impl Description {
    /// Reads a description: a top-level table, or a file with exactly one `[[enclave]]`.
    /// Relative `image`/`initrd` paths are taken from `dir` (the file's directory).
    pub fn parse(path: &Path, text: &str, dir: &Path) -> Result<Description> {
        let top: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(path, e.message().trim()))?;
        let (table, text) =
            match top.get("enclave") {
                None => (top.clone(), text.to_string()),
                Some(toml::Value::Array(a)) if top.len() == 1 => match a.as_slice() {
                    [toml::Value::Table(t)] => {
                        let s = toml::to_string(t).map_err(|e| bad(path, e))?;
                        (t.clone(), s)
                    }
                    _ => {
                        return Err(bad(
                            path,
                            format!(
                                "holds {} [[enclave]] tables; atoll create takes one",
                                a.len()
                            ),
                        ))
                    }
                },
                Some(_) => return Err(bad(
                    path,
                    "field enclave: a description is one enclave's table, or one [[enclave]] alone",
                )),
            };
        if text.len() > MAX_DESCRIPTION {
            return Err(bad(path, format!("longer than {MAX_DESCRIPTION} bytes")));
        }
        let string = |k: &str| -> Result<Option<String>> {
            match table.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(path, format!("field {k}: not a string"))),
            }
        };
        let name = string("name")?.ok_or_else(|| bad(path, "field name: missing"))?;
        let image = string("image")?
            .ok_or_else(|| bad(path, "field image: missing (the kernel or image file)"))?;
        let initrd = string("initrd")?;
        let cores = match table.get("cores") {
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_integer()
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or_else(|| bad(path, "field cores: not a list of APIC ids"))
                })
                .collect::<Result<Vec<u32>>>()?,
            Some(_) => return Err(bad(path, "field cores: not a list of APIC ids")),
            None => Vec::new(),
        };
        let devices = crate::passthrough::parse(path, &table)?;
        let virtio = match table.get("virtio") {
            Some(toml::Value::Array(a)) => a.len(),
            _ => 0,
        };
        Ok(Description {
            text,
            name,
            cores,
            devices,
            virtio,
            image: dir.join(image),
            initrd: initrd.map(|i| dir.join(i)),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Loads `data` as `blob` of enclave `id` in chunks of at most [`Load::MAX_DATA`].
fn load(
    client: &mut Client,
    id: u16,
    blob: Blob,
    what: &str,
    data: &[u8],
    err: &mut dyn Write,
    show: bool,
) -> Result<()> {
    let show = show && data.len() > 1 << 20;
    for (i, chunk) in data.chunks(Load::MAX_DATA).enumerate() {
        let offset = (i * Load::MAX_DATA) as u64;
        client.call(Kind::Load, |w| {
            Load {
                id,
                blob,
                offset,
                data: chunk,
            }
            .write(w)
        })?;
        if show {
            let done = offset as usize + chunk.len();
            let _ = write!(err, "\rloading {what}: {}%", done * 100 / data.len());
        }
    }
    if show {
        let _ = writeln!(err);
    }
    Ok(())
}

#[derive(Serialize)]
struct CreatedDoc {
    name: String,
    id: u16,
    image_bytes: usize,
    initrd_bytes: usize,
    offlined_cpus: Vec<u32>,
    devices: Vec<String>,
}

/// `atoll create`.
#[allow(clippy::too_many_arguments)]
pub fn create(
    client: &mut Client,
    root: &Root,
    file: &Path,
    offline_cores: bool,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stderr_tty: bool,
    channeld: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut d = Description::parse(file, &text, dir)?;
    let image = read(&d.image)?;
    let initrd = d
        .initrd
        .as_deref()
        .map(read)
        .transpose()?
        .unwrap_or_default();
    // Functions leave the host's drivers before atoll is asked (it refuses one in use).
    let (devices, text) = crate::passthrough::prepare(root, file, &d.text, &d.devices, err)?;
    d.text = text;
    let offlined = if offline_cores {
        root.offline(&d.cores, err)?
    } else {
        Vec::new()
    };
    let r = create_offlined(client, &d, &image, &initrd, err, stderr_tty);
    let id = match r {
        Ok(id) => id,
        Err(e) => {
            // The host gets back the CPUs it gave for an enclave that does not exist.
            if let Err(o) = root.online_cpus(&offlined, err) {
                let _ = writeln!(err, "atoll: onlining the CPUs again failed: {o}");
            }
            return Err(e);
        }
    };
    // The enclave's virtio devices are served by a daemon in the host; the enclave exists
    // either way, so a daemon that fails to start is reported, not undone.
    if d.virtio > 0 {
        let note: &mut dyn Write = if json { err } else { out };
        match channeld(&d.name) {
            Ok(()) => {
                let _ = writeln!(
                    note,
                    "started atoll-channeld for {}: {} virtio device(s)",
                    d.name, d.virtio
                );
            }
            Err(e) => {
                let _ = writeln!(
                    err,
                    "atoll: atoll-channeld for {} did not start: {e} (its virtio devices are not served; run `atoll-channeld --enclave {}`)",
                    d.name, d.name
                );
            }
        }
    }
    if json {
        print_json(
            out,
            &CreatedDoc {
                name: d.name,
                id,
                image_bytes: image.len(),
                initrd_bytes: initrd.len(),
                offlined_cpus: offlined,
                devices: devices.iter().map(|a| a.to_string()).collect(),
            },
        )
    } else {
        let _ = writeln!(out, "created {} (id {id}): running", d.name);
        Ok(())
    }
}

/// Create, Load and Start (undone by Destroy if a step after Create fails); returns the id.
fn create_offlined(
    client: &mut Client,
    d: &Description,
    image: &[u8],
    initrd: &[u8],
    err: &mut dyn Write,
    stderr_tty: bool,
) -> Result<u16> {
    let p = client.call(Kind::Create, |w| {
        Create {
            image_len: image.len() as u64,
            initrd_len: initrd.len() as u64,
            description: &d.text,
        }
        .write(w)
    })?;
    let id = decode("created", Created::read(&p))?.id;
    let steps = |client: &mut Client, err: &mut dyn Write| -> Result<()> {
        load(client, id, Blob::Image, "image", image, err, stderr_tty)?;
        if !initrd.is_empty() {
            load(client, id, Blob::Initrd, "initrd", initrd, err, stderr_tty)?;
        }
        client.call(Kind::Start, |w| Target { id, name: "" }.write(w))?;
        Ok(())
    };
    if let Err(e) = steps(client, err) {
        // Undo the creation so nothing stays reserved, then report what failed first. atoll
        // undoes a create whose build failed itself: then there is nothing left to destroy.
        let undone = client.call(Kind::Destroy, |w| Target { id, name: "" }.write(w));
        if let Err(u) = undone.as_ref().map(drop).or_else(|e| match e {
            crate::client::Error::Refused {
                status: atoll_abi::control::Status::NotFound,
                ..
            } => Ok(()),
            _ => Err(e),
        }) {
            let _ = writeln!(
                err,
                "atoll: undoing the creation of {} (id {id}) failed too: {u}",
                d.name
            );
        }
        return Err(e);
    }
    Ok(id)
}

/// Writes `v` as JSON on one line (one document per line, for scripts and log lines).
pub fn print_json(out: &mut dyn Write, v: &impl Serialize) -> Result<()> {
    let s = serde_json::to_string(v).map_err(|e| Error::Other(e.to_string()))?;
    writeln!(out, "{s}").map_err(|e| Error::io("stdout", e))
}

#[derive(Serialize)]
struct ListRow<'a> {
    name: &'a str,
    id: u16,
    state: &'a str,
    cores: &'a [u32],
    memory_mib: u64,
    uptime_us: u64,
    reason: &'a str,
}

/// `atoll list`.
pub fn list(client: &mut Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let es = enclave::records(client, Kind::List, "")?;
    if json {
        let rows: Vec<ListRow> = es
            .iter()
            .map(|e| ListRow {
                name: &e.name,
                id: e.id,
                state: e.state,
                cores: &e.cores,
                memory_mib: e.memory_mib,
                uptime_us: e.uptime_us,
                reason: &e.reason,
            })
            .collect();
        return print_json(out, &rows);
    }
    let rows: Vec<Vec<String>> = es
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.id.to_string(),
                e.state.to_string(),
                cores_text(&e.cores),
                format!("{} MiB", e.memory_mib),
                uptime_text(e.uptime_us),
                e.reason.clone(),
            ]
        })
        .collect();
    let t = table(
        &["NAME", "ID", "STATE", "CORES", "MEMORY", "UPTIME", "REASON"],
        &rows,
    );
    out.write_all(t.as_bytes())
        .map_err(|e| Error::io("stdout", e))
}

/// `atoll info`.
pub fn info(client: &mut Client, json: bool, out: &mut dyn Write) -> Result<()> {
    let i = enclave::info(client)?;
    if json {
        #[derive(Serialize)]
        struct InfoDoc {
            pool_bytes: u64,
            pool_free_bytes: u64,
            max_enclaves: u32,
            enclaves: u32,
            staging_bytes: u64,
            requests_ok: u64,
            requests_refused: u64,
            created: u64,
            destroyed: u64,
            slots_busy: u32,
        }
        return print_json(
            out,
            &InfoDoc {
                pool_bytes: i.pool_bytes,
                pool_free_bytes: i.pool_free_bytes,
                max_enclaves: i.max_enclaves,
                enclaves: i.enclaves,
                staging_bytes: i.staging_bytes,
                requests_ok: i.requests_ok,
                requests_refused: i.requests_refused,
                created: i.created,
                destroyed: i.destroyed,
                slots_busy: i.slots_busy,
            },
        );
    }
    let mib = |b: u64| format!("{} MiB", b >> 20);
    let rows = vec![
        vec!["pool".into(), mib(i.pool_bytes)],
        vec!["pool free".into(), mib(i.pool_free_bytes)],
        vec![
            "enclaves".into(),
            format!("{} of {}", i.enclaves, i.max_enclaves),
        ],
        vec!["staging".into(), format!("{} bytes", i.staging_bytes)],
        vec!["requests ok".into(), i.requests_ok.to_string()],
        vec!["requests refused".into(), i.requests_refused.to_string()],
        vec!["created".into(), i.created.to_string()],
        vec!["destroyed".into(), i.destroyed.to_string()],
        vec!["mailbox slots busy".into(), i.slots_busy.to_string()],
    ];
    out.write_all(table(&["ATOLL", "VALUE"], &rows).as_bytes())
        .map_err(|e| Error::io("stdout", e))
}

/// How `stats` prints.
pub struct StatsArgs<'a> {
    /// One enclave or all (empty).
    pub name: &'a str,
    /// Repeat every this long (forever).
    pub watch: Option<Duration>,
    /// Sample twice this far apart for rates.
    pub rate: Option<Duration>,
    /// Output format.
    pub format: crate::cli::Format,
}

fn stats_once(
    client: &mut Client,
    a: &StatsArgs,
    doc: &StatsDoc,
    now: &[enclave::Enclave],
    out: &mut dyn Write,
) -> Result<()> {
    use crate::cli::Format;
    match a.format {
        Format::Table => out
            .write_all(stats::render_table(doc).as_bytes())
            .map_err(|e| Error::io("stdout", e)),
        Format::Json => print_json(out, doc),
        Format::Prometheus => {
            let info = enclave::info(client)?;
            out.write_all(stats::render_prometheus(now, &info).as_bytes())
                .map_err(|e| Error::io("stdout", e))
        }
    }
}

/// `atoll stats`.
pub fn stats(client: &mut Client, a: &StatsArgs, out: &mut dyn Write) -> Result<()> {
    let mut prev: Option<(Vec<enclave::Enclave>, std::time::Instant)> = None;
    if let Some(gap) = a.rate {
        prev = Some((
            enclave::records(client, Kind::Stats, a.name)?,
            std::time::Instant::now(),
        ));
        std::thread::sleep(gap);
    }
    loop {
        let now = enclave::records(client, Kind::Stats, a.name)?;
        let at = std::time::Instant::now();
        let doc = stats::with_rates(
            now.clone(),
            prev.as_ref()
                .map(|(p, t)| (p.as_slice(), at.duration_since(*t).as_secs_f64())),
        );
        stats_once(client, a, &doc, &now, out)?;
        let _ = out.flush();
        let Some(every) = a.watch else { return Ok(()) };
        prev = Some((now, at));
        std::thread::sleep(every);
        if a.format == crate::cli::Format::Table {
            let _ = writeln!(out);
        }
    }
}

/// After a destroy: atoll told the enclave's `atoll-channeld` (if any) that the enclave is
/// gone; waits up to 5 s for it to exit (its pid file names it) so that its tap and image
/// are released when `destroy` returns.
fn wait_for_channeld(root: &Root, name: &str, err: &mut dyn Write) {
    let pid_file = crate::vconsole::run_dir(root, name).join("channeld.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return;
    };
    let proc_dir = root.0.join(format!("proc/{pid}"));
    let start = std::time::Instant::now();
    while proc_dir.exists() && pid_file.exists() {
        if start.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(
                err,
                "atoll: atoll-channeld of {name} (pid {pid}) is still running after 5 s"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `atoll destroy`.
pub fn destroy(
    client: &mut Client,
    root: &Root,
    name: &str,
    online_cores: bool,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let cores = if online_cores {
        let es = enclave::records(client, Kind::Stats, name)?;
        let e = es
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::Other(format!("atoll's stats do not list {name}")))?;
        e.cores.clone()
    } else {
        Vec::new()
    };
    client.call(Kind::Destroy, |w| {
        Target {
            id: Target::ANY,
            name,
        }
        .write(w)
    })?;
    wait_for_channeld(root, name, err);
    let onlined = if online_cores {
        root.online(&cores, err)?
    } else {
        Vec::new()
    };
    if json {
        #[derive(Serialize)]
        struct Destroyed<'a> {
            name: &'a str,
            destroyed: bool,
            onlined_cpus: Vec<u32>,
        }
        print_json(
            out,
            &Destroyed {
                name,
                destroyed: true,
                onlined_cpus: onlined,
            },
        )
    } else {
        let _ = writeln!(out, "destroyed {name}");
        Ok(())
    }
}

/// Decodes hex ("0a0B", spaces allowed).
pub fn hex(s: &str) -> Result<Vec<u8>> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return Err(Error::Other("--hex: an odd number of digits".into()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .map_err(|_| Error::Other(format!("--hex: {:?} is not a hex byte", &s[i..i + 2])))
        })
        .collect()
}

/// Bytes that are no message: no magic, a length past any slot.
pub const GARBAGE: [u8; 33] =
    *b"\xde\xad\xbe\xefgarbage, not a request\xff\xff\xff\xff\xff\xff\xff";

/// `atoll raw`: prints the reply's status and reason; Ok only for status ok.
pub fn raw(
    client: &mut Client,
    kind: Option<u16>,
    payload: &[u8],
    garbage: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let r = if garbage {
        client.send_garbage(if payload.is_empty() {
            &GARBAGE
        } else {
            payload
        })?
    } else {
        client.call_raw_kind(kind.unwrap_or(0), payload)?
    };
    let reason = if r.status == atoll_abi::control::Status::Ok {
        String::new()
    } else {
        r.reason()
    };
    if json {
        #[derive(Serialize)]
        struct RawDoc<'a> {
            kind: u16,
            seq: u32,
            status: &'a str,
            status_code: u32,
            reason: &'a str,
            payload_bytes: usize,
        }
        print_json(
            out,
            &RawDoc {
                kind: r.kind,
                seq: r.seq,
                status: r.status.name(),
                status_code: r.status as u32,
                reason: &reason,
                payload_bytes: r.payload.len(),
            },
        )?;
    } else {
        let _ = writeln!(
            out,
            "reply: kind {} seq {} status {} ({}) payload {} bytes",
            r.kind,
            r.seq,
            r.status.name(),
            r.status as u32,
            r.payload.len()
        );
    }
    if r.status == atoll_abi::control::Status::Ok {
        Ok(())
    } else {
        Err(Error::Refused {
            status: r.status,
            reason,
        })
    }
}
