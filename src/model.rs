//! Core vocabulary shared by every stage: data-source and trait IDs, AAM UUIDs, profile keys
//! and the stable partitioning hash.

use std::fmt;

/// A data provider ID (data source). DPIDs in names are decimal; AAM's largest known global
/// device DPID (1171489) is far below `u32::MAX`.
pub type Dpid = u32;

/// An onboarded trait ID (`d_sid`).
pub type TraitId = u32;

/// Seconds since the Unix epoch, UTC.
pub type Timestamp = i64;

/// DPID `0`: the column holds AAM UUIDs.
pub const AAM_UUID_DPID: Dpid = 0;

/// Seed of the partitioning hash. Changing it changes every state file's layout: bump
/// `state::FORMAT_VERSION` with it.
pub const PARTITION_SEED: u64 = 0x5e9_0111_2026_0001;

/// An AAM UUID: exactly 38 ASCII digits, stored as a number and printed zero-padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub u128);

impl Uuid {
    /// Parses exactly 38 ASCII digits; anything else is `None`.
    pub fn parse(bytes: &[u8]) -> Option<Uuid> {
        let bytes: &[u8; 38] = bytes.try_into().ok()?;
        // Two 19-digit halves in u64 arithmetic (10^19 - 1 < 2^64), joined once; each half is
        // two 8-digit words converted in a few multiplies (`eight_digits`) and 3 digits more.
        let half = |d: &[u8]| -> Option<u64> {
            let a = eight_digits(d[..8].try_into().ok()?)?;
            let b = eight_digits(d[8..16].try_into().ok()?)?;
            let mut c = 0;
            for &byte in &d[16..19] {
                let digit = byte.wrapping_sub(b'0');
                if digit > 9 {
                    return None;
                }
                c = c * 10 + u64::from(digit);
            }
            Some(a * 100_000_000_000 + b * 1_000 + c)
        };
        let (high, low) = bytes.split_at(19);
        // 10^38 - 1 < 2^128, so 38 digits never overflow.
        Some(Uuid(
            u128::from(half(high)?) * 10_000_000_000_000_000_000 + u128::from(half(low)?),
        ))
    }
}

/// The value of 8 ASCII digits (the first the most significant), or `None` if any byte is not
/// a digit: the whole word is checked and converted at once (SWAR) instead of byte by byte.
#[inline]
fn eight_digits(bytes: &[u8; 8]) -> Option<u64> {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // Each digit's value in its byte (the first digit in the low byte).
    let v = u64::from_le_bytes(*bytes) ^ 0x3030_3030_3030_3030;
    // A byte is a digit iff it is now at most 9: adding 0x76 sets its high bit otherwise (a
    // byte that had its high bit already is caught by `| v`; its carry only reaches bytes
    // the check already fails).
    if (v.wrapping_add(0x7676_7676_7676_7676) | v) & HIGH_BITS != 0 {
        return None;
    }
    // Pairs, then quads, then the whole: each step joins neighbours as high * 10^k + low.
    let v = (v * 10 + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v * 100 + (v >> 16)) & 0x0000_ffff_0000_ffff;
    Some((v * 10_000 + (v >> 32)) & 0xffff_ffff)
}

impl Uuid {
    /// The 38 decimal digits, leading zeros included; `None` for a value of 39 digits, which
    /// [`Uuid::parse`] never makes (a corrupt state could).
    pub fn digits(self) -> Option<[u8; 38]> {
        const HALF: u128 = 10_000_000_000_000_000_000;
        if self.0 >= HALF * HALF {
            return None;
        }
        let mut out = [b'0'; 38];
        let (high, low) = out.split_at_mut(19);
        // Both halves are below 10^19, so each fits a u64 and is written with u64 arithmetic.
        for (half, value) in [
            (high, (self.0 / HALF) as u64),
            (low, (self.0 % HALF) as u64),
        ] {
            let mut v = value;
            for d in half.iter_mut().rev() {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        Some(out)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.digits() {
            // Digits are ASCII.
            Some(digits) => f.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?),
            None => write!(f, "{:038}", self.0),
        }
    }
}

/// The format a global device data source requires of its IDs (AAM-REFERENCE §1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFormat {
    /// 8-4-4-4-12 lowercase hexadecimal (GAID, RIDA, Fire TV, LGUDID).
    LowerUuid,
    /// 8-4-4-4-12 uppercase hexadecimal (IDFA).
    UpperUuid,
    /// ASCII letters and digits only (MAID, TIFA, Vizio, Samsung DUID).
    Alphanumeric,
}

impl DeviceFormat {
    pub fn describe(self) -> &'static str {
        match self {
            DeviceFormat::LowerUuid => "36 characters, lowercase hex 8-4-4-4-12",
            DeviceFormat::UpperUuid => "36 characters, uppercase hex 8-4-4-4-12",
            DeviceFormat::Alphanumeric => "ASCII letters and digits",
        }
    }

    /// Whether `id` has exactly this format.
    pub fn accepts(self, id: &[u8]) -> bool {
        match self {
            DeviceFormat::LowerUuid => {
                is_hyphenated_hex(id, |b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            DeviceFormat::UpperUuid => {
                is_hyphenated_hex(id, |b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
            }
            DeviceFormat::Alphanumeric => {
                !id.is_empty() && id.iter().all(u8::is_ascii_alphanumeric)
            }
        }
    }
}

fn is_hyphenated_hex(id: &[u8], hex: impl Fn(u8) -> bool) -> bool {
    id.len() == 36
        && id.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => hex(b),
        })
}

