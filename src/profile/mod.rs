//! The partitioned profile store: every profile's trait realizations, one file per partition,
//! profiles sorted by encoded key ([`crate::model::ProfileKey::encode`]).

pub mod merge;

use crate::codec::{Reader, Truncated, Writer};
use crate::model::{Dpid, Timestamp, TraitId};

/// One trait realization on a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub trait_id: TraitId,
    /// The data source the trait was onboarded to when realized.
    pub data_source: Dpid,
    pub realized_at: Timestamp,
}

/// One stored profile, borrowing its partition's bytes for the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile<'a> {
    pub key: &'a [u8],
    /// Sorted by trait ID, one entry per trait.
    pub entries: Vec<Entry>,
    /// The segments the profile qualified for when it last changed, sorted.
    pub segments: Vec<u32>,
}

/// The state-relative name of a profile partition.
pub fn part_name(part: u32) -> String {
    format!("profiles/part-{part:04}")
}

pub fn decode(payload: &[u8]) -> Result<Vec<Profile<'_>>, Truncated> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    while !r.is_empty() {
        let key = r.bytes()?;
        let n = r.u32()? as usize;
        // Each entry takes 16 bytes: don't trust a count the payload cannot hold.
        let mut entries = Vec::with_capacity(n.min(payload.len() / 16));
        for _ in 0..n {
            entries.push(Entry {
                trait_id: r.u32()?,
                data_source: r.u32()?,
                realized_at: r.i64()?,
            });
        }
        let m = r.u32()? as usize;
        let mut segments = Vec::with_capacity(m.min(payload.len() / 4));
        for _ in 0..m {
            segments.push(r.u32()?);
        }
        out.push(Profile {
            key,
            entries,
            segments,
        });
    }
    Ok(out)
}

/// Appends one profile record.
pub fn encode_into(w: &mut Writer, key: &[u8], entries: &[Entry], segments: &[u32]) {
    w.bytes(key);
    w.u32(entries.len() as u32);
    for e in entries {
        w.u32(e.trait_id);
        w.u32(e.data_source);
        w.i64(e.realized_at);
    }
    w.u32(segments.len() as u32);
    for &s in segments {
        w.u32(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::default();
        let e = Entry {
            trait_id: 24,
            data_source: 21,
            realized_at: 1_700_000_000,
        };
        encode_into(&mut w, b"k1", &[e], &[1001, 1002]);
        encode_into(&mut w, b"k2", &[], &[]);
        let profiles = decode(&w.buf).unwrap();
        assert_eq!(
            profiles,
            vec![
                Profile {
                    key: b"k1",
                    entries: vec![e],
                    segments: vec![1001, 1002]
                },
                Profile {
                    key: b"k2",
                    entries: vec![],
                    segments: vec![]
                }
            ]
        );
        assert!(decode(&w.buf[..w.buf.len() - 2]).is_err());
    }
}
