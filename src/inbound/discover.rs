//! Local discovery: which files under a local inbound root a run looks at, in which order, and
//! the file-level checks that need only the name, the size and the config (CONTRACT §2).
//!
//! Layout walked (nothing deeper, symlinks never followed):
//!
//! ```text
//! ROOT/FILE                                  files directly under the root
//! ROOT/date=YYYY-MM-DD/FILE                  day folders (valid calendar dates only)
//! ROOT/PARTNER/date=YYYY-MM-DD/FILE          one partner level above day folders, as on S3
//! ```
//!
//! Output: a [`Discovery`] with trait files in CONTRACT §2 order, ID-sync files by timestamp,
//! and every entry left alone (`ignored`) or refused (`rejected`, with the reason), each sorted
//! by display name so reports are deterministic.
//!
//! The same walk runs over a remote listing ([`discover_listing`]): the `(relative path, size)`
//! pairs of an S3 or FTP root are turned into a virtual folder tree first, so local and remote
//! roots obey one set of rules.
//!
//! Not done here: reading contents (empty-after-gunzip, corrupt gzip, PGP), the ledger's
//! duplicate checks, talking to S3 or FTP (`storage` does that and hands over its listing).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::inbound::names::{Classified, IdSyncName, TraitName, classify};
use crate::model::{AAM_UUID_DPID, Dpid, device_format};

/// Prefix of a day folder's name.
const DAY_PREFIX: &str = "date=";

/// A file segmill will read: a trait or an ID-sync file that passed the file-level checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The path relative to the inbound root, `/`-separated, e.g.
    /// `partnerA/date=2026-11-21/ftp_dpm_21_1234567890.sync`. Unique within a discovery.
    pub display: String,
    /// The file's full path.
    pub path: PathBuf,
    /// Size in bytes when listed.
    pub size: u64,
    /// The parsed name: always [`Classified::Trait`] or [`Classified::IdSync`].
    pub name: Classified,
}

impl Found {
    /// The trait-file name, if this is a trait file.
    pub fn trait_name(&self) -> Option<&TraitName> {
        match &self.name {
            Classified::Trait(name) => Some(name),
            _ => None,
        }
    }

    /// The ID-sync name, if this is an ID-sync file.
    pub fn idsync_name(&self) -> Option<&IdSyncName> {
        match &self.name {
            Classified::IdSync(name) => Some(name),
            _ => None,
        }
    }
}

/// A file refused as a whole before reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedFile {
    /// The path relative to the inbound root, `/`-separated.
    pub display: String,
    /// The file's full path.
    pub path: PathBuf,
    /// Size in bytes when listed.
    pub size: u64,
    /// The parsed name: [`Classified::Trait`] or [`Classified::IdSync`] when a file-level
    /// check failed (so the file can be listed in its job's receipt), or
    /// [`Classified::Rejected`] when the name itself does not match the grammar.
    pub name: Classified,
    /// Why, short and exact, e.g. `DPID 999 is not a configured data source`.
    pub reason: String,
}

/// Everything found under an inbound root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Trait files, sorted by (TIMESTAMP, DPID, OWNER, SPLIT, display).
    pub trait_files: Vec<Found>,
    /// ID-sync files, sorted by (TIMESTAMP, display).
    pub idsync_files: Vec<Found>,
    /// Entries left alone, by display, sorted; folders end in `/`.
    pub ignored: Vec<String>,
    /// Files refused with their reasons, sorted by display.
    pub rejected: Vec<RejectedFile>,
}

/// A job: all files of one (DPID, OWNER) in one run. Displays as `21` or `21_901`, the
/// receipt's file stem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey {
    /// The DPID whose IDs the files hold.
    pub dpid: Dpid,
    /// The target data source, when the names give one.
    pub owner: Option<Dpid>,
}

impl JobKey {
    /// The data source the job's traits are onboarded to: OWNER, else DPID.
    pub fn target(&self) -> Dpid {
        self.owner.unwrap_or(self.dpid)
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.owner {
            Some(owner) => write!(f, "{}_{owner}", self.dpid),
            None => write!(f, "{}", self.dpid),
        }
    }
}

/// Why discovery could not list the inbound root: a run problem, not a data problem.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A folder could not be listed.
    #[error("cannot list inbound folder {}", path.display())]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An entry's type or size could not be read.
    #[error("cannot inspect inbound entry {}", path.display())]
    Inspect {
        /// The entry.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `discover_day` got something other than a calendar date `YYYY-MM-DD`.
    #[error("day {day:?} is not a calendar date YYYY-MM-DD")]
    BadDay {
        /// The text given.
        day: String,
    },
}