/// The global device data sources of AAM-REFERENCE §1.4: DPID, name, ID format.
pub const GLOBAL_DEVICE_SOURCES: &[(Dpid, &str, DeviceFormat)] = &[
    (20914, "GAID (Android)", DeviceFormat::LowerUuid),
    (20915, "IDFA (iOS)", DeviceFormat::UpperUuid),
    (121963, "RIDA (Roku)", DeviceFormat::LowerUuid),
    (389146, "MAID (Microsoft)", DeviceFormat::Alphanumeric),
    (404660, "Samsung DUID", DeviceFormat::Alphanumeric),
    (488258, "Amazon Fire TV", DeviceFormat::LowerUuid),
    (963906, "TIFA (Samsung Tizen)", DeviceFormat::Alphanumeric),
    (1171485, "LGUDID (LG webOS)", DeviceFormat::LowerUuid),
    (1171489, "Vizio IFA", DeviceFormat::Alphanumeric),
];

/// The device-ID format of a global device DPID, or `None` for any other DPID.
pub fn device_format(dpid: Dpid) -> Option<(&'static str, DeviceFormat)> {
    GLOBAL_DEVICE_SOURCES
        .iter()
        .find(|(d, _, _)| *d == dpid)
        .map(|&(_, name, format)| (name, format))
}

/// Whose profile a record lands on. Ordered so that AAM UUID profiles sort numerically first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProfileKey {
    /// An AAM UUID profile.
    Uuid(Uuid),
    /// A global device ID profile: (device DPID, ID).
    Device(Dpid, Box<[u8]>),
    /// A cross-device customer-ID profile kept while the ID is not synced: (DPID, ID).
    Customer(Dpid, Box<[u8]>),
}

impl ProfileKey {
    pub const TAG_UUID: u8 = 0;
    pub const TAG_DEVICE: u8 = 1;
    pub const TAG_CUSTOMER: u8 = 2;

