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

/// Decodes a partition written by [`encode_into`]: profiles in key order.
pub fn decode(payload: &[u8]) -> Result<Vec<Profile<'_>>, Truncated> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    while !r.is_empty() {
        let mut entries = Vec::new();
        let mut segments = Vec::new();
        let key = decode_next(&mut r, payload.len(), &mut entries, &mut segments)?;
        out.push(Profile {
            key,
            entries,
            segments,
        });
    }
    Ok(out)
}

/// Decodes the profile at `r` (a reader over a partition of `payload_len` bytes) into `entries`
/// and `segments`, which are cleared first, and returns its key. [`decode`] one profile at a
/// time, for callers that reuse their buffers across profiles.
pub fn decode_next<'a>(
    r: &mut Reader<'a>,
    payload_len: usize,
    entries: &mut Vec<Entry>,
    segments: &mut Vec<u32>,
) -> Result<&'a [u8], Truncated> {
    entries.clear();
    segments.clear();
    let key = r.short_bytes()?;
    let n = r.varint_u32()? as usize;
    // Each entry takes at least 3 bytes: a lying count cannot reserve much.
    entries.reserve(n.min(payload_len / 3));
    let (mut trait_id, mut realized_at) = (0i64, 0i64);
    for _ in 0..n {
        let at = r.offset();
        trait_id = trait_id.wrapping_add(r.zigzag()?);
        let data_source = r.varint_u32()?;
        realized_at = realized_at.wrapping_add(r.zigzag()?);
        entries.push(Entry {
            trait_id: u32::try_from(trait_id).map_err(|_| Truncated { offset: at })?,
            data_source,
            realized_at,
        });
    }
    decode_segments(r, payload_len, segments)?;
    Ok(key)
}

/// [`decode_next`] for readers that need no trait realizations (an export without
/// `TRAIT_LIST`): the entries are skipped, not decoded, so their form is not checked.
pub fn decode_next_segments<'a>(
    r: &mut Reader<'a>,
    payload_len: usize,
    segments: &mut Vec<u32>,
) -> Result<&'a [u8], Truncated> {
    segments.clear();
    let key = r.short_bytes()?;
    let n = r.varint()?;
    // An entry is three varints: trait ID, data source, realization time.
    let varints = usize::try_from(n.saturating_mul(3)).unwrap_or(usize::MAX);
    r.skip_varints(varints)?;
    decode_segments(r, payload_len, segments)?;
    Ok(key)
}

/// Appends a profile's counted segment list to `segments` (empty).
fn decode_segments(
    r: &mut Reader<'_>,
    payload_len: usize,
    segments: &mut Vec<u32>,
) -> Result<(), Truncated> {
    let m = r.varint_u32()? as usize;
    segments.reserve(m.min(payload_len));
    let mut segment = 0i64;
    for _ in 0..m {
        let at = r.offset();
        segment = segment.wrapping_add(r.zigzag()?);
        segments.push(u32::try_from(segment).map_err(|_| Truncated { offset: at })?);
    }
    Ok(())
}

/// Appends one profile. Compact, because a state holds tens of millions of profiles and every
/// changed partition is rewritten: varint lengths and counts, and each trait ID, realization
/// time and segment ID as a zigzag varint of its difference to the previous one (entries are
/// sorted by trait and mostly realized by the same run, so most entries take 3-4 bytes instead
/// of 16).
pub fn encode_into(w: &mut Writer, key: &[u8], entries: &[Entry], segments: &[u32]) {
    w.short_bytes(key);
    w.varint(entries.len() as u64);
    let (mut trait_id, mut realized_at) = (0i64, 0i64);
    for e in entries {
        w.zigzag(i64::from(e.trait_id).wrapping_sub(trait_id));
        w.varint(u64::from(e.data_source));
        w.zigzag(e.realized_at.wrapping_sub(realized_at));
        trait_id = i64::from(e.trait_id);
        realized_at = e.realized_at;
    }
    w.varint(segments.len() as u64);
    let mut segment = 0i64;
    for &s in segments {
        w.zigzag(i64::from(s).wrapping_sub(segment));
        segment = i64::from(s);
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

    proptest::proptest! {
        /// Any profiles round-trip, sorted or not, at the extremes of every field.
        #[test]
        fn any_profiles_round_trip(
            profiles in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                    proptest::collection::vec(
                        (proptest::num::u32::ANY, proptest::num::u32::ANY, proptest::num::i64::ANY),
                        0..12,
                    ),
                    proptest::collection::vec(proptest::num::u32::ANY, 0..12),
                ),
                0..8,
            )
        ) {
            let mut w = Writer::default();
            let want: Vec<Profile<'_>> = profiles
                .iter()
                .map(|(key, entries, segments)| Profile {
                    key,
                    entries: entries
                        .iter()
                        .map(|&(trait_id, data_source, realized_at)| Entry {
                            trait_id,
                            data_source,
                            realized_at,
                        })
                        .collect(),
                    segments: segments.clone(),
                })
                .collect();
            for p in &want {
                encode_into(&mut w, p.key, &p.entries, &p.segments);
            }
            proptest::prop_assert_eq!(&decode(&w.buf).unwrap(), &want);
            // Skipping the entries gives the same keys and segments.
            let mut r = Reader::new(&w.buf);
            let mut segments = Vec::new();
            for p in &want {
                let key = decode_next_segments(&mut r, w.buf.len(), &mut segments).unwrap();
                proptest::prop_assert_eq!((key, &segments), (p.key, &p.segments));
            }
            proptest::prop_assert!(r.is_empty());
            // Every strict prefix of a non-empty payload is an error or fewer profiles, never
            // a panic.
            for cut in 0..w.buf.len() {
                let _ = decode(&w.buf[..cut]);
            }
        }
    }

    proptest::proptest! {
        /// Whatever decodes re-encodes to the same bytes (one encoding per value): the merge
        /// copies an unchanged profile's stored bytes instead of encoding it again.
        #[test]
        fn decoding_then_encoding_gives_the_same_bytes(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..48)
        ) {
            if let Ok(profiles) = decode(&payload) {
                let mut w = Writer::default();
                for p in &profiles {
                    encode_into(&mut w, p.key, &p.entries, &p.segments);
                }
                proptest::prop_assert_eq!(w.buf, payload);
            }
        }
    }

    #[test]
    fn a_typical_profile_is_small() {
        let entries: Vec<Entry> = (0..6)
            .map(|i| Entry {
                trait_id: 1000 + i * 37,
                data_source: 21,
                realized_at: 1_795_222_800,
            })
            .collect();
        let mut w = Writer::default();
        encode_into(&mut w, &[0u8; 17], &entries, &[5001, 5007]);
        // Key (1 + 17), count, first entry (trait 2, source 1, time 5), five more of 3 bytes
        // each, segment count, two segments (2 + 1): 46 bytes, where fixed widths took 133.
        assert_eq!(
            w.buf.len(),
            18 + 1 + (2 + 1 + 5) + 5 * (1 + 1 + 1) + 1 + 2 + 1
        );
    }

    #[test]
    fn overlong_varints_are_errors() {
        let mut r = Reader::new(&[0xff; 11]);
        assert!(r.varint().is_err());
        // 2^64 does not fit.
        let mut r = Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
        assert!(r.varint().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.varint(), Ok(u64::MAX));
        // One encoding per value: an overlong zero or one is refused.
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        assert!(Reader::new(&[0x81, 0x00]).varint().is_err());
        assert_eq!(Reader::new(&[0x81, 0x01]).varint(), Ok(129));
    }
}