/// Lists every candidate file under `root`: files directly under it, in its day folders and in
/// its partners' day folders. Other folders are not entered and are listed as ignored.
pub fn discover_local(root: &Path, config: &Config) -> Result<Discovery, DiscoverError> {
    Walker {
        tree: &LocalTree,
        config,
        day: None,
        out: Discovery::default(),
    }
    .run(root)
}

/// Lists the files of one day: `root/date=DAY/` and `root/PARTNER/date=DAY/`. Files directly
/// under the root and other days are not looked at; a missing day folder is an empty result.
pub fn discover_day(root: &Path, day: &str, config: &Config) -> Result<Discovery, DiscoverError> {
    if !is_calendar_date(day) {
        return Err(DiscoverError::BadDay {
            day: day.to_owned(),
        });
    }
    Walker {
        tree: &LocalTree,
        config,
        day: Some(day),
        out: Discovery::default(),
    }
    .run(root)
}

/// Applies the rules of [`discover_local`] (or of [`discover_day`] when `day` is given) to a
/// remote root's listing: every object as `(path relative to the root, '/'-separated, size)`.
///
/// `root` is only a label: each entry's `path` is `root` joined with its relative path (for
/// example `s3://bucket/in/date=2026-11-21/ftp_dpm_21_1000000001.sync`), for messages; the
/// relative path to fetch the object by is `display`. Keys ending in `/` (folder markers) only
/// create their folder. Listings never hold symlinks, so nothing is skipped for being one.
pub fn discover_listing(
    root: &Path,
    listing: &[(String, u64)],
    day: Option<&str>,
    config: &Config,
) -> Result<Discovery, DiscoverError> {
    if let Some(day) = day
        && !is_calendar_date(day)
    {
        return Err(DiscoverError::BadDay {
            day: day.to_owned(),
        });
    }
    Walker {
        tree: &ListingTree::new(root, listing),
        config,
        day,
        out: Discovery::default(),
    }
    .run(root)
}