    /// The stable byte encoding used in state files and for partitioning. Byte order equals
    /// the `Ord` order of keys.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            ProfileKey::Uuid(u) => {
                out.push(Self::TAG_UUID);
                out.extend_from_slice(&u.0.to_be_bytes());
            }
            ProfileKey::Device(dpid, id) => Self::encode_device(*dpid, id, out),
            ProfileKey::Customer(dpid, id) => Self::encode_customer(*dpid, id, out),
        }
    }

    /// Appends the encoding of `ProfileKey::Device(dpid, id)` without building one.
    pub fn encode_device(dpid: Dpid, id: &[u8], out: &mut Vec<u8>) {
        out.push(Self::TAG_DEVICE);
        out.extend_from_slice(&dpid.to_be_bytes());
        out.extend_from_slice(id);
    }

    /// Appends the encoding of `ProfileKey::Customer(dpid, id)` without building one.
    pub fn encode_customer(dpid: Dpid, id: &[u8], out: &mut Vec<u8>) {
        out.push(Self::TAG_CUSTOMER);
        out.extend_from_slice(&dpid.to_be_bytes());
        out.extend_from_slice(id);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21);
        self.encode_into(&mut out);
        out
    }

    /// Inverse of [`ProfileKey::encode`]; `None` for bytes no key encodes to.
    pub fn decode(bytes: &[u8]) -> Option<ProfileKey> {
        let (&tag, rest) = bytes.split_first()?;
        match tag {
            Self::TAG_UUID => Some(ProfileKey::Uuid(Uuid(u128::from_be_bytes(
                rest.try_into().ok()?,
            )))),
            Self::TAG_DEVICE | Self::TAG_CUSTOMER => {
                if rest.len() < 4 {
                    return None;
                }
                let dpid = Dpid::from_be_bytes(rest[..4].try_into().ok()?);
                let id: Box<[u8]> = rest[4..].into();
                Some(if tag == Self::TAG_DEVICE {
                    ProfileKey::Device(dpid, id)
                } else {
                    ProfileKey::Customer(dpid, id)
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for ProfileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileKey::Uuid(u) => write!(f, "{u}"),
            ProfileKey::Device(dpid, id) => {
                write!(f, "device {dpid}:{}", String::from_utf8_lossy(id))
            }
            ProfileKey::Customer(dpid, id) => {
                write!(f, "customer {dpid}:{}", String::from_utf8_lossy(id))
            }
        }
    }
}

/// The partition of an encoded key: xxh3 with a fixed seed, never a per-process hasher.
pub fn partition_of(encoded_key: &[u8], partitions: u32) -> u32 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(encoded_key, PARTITION_SEED);
    // Multiply-shift maps the hash onto 0..partitions without a division.
    ((u128::from(h) * u128::from(partitions)) >> 64) as u32
}

/// The 128-bit identity of an (ID space, ID) pair, used as the in-memory index key.
pub fn id_hash(dpid: Dpid, id: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(id, PARTITION_SEED ^ u64::from(dpid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip_keeps_leading_zeros() {
        let text = b"00000000000000000000000000000000000042";
        let u = Uuid::parse(text).unwrap();
        assert_eq!(u.to_string().as_bytes(), text);
        assert_eq!(
            Uuid::parse(b"99999999999999999999999999999999999999")
                .unwrap()
                .to_string()
                .len(),
            38
        );
        assert_eq!(
            Uuid::parse(b"12345678901234567890123456789012345678"),
            Some(Uuid(12345678901234567890123456789012345678))
        );
        assert_eq!(Uuid::parse(b"1234567890123456789x123456789012345678"), None);
        assert_eq!(Uuid::parse(b"123456789012345678x0123456789012345678"), None);
    }

    /// The digit-by-digit definition [`Uuid::parse`] must agree with.
    fn parse_plainly(bytes: &[u8]) -> Option<Uuid> {
        if bytes.len() != 38 || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(Uuid(
            bytes.iter().fold(0, |v, &b| v * 10 + u128::from(b - b'0')),
        ))
    }

    proptest::proptest! {
        #[test]
        fn uuid_parse_agrees_with_the_plain_definition(
            digits in proptest::collection::vec(b'0'..=b'9', 38),
            bad in proptest::option::of((0usize..38, proptest::num::u8::ANY)),
        ) {
            let mut text = digits;
            if let Some((at, byte)) = bad {
                text[at] = byte;
            }
            proptest::prop_assert_eq!(Uuid::parse(&text), parse_plainly(&text));
        }

        #[test]
        fn uuid_display_is_the_zero_padded_value(v in proptest::num::u128::ANY, shift in 0u32..128) {
            // Small and large values alike, 39-digit ones (not UUIDs) included.
            let v = v >> shift;
            proptest::prop_assert_eq!(Uuid(v).to_string(), format!("{v:038}"));
        }
    }

    #[test]
    fn uuid_display_at_the_edges() {
        let max = 10u128.pow(38) - 1;
        for v in [
            0,
            1,
            10u128.pow(19) - 1,
            10u128.pow(19),
            max,
            max + 1,
            u128::MAX,
        ] {
            assert_eq!(Uuid(v).to_string(), format!("{v:038}"));
        }
        assert_eq!(Uuid(max + 1).digits(), None);
    }

    #[test]
    fn eight_digits_rejects_every_non_digit_byte_in_every_position() {
        for at in 0..8 {
            for byte in 0..=255u8 {
                let mut word = *b"12345678";
                word[at] = byte;
                let want = byte
                    .is_ascii_digit()
                    .then(|| std::str::from_utf8(&word).unwrap().parse().unwrap());
                assert_eq!(eight_digits(&word), want, "{word:?}");
            }
        }
    }

    #[test]
    fn uuid_rejects_wrong_length_and_letters() {
        assert!(Uuid::parse(b"123").is_none());
        assert!(Uuid::parse(b"5976755918126206006027887090108709825a").is_none());
        assert!(Uuid::parse(b"597675591812620600602788709010870982520").is_none());
    }

    #[test]
    fn device_formats() {
        assert!(DeviceFormat::LowerUuid.accepts(b"e4fe9bde-caa0-47b6-908d-ffba3fa184f2"));
        assert!(!DeviceFormat::LowerUuid.accepts(b"E4FE9BDE-CAA0-47B6-908D-FFBA3FA184F2"));
        assert!(DeviceFormat::UpperUuid.accepts(b"AEBE52E7-03EE-455A-B3C4-E57283966239"));
        assert!(!DeviceFormat::UpperUuid.accepts(b"aebe52e7-03ee-455a-b3c4-e57283966239"));
        assert!(!DeviceFormat::UpperUuid.accepts(b"AEBE52E703EE455AB3C4E57283966239"));
        assert!(DeviceFormat::Alphanumeric.accepts(b"7XCBNROQJQPYW"));
        assert!(!DeviceFormat::Alphanumeric.accepts(b"7XCB-NROQ"));
        assert!(!DeviceFormat::Alphanumeric.accepts(b""));
    }

    #[test]
    fn key_encoding_round_trips_and_orders() {
        let keys = [
            ProfileKey::Uuid(Uuid(7)),
            ProfileKey::Uuid(Uuid(1 << 100)),
            ProfileKey::Device(20914, b"e4fe".as_slice().into()),
            ProfileKey::Customer(21, b"abc".as_slice().into()),
        ];
        for k in &keys {
            assert_eq!(ProfileKey::decode(&k.encode()).as_ref(), Some(k));
        }
        let mut by_bytes = keys.to_vec();
        by_bytes.sort_by_key(|k| k.encode());
        let mut by_ord = keys.to_vec();
        by_ord.sort();
        assert_eq!(by_bytes, by_ord);
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        let key = ProfileKey::Uuid(Uuid(42)).encode();
        let p = partition_of(&key, 64);
        assert!(p < 64);
        assert_eq!(p, partition_of(&key, 64));
    }
}