/// The file-level DPID checks of a trait file (CONTRACT §2). Returns the file's job.
pub fn check_trait_file(name: &TraitName, config: &Config) -> Result<JobKey, String> {
    if config.data_source(name.dpid).is_none() {
        match reserved_dpid(name.dpid) {
            None => return Err(not_configured("DPID", name.dpid)),
            Some(what) if name.owner.is_none() => {
                return Err(format!(
                    "DPID {} holds {what} and needs an OWNER (the target data source)",
                    name.dpid
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(owner) = name.owner
        && config.data_source(owner).is_none()
    {
        return Err(not_configured("OWNER", owner));
    }
    Ok(JobKey {
        dpid: name.dpid,
        owner: name.owner,
    })
}

/// The file-level DPID checks of an ID-sync file: every DPID is 0 (AAM UUIDs), a global
/// device data source or configured.
pub fn check_idsync_file(name: &IdSyncName, config: &Config) -> Result<(), String> {
    match name
        .dpids
        .iter()
        .find(|&&dpid| config.data_source(dpid).is_none() && reserved_dpid(dpid).is_none())
    {
        Some(&dpid) => Err(not_configured("DPID", dpid)),
        None => Ok(()),
    }
}

fn not_configured(field: &str, dpid: Dpid) -> String {
    format!("{field} {dpid} is not a configured data source")
}

/// What a DPID that is never configured stands for: AAM UUIDs or a global device source.
fn reserved_dpid(dpid: Dpid) -> Option<&'static str> {
    if dpid == AAM_UUID_DPID {
        Some("AAM UUIDs")
    } else {
        device_format(dpid).map(|(name, _)| name)
    }
}

/// Whether `text` is exactly `YYYY-MM-DD` and a real calendar date.
fn is_calendar_date(text: &str) -> bool {
    let b = text.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return false;
    }
    let field = |range: std::ops::Range<usize>| text.get(range).and_then(|s| s.parse::<i16>().ok());
    match (field(0..4), field(5..7), field(8..10)) {
        (Some(year), Some(month), Some(day)) => match (i8::try_from(month), i8::try_from(day)) {
            (Ok(month), Ok(day)) => jiff::civil::Date::new(year, month, day).is_ok(),
            _ => false,
        },
        _ => false,
    }
}

/// The day of a `date=YYYY-MM-DD` folder name, if it is one with a valid date.
fn day_of_folder(name: &str) -> Option<&str> {
    name.strip_prefix(DAY_PREFIX)
        .filter(|day| is_calendar_date(day))
}

/// One listed directory entry.
#[derive(Clone)]
struct Entry {
    /// The file name (lossy if not UTF-8).
    name: String,
    /// Whether the name was valid UTF-8.
    utf8: bool,
    path: PathBuf,
    kind: Kind,
    size: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Symlinks (never followed), sockets, FIFOs, devices.
    Other,
}

/// A folder tree the walker can list: the local file system or a remote listing.
trait Tree {
    /// The entries of `dir`, sorted by name so the walk is deterministic.
    fn list(&self, dir: &Path) -> Result<Vec<Entry>, DiscoverError>;
}

/// The local file system.
struct LocalTree;

impl Tree for LocalTree {
    fn list(&self, dir: &Path) -> Result<Vec<Entry>, DiscoverError> {
        list_local(dir)
    }
}

/// A remote listing arranged as folders: each folder's path (the root joined with its relative
/// path) maps to its entries, sorted by name.
struct ListingTree {
    folders: BTreeMap<PathBuf, Vec<Entry>>,
}

impl ListingTree {
    fn new(root: &Path, listing: &[(String, u64)]) -> ListingTree {
        // (folder, name) -> (kind, size); a name may be both a file and a folder on S3.
        let mut children: BTreeMap<PathBuf, BTreeMap<(String, bool), u64>> = BTreeMap::new();
        children.entry(root.to_path_buf()).or_default();
        for (rel, size) in listing {
            let mut folder = root.to_path_buf();
            let mut parts = rel.split('/').peekable();
            while let Some(part) = parts.next() {
                let is_last = parts.peek().is_none();
                if is_last && part.is_empty() {
                    break; // `a/b/`: a folder marker, the folders exist now.
                }
                children
                    .entry(folder.clone())
                    .or_default()
                    .insert((part.to_owned(), !is_last), if is_last { *size } else { 0 });
                folder.push(part);
                if !is_last {
                    children.entry(folder.clone()).or_default();
                }
            }
        }
        let folders = children
            .into_iter()
            .map(|(folder, names)| {
                let entries = names
                    .into_iter()
                    .map(|((name, is_dir), size)| Entry {
                        path: folder.join(&name),
                        name,
                        utf8: true,
                        kind: if is_dir { Kind::Dir } else { Kind::File },
                        size,
                    })
                    .collect();
                (folder, entries)
            })
            .collect();
        ListingTree { folders }
    }
}

impl Tree for ListingTree {
    fn list(&self, dir: &Path) -> Result<Vec<Entry>, DiscoverError> {
        Ok(self.folders.get(dir).cloned().unwrap_or_default())
    }
}

/// Lists `dir` without following symlinks, sorted by name so the walk is deterministic.
fn list_local(dir: &Path) -> Result<Vec<Entry>, DiscoverError> {
    let read_dir = fs::read_dir(dir).map_err(|source| DiscoverError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries = Vec::new();
    for entry in read_dir {
        let entry = entry.map_err(|source| DiscoverError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // `DirEntry::metadata` does not traverse symlinks.
        let meta = entry.metadata().map_err(|source| DiscoverError::Inspect {
            path: path.clone(),
            source,
        })?;
        let file_type = meta.file_type();
        let kind = if file_type.is_file() {
            Kind::File
        } else if file_type.is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        };
        let os_name = entry.file_name();
        let (name, utf8) = match os_name.to_str() {
            Some(name) => (name.to_owned(), true),
            None => (os_name.to_string_lossy().into_owned(), false),
        };
        entries.push(Entry {
            name,
            utf8,
            path,
            kind,
            size: meta.len(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

struct Walker<'a> {
    tree: &'a dyn Tree,
    config: &'a Config,
    /// `Some` for `discover_day`: only day folders of this day are entered.
    day: Option<&'a str>,
    out: Discovery,
}

impl Walker<'_> {
    fn run(mut self, root: &Path) -> Result<Discovery, DiscoverError> {
        for entry in self.tree.list(root)? {
            let display = entry.name.clone();
            match entry.kind {
                Kind::Dir => {
                    if entry.name.starts_with(DAY_PREFIX) {
                        self.day_folder_or_ignore(&entry, display)?;
                    } else if entry.utf8 {
                        self.partner(&entry)?;
                    } else if self.day.is_none() {
                        self.out.ignored.push(format!("{display}/"));
                    }
                }
                Kind::File if self.day.is_none() => self.file(entry, display),
                Kind::File | Kind::Other => {
                    if self.day.is_none() {
                        self.out.ignored.push(display);
                    }
                }
            }
        }
        Ok(self.finish())
    }

    /// A `date=...` folder at the root or in a partner folder.
    fn day_folder_or_ignore(
        &mut self,
        entry: &Entry,
        display: String,
    ) -> Result<(), DiscoverError> {
        match day_of_folder(&entry.name) {
            Some(day) if self.day.is_none_or(|wanted| wanted == day) => {
                self.day_folder(&entry.path, &display)
            }
            Some(_) => Ok(()),
            None => {
                if self.day.is_none() {
                    self.out.ignored.push(format!("{display}/"));
                }
                Ok(())
            }
        }
    }

    /// A folder at the root that is not a day folder: a partner folder if it holds day
    /// folders; otherwise it is listed as ignored as a whole and not entered further.
    fn partner(&mut self, partner: &Entry) -> Result<(), DiscoverError> {
        let entries = self.tree.list(&partner.path)?;
        let has_days = entries
            .iter()
            .any(|e| e.kind == Kind::Dir && day_of_folder(&e.name).is_some());
        if !has_days {
            if self.day.is_none() {
                self.out.ignored.push(format!("{}/", partner.name));
            }
            return Ok(());
        }
        for entry in entries {
            let display = format!("{}/{}", partner.name, entry.name);
            if entry.kind == Kind::Dir && entry.name.starts_with(DAY_PREFIX) {
                self.day_folder_or_ignore(&entry, display)?;
            } else if self.day.is_none() {
                let suffix = if entry.kind == Kind::Dir { "/" } else { "" };
                self.out.ignored.push(format!("{display}{suffix}"));
            }
        }
        Ok(())
    }

    /// The files of one day folder; anything else in it is ignored.
    fn day_folder(&mut self, dir: &Path, display: &str) -> Result<(), DiscoverError> {
        for entry in self.tree.list(dir)? {
            let display = format!("{display}/{}", entry.name);
            match entry.kind {
                Kind::File => self.file(entry, display),
                Kind::Dir => self.out.ignored.push(format!("{display}/")),
                Kind::Other => self.out.ignored.push(display),
            }
        }
        Ok(())
    }

    /// Classifies one regular file and applies the file-level checks.
    fn file(&mut self, entry: Entry, display: String) {
        let name = if entry.utf8 {
            classify(&entry.name)
        } else {
            Classified::Ignored
        };
        let verdict = match &name {
            Classified::Ignored => {
                self.out.ignored.push(display);
                return;
            }
            Classified::Rejected(reason) => Err(reason.clone()),
            _ if entry.size == 0 => Err("empty file".to_owned()),
            Classified::Trait(t) => check_trait_file(t, self.config).map(|_| ()),
            Classified::IdSync(n) => check_idsync_file(n, self.config),
        };
        match verdict {
            Err(reason) => self.out.rejected.push(RejectedFile {
                display,
                path: entry.path,
                size: entry.size,
                name,
                reason,
            }),
            Ok(()) => {
                let is_trait = matches!(name, Classified::Trait(_));
                let found = Found {
                    display,
                    path: entry.path,
                    size: entry.size,
                    name,
                };
                if is_trait {
                    self.out.trait_files.push(found);
                } else {
                    self.out.idsync_files.push(found);
                }
            }
        }
    }

    fn finish(mut self) -> Discovery {
        let out = &mut self.out;
        out.trait_files
            .sort_by(|a, b| trait_order(a).cmp(&trait_order(b)));
        out.idsync_files
            .sort_by(|a, b| idsync_order(a).cmp(&idsync_order(b)));
        out.ignored.sort();
        out.rejected.sort_by(|a, b| a.display.cmp(&b.display));
        self.out
    }
}

/// CONTRACT §2 order of trait files: (TIMESTAMP, DPID, OWNER, SPLIT, display).
fn trait_order(found: &Found) -> (u64, Dpid, Option<Dpid>, Option<u32>, &str) {
    match found.trait_name() {
        Some(t) => (t.timestamp, t.dpid, t.owner, t.split, &found.display),
        None => (0, 0, None, None, &found.display),
    }
}

/// Order of ID-sync files: (TIMESTAMP, display).
fn idsync_order(found: &Found) -> (u64, &str) {
    (
        found.idsync_name().map_or(0, |n| n.timestamp),
        &found.display,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            Path::new("segmill.toml"),
            r#"
[paths]
inbound = "in"
state = "state"
outbound = "out"
[[data_source]]
id = 21
name = "CRM"
[[data_source]]
id = 33
name = "Loyalty"
[[data_source]]
id = 901
name = "Partner"
"#,
        )
        .unwrap()
    }

    /// Creates `rel` under `root` (folders included) holding `content`.
    fn put(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, content).unwrap();
    }

    fn displays(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.display.as_str()).collect()
    }

    fn rejections(d: &Discovery) -> Vec<(&str, &str)> {
        d.rejected
            .iter()
            .map(|r| (r.display.as_str(), r.reason.as_str()))
            .collect()
    }

    #[test]
    fn trait_files_follow_contract_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [
            "ftp_dpm_33_1000000002.sync",
            "ftp_dpm_21_1000000002.sync.2",
            "ftp_dpm_21_1000000002.sync.10",
            "ftp_dpm_21_1000000002.sync",
            "ftp_dpm_21_901_1000000002.sync",
            "ftp_dpm_21_1000000001.overwrite",
            "ftp_dpm_0_21_1000000001.sync.gz",
            "adobe_id_0_21_1000000009.sync",
            "adobe_id_0_33_1000000003.sync.1",
        ] {
            put(root, name, "x\n");
        }
        put(root, "date=2026-11-21/ftp_dpm_21_1000000002.sync.2", "x\n");
        put(
            root,
            "partnerA/date=2026-11-21/ftp_dpm_21_1000000002.sync",
            "x\n",
        );
        put(root, "date=2026-11-20/adobe_id_0_21_1000000003.sync", "x\n");

        let d = discover_local(root, &config()).unwrap();
        assert_eq!(
            displays(&d.trait_files),
            [
                "ftp_dpm_0_21_1000000001.sync.gz",
                "ftp_dpm_21_1000000001.overwrite",
                "ftp_dpm_21_1000000002.sync",
                "partnerA/date=2026-11-21/ftp_dpm_21_1000000002.sync",
                "date=2026-11-21/ftp_dpm_21_1000000002.sync.2",
                "ftp_dpm_21_1000000002.sync.2",
                "ftp_dpm_21_1000000002.sync.10",
                "ftp_dpm_21_901_1000000002.sync",
                "ftp_dpm_33_1000000002.sync",
            ]
        );
        assert_eq!(
            displays(&d.idsync_files),
            [
                "adobe_id_0_33_1000000003.sync.1",
                "date=2026-11-20/adobe_id_0_21_1000000003.sync",
                "adobe_id_0_21_1000000009.sync",
            ]
        );
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);

        let first = &d.trait_files[0];
        assert_eq!(first.path, root.join("ftp_dpm_0_21_1000000001.sync.gz"));
        assert_eq!(first.size, 2);
        assert_eq!(
            first.trait_name().map(|t| (t.dpid, t.owner, t.gzip)),
            Some((0, Some(21), true))
        );
        assert_eq!(first.idsync_name(), None);
    }

    #[test]
    fn folders_markers_and_symlinks_are_ignored_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "ftp_dpm_21_1000000001.sync.processed", "");
        put(root, "ftp_dpm_21_1000000001.sync.info", "{}");
        put(root, "readme.txt", "hi");
        put(root, "date=2026-02-30/ftp_dpm_21_1000000001.sync", "x\n");
        put(root, "date=yesterday/ftp_dpm_21_1000000001.sync", "x\n");
        put(
            root,
            "date=2026-11-21/nested/ftp_dpm_21_1000000001.sync",
            "x\n",
        );
        put(root, "date=2026-11-21/ftp_dpm_21_1000000001.sync", "x\n");
        put(root, "archive/ftp_dpm_21_1000000001.sync", "x\n");
        put(root, "partnerA/stray.txt", "x");
        put(root, "partnerA/old/ftp_dpm_21_1000000001.sync", "x\n");
        put(
            root,
            "partnerA/date=2026-13-01/ftp_dpm_21_1000000001.sync",
            "x\n",
        );
        put(
            root,
            "partnerA/date=2026-11-21/ftp_dpm_33_1000000001.sync",
            "x\n",
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                root.join("date=2026-11-21/ftp_dpm_21_1000000001.sync"),
                root.join("ftp_dpm_21_1000000005.sync"),
            )
            .unwrap();
            std::os::unix::fs::symlink(root.join("date=2026-11-21"), root.join("date=2026-11-22"))
                .unwrap();
        }

        let d = discover_local(root, &config()).unwrap();
        assert_eq!(
            displays(&d.trait_files),
            [
                "date=2026-11-21/ftp_dpm_21_1000000001.sync",
                "partnerA/date=2026-11-21/ftp_dpm_33_1000000001.sync",
            ]
        );
        let mut expected = vec![
            "archive/",
            "date=2026-02-30/",
            "date=2026-11-21/nested/",
            "date=yesterday/",
            "ftp_dpm_21_1000000001.sync.info",
            "ftp_dpm_21_1000000001.sync.processed",
            "partnerA/date=2026-13-01/",
            "partnerA/old/",
            "partnerA/stray.txt",
            "readme.txt",
        ];
        if cfg!(unix) {
            expected.extend(["date=2026-11-22", "ftp_dpm_21_1000000005.sync"]);
            expected.sort();
        }
        assert_eq!(d.ignored, expected);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    }

    #[test]
    fn every_file_level_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cases = [
            (
                "ftp_dpm_21_123456789.sync",
                "timestamp must be exactly 10 digits",
            ),
            (
                "ftp_dpm_21_1000000001.sync.zip",
                "zip compression is not supported",
            ),
            (
                "ftp_dpm_21_1000000001.sync.gz.pgp",
                "gzip inside PGP is rejected",
            ),
            (
                "ftp_dpm_999_1000000001.sync",
                "DPID 999 is not a configured data source",
            ),
            (
                "ftp_dpm_999_21_1000000001.sync",
                "DPID 999 is not a configured data source",
            ),
            (
                "ftp_dpm_0_1000000001.sync",
                "DPID 0 holds AAM UUIDs and needs an OWNER (the target data source)",
            ),
            (
                "ftp_dpm_20914_1000000001.sync",
                "DPID 20914 holds GAID (Android) and needs an OWNER (the target data source)",
            ),
            (
                "ftp_dpm_20915_902_1000000001.sync",
                "OWNER 902 is not a configured data source",
            ),
            (
                "ftp_dpm_21_0_1000000001.sync",
                "OWNER 0 is not a configured data source",
            ),
            (
                "ftp_dpm_21_20914_1000000001.sync",
                "OWNER 20914 is not a configured data source",
            ),
            (
                "adobe_id_0_21_999_1000000001.sync",
                "DPID 999 is not a configured data source",
            ),
            (
                "c2c_id_21_77_1000000001.sync",
                "DPID 77 is not a configured data source",
            ),
            (
                "adobe_id_0_21_1000000001.overwrite",
                "ID-sync files have no .overwrite",
            ),
        ];
        for (name, _) in cases {
            put(root, &format!("date=2026-11-21/{name}"), "x\n");
        }
        put(root, "ftp_dpm_21_1000000001.sync", "");
        put(root, "adobe_id_0_21_1000000001.sync", "");
        // Valid names that pass every check.
        put(root, "ftp_dpm_20914_21_1000000001.sync", "x\n");
        put(root, "ftp_dpm_33_21_1000000001.sync", "x\n");
        put(root, "adobe_id_20915_21_33_1000000001.sync", "x\n");
        put(root, "c2c_id_21_33_1000000001.sync", "x\n");

        let d = discover_local(root, &config()).unwrap();
        let mut expected: Vec<(String, &str)> = cases
            .iter()
            .map(|(name, reason)| (format!("date=2026-11-21/{name}"), *reason))
            .collect();
        expected.push(("ftp_dpm_21_1000000001.sync".into(), "empty file"));
        expected.push(("adobe_id_0_21_1000000001.sync".into(), "empty file"));
        expected.sort();
        let expected: Vec<(&str, &str)> = expected.iter().map(|(d, r)| (d.as_str(), *r)).collect();
        assert_eq!(rejections(&d), expected);
        assert_eq!(
            displays(&d.trait_files),
            [
                "ftp_dpm_33_21_1000000001.sync",
                "ftp_dpm_20914_21_1000000001.sync"
            ]
        );
        assert_eq!(
            displays(&d.idsync_files),
            [
                "adobe_id_20915_21_33_1000000001.sync",
                "c2c_id_21_33_1000000001.sync"
            ]
        );

        // A name rejection keeps the reason as its name; a check failure keeps the parsed name.
        let by_display = |display: &str| d.rejected.iter().find(|r| r.display == display).unwrap();
        assert_eq!(
            by_display("date=2026-11-21/ftp_dpm_21_1000000001.sync.zip").name,
            Classified::Rejected("zip compression is not supported".into())
        );
        let unknown = by_display("date=2026-11-21/ftp_dpm_999_21_1000000001.sync");
        assert!(
            matches!(&unknown.name, Classified::Trait(t) if t.dpid == 999 && t.owner == Some(21))
        );
        assert_eq!(unknown.size, 2);
        assert_eq!(by_display("ftp_dpm_21_1000000001.sync").size, 0);
    }

    #[test]
    fn check_trait_file_returns_the_job() {
        let config = config();
        let name = |dpid, owner| TraitName {
            odc: false,
            dpid,
            owner,
            timestamp: 1_000_000_001,
            mode: crate::inbound::names::Mode::Sync,
            split: None,
            gzip: false,
            pgp: false,
        };
        assert_eq!(
            check_trait_file(&name(21, None), &config),
            Ok(JobKey {
                dpid: 21,
                owner: None
            })
        );
        assert_eq!(
            check_trait_file(&name(0, Some(901)), &config),
            Ok(JobKey {
                dpid: 0,
                owner: Some(901)
            })
        );
        assert_eq!(
            check_trait_file(&name(1171489, None), &config),
            Err("DPID 1171489 holds Vizio IFA and needs an OWNER (the target data source)".into())
        );
        let job = JobKey {
            dpid: 21,
            owner: Some(901),
        };
        assert_eq!(job.to_string(), "21_901");
        assert_eq!(job.target(), 901);
        let plain = JobKey {
            dpid: 21,
            owner: None,
        };
        assert_eq!(plain.to_string(), "21");
        assert_eq!(plain.target(), 21);
        assert!(plain < job);
        assert!(
            job < JobKey {
                dpid: 33,
                owner: None
            }
        );
    }

    #[test]
    fn discover_day_reads_only_that_day() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "ftp_dpm_21_1000000001.sync", "x\n");
        put(root, "readme.txt", "x");
        put(root, "date=2026-11-21/ftp_dpm_21_1000000003.sync", "x\n");
        put(root, "date=2026-11-21/notes.txt", "x");
        put(root, "date=2026-11-22/ftp_dpm_21_1000000002.sync", "x\n");
        put(
            root,
            "partnerA/date=2026-11-21/ftp_dpm_33_1000000002.sync",
            "x\n",
        );
        put(
            root,
            "partnerA/date=2026-11-21/ftp_dpm_999_1000000002.sync",
            "x\n",
        );
        put(root, "partnerA/stray.txt", "x");
        put(
            root,
            "partnerB/date=2026-11-20/ftp_dpm_33_1000000001.sync",
            "x\n",
        );
        put(root, "archive/x", "x");

        let d = discover_day(root, "2026-11-21", &config()).unwrap();
        assert_eq!(
            displays(&d.trait_files),
            [
                "partnerA/date=2026-11-21/ftp_dpm_33_1000000002.sync",
                "date=2026-11-21/ftp_dpm_21_1000000003.sync",
            ]
        );
        assert_eq!(d.ignored, ["date=2026-11-21/notes.txt"]);
        assert_eq!(
            rejections(&d),
            [(
                "partnerA/date=2026-11-21/ftp_dpm_999_1000000002.sync",
                "DPID 999 is not a configured data source"
            )]
        );
        assert_eq!(
            discover_day(root, "2026-01-01", &config()).unwrap(),
            Discovery::default()
        );
        for bad in ["2026-02-29", "2026-1-01", "20261121", "2026-11-21x", ""] {
            let err = discover_day(root, bad, &config()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("day {bad:?} is not a calendar date YYYY-MM-DD")
            );
        }
        assert!(discover_day(root, "2024-02-29", &config()).is_ok());
    }

    #[test]
    fn missing_root_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = discover_local(&missing, &config()).unwrap_err();
        assert!(matches!(&err, DiscoverError::ReadDir { path, .. } if *path == missing));
        assert!(
            err.to_string() == format!("cannot list inbound folder {}", missing.display())
                && std::error::Error::source(&err).is_some(),
            "{err}"
        );
    }

    #[test]
    fn calendar_dates() {
        assert!(is_calendar_date("2026-11-21"));
        assert!(is_calendar_date("2024-02-29"));
        assert!(!is_calendar_date("2025-02-29"));
        assert!(!is_calendar_date("2026-00-10"));
        assert!(!is_calendar_date("2026-12-32"));
        assert!(!is_calendar_date("+026-12-01"));
        assert!(!is_calendar_date("2026-11-2é"));
        assert_eq!(day_of_folder("date=2026-11-21"), Some("2026-11-21"));
        assert_eq!(day_of_folder("date=2026-11-31"), None);
        assert_eq!(day_of_folder("day=2026-11-21"), None);
    }

    /// A local tree and the same tree as a remote listing give the same discovery, paths aside.
    #[test]
    fn a_listing_follows_the_local_rules() {
        let files: [(&str, &str); 14] = [
            ("ftp_dpm_21_1000000002.sync", "x\n"),
            ("ftp_dpm_21_1000000002.sync.processed", ""),
            ("readme.txt", "hi"),
            ("ftp_dpm_21_1000000003.sync", ""),
            ("date=2026-11-21/ftp_dpm_21_1000000001.sync", "x\n"),
            ("date=2026-11-21/nested/ftp_dpm_21_1000000001.sync", "x\n"),
            ("date=2026-02-30/ftp_dpm_21_1000000001.sync", "x\n"),
            (
                "partnerA/date=2026-11-21/ftp_dpm_33_1000000001.sync",
                "abc\n",
            ),
            (
                "partnerA/date=2026-11-22/ftp_dpm_999_1000000001.sync",
                "x\n",
            ),
            ("partnerA/date=2026-11-22/notes.txt", "x"),
            ("partnerA/stray.txt", "x"),
            ("partnerA/old/a/b", "x"),
            ("archive/old/ftp_dpm_21_1000000001.sync", "x\n"),
            ("adobe_id_0_21_1000000004.sync.gz", "xx"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut listing = Vec::new();
        for (rel, content) in files {
            put(root, rel, content);
            listing.push((rel.to_owned(), content.len() as u64));
        }
        // A folder marker and an empty remote folder, as an S3 console leaves them.
        listing.push(("date=2026-11-23/".to_owned(), 0));
        fs::create_dir_all(root.join("date=2026-11-23")).unwrap();
        let label = Path::new("s3://bucket/in");
        let config = config();

        let local = discover_local(root, &config).unwrap();
        let remote = discover_listing(label, &listing, None, &config).unwrap();
        let strip = |d: &Discovery| {
            let mut d = d.clone();
            for f in d.trait_files.iter_mut().chain(d.idsync_files.iter_mut()) {
                f.path = PathBuf::new();
            }
            for r in &mut d.rejected {
                r.path = PathBuf::new();
            }
            d
        };
        assert_eq!(strip(&remote), strip(&local));
        assert_eq!(
            displays(&remote.trait_files),
            [
                "date=2026-11-21/ftp_dpm_21_1000000001.sync",
                "partnerA/date=2026-11-21/ftp_dpm_33_1000000001.sync",
                "ftp_dpm_21_1000000002.sync",
            ]
        );
        assert_eq!(
            remote.ignored,
            [
                "archive/",
                "date=2026-02-30/",
                "date=2026-11-21/nested/",
                "ftp_dpm_21_1000000002.sync.processed",
                "partnerA/date=2026-11-22/notes.txt",
                "partnerA/old/",
                "partnerA/stray.txt",
                "readme.txt",
            ]
        );
        assert_eq!(
            rejections(&remote),
            [
                ("ftp_dpm_21_1000000003.sync", "empty file"),
                (
                    "partnerA/date=2026-11-22/ftp_dpm_999_1000000001.sync",
                    "DPID 999 is not a configured data source"
                ),
            ]
        );
        let first = &remote.trait_files[1];
        assert_eq!(
            first.path,
            Path::new("s3://bucket/in/partnerA/date=2026-11-21/ftp_dpm_33_1000000001.sync")
        );
        assert_eq!(first.size, 4);
        assert_eq!(
            displays(&remote.idsync_files),
            ["adobe_id_0_21_1000000004.sync.gz"]
        );

        let day = discover_listing(label, &listing, Some("2026-11-22"), &config).unwrap();
        assert_eq!(
            strip(&day),
            strip(&discover_day(root, "2026-11-22", &config).unwrap())
        );
        assert_eq!(day.ignored, ["partnerA/date=2026-11-22/notes.txt"]);
        let err = discover_listing(label, &listing, Some("2026-11-31"), &config).unwrap_err();
        assert_eq!(
            err.to_string(),
            "day \"2026-11-31\" is not a calendar date YYYY-MM-DD"
        );
        assert_eq!(
            discover_listing(label, &[], None, &config).unwrap(),
            Discovery::default()
        );
    }
}
