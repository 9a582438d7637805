//! Property tests of the line and item grammar through the public API (`segmill::parse`).

use proptest::prelude::*;
use segmill::parse::{Item, LineKind, items, lines, parse_line};

/// Bytes that matter to the grammar, mixed with arbitrary ones so that every branch is reached.
fn grammar_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"\t\r\n ,\"=:-01259d_sicun".to_vec()),
        1 => any::<u8>(),
    ]
}

fn grammar_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(grammar_byte(), 0..max)
}

/// An owned copy of an [`Item`], to compare against what a generator wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Want {
    Realize(u32),
    Remove(u32),
    Signal(String, String),
    Ic(String),
}

fn owned(item: Item<'_>) -> Option<Want> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    Some(match item {
        Item::Realize(id) => Want::Realize(id),
        Item::Remove(id) => Want::Remove(id),
        Item::Signal { key, value } => Want::Signal(text(key)?, text(value)?),
        Item::Ic(value) => Want::Ic(text(value)?),
        Item::Malformed(_) => return None,
    })
}

fn spaces() -> impl Strategy<Value = String> {
    " {0,2}"
}

/// `d_sid=N` in its accepted spellings.
fn realize() -> impl Strategy<Value = (String, Want)> {
    (any::<u32>(), 0..4u8, spaces(), spaces()).prop_map(|(id, form, a, b)| {
        let text = match form {
            0 => format!("d_sid{a}={b}{id}"),
            1 => format!("d_sid{a}={b}\"{id}\""),
            2 => format!("\"d_sid\"{a}={b}{id}"),
            _ => format!("-d_sid{a}={b}{id:010}"),
        };
        (text, Want::Realize(id))
    })
}

/// `d_unsid=N`, `N:0` and `N:-1`.
fn remove() -> impl Strategy<Value = (String, Want)> {
    (any::<u32>(), 0..4u8, spaces(), spaces()).prop_map(|(id, form, a, b)| {
        let text = match form {
            0 => format!("d_unsid{a}={b}{id}"),
            1 => format!("\"d_unsid\"{a}={b}\"{id}\""),
            2 => format!("{id}:0"),
            _ => format!("{id}:-1"),
        };
        (text, Want::Remove(id))
    })
}

/// `KEY=VALUE` with optional quotes and dash.
fn signal() -> impl Strategy<Value = (String, Want)> {
    let key = "[a-zA-Z_][a-zA-Z0-9_.]{0,10}".prop_filter("reserved key", |k| {
        !matches!(k.as_str(), "d_sid" | "d_unsid" | "ic")
    });
    let bare_value = "([a-zA-Z0-9_.|:-]([a-zA-Z0-9 _.|:=-]{0,10}[a-zA-Z0-9_.|:=-])?)?";
    let quoted_value = "[a-zA-Z0-9 ,=_.|:-]{0,12}";
    (
        key,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            bare_value.prop_map(|v| (v.clone(), v)),
            quoted_value.prop_map(|v| (format!("\"{v}\""), v)),
        ],
        spaces(),
        spaces(),
    )
        .prop_map(|(key, quote_key, dash, (value_text, value), a, b)| {
            let dashed = if dash { format!("-{key}") } else { key.clone() };
            let key_text = if quote_key {
                format!("\"{dashed}\"")
            } else {
                dashed
            };
            (
                format!("{key_text}{a}={b}{value_text}"),
                Want::Signal(key, value),
            )
        })
}

/// `ic=V`, bare `V` and bare `"V"`.
fn ic() -> impl Strategy<Value = (String, Want)> {
    prop_oneof![
        ("[a-zA-Z0-9_.|:-]{1,12}", spaces())
            .prop_map(|(v, a)| (format!("ic{a}={a}{v}"), Want::Ic(v))),
        "[a-zA-Z][a-zA-Z0-9_.|-]{0,10}".prop_map(|v| (v.clone(), Want::Ic(v))),
        "[0-9]{1,12}".prop_map(|v| (v.clone(), Want::Ic(v))),
        "[a-zA-Z0-9 ,=:_.-]{1,12}".prop_map(|v| (format!("\"{v}\""), Want::Ic(v))),
    ]
}

fn well_formed_item() -> impl Strategy<Value = (String, Want)> {
    prop_oneof![realize(), remove(), signal(), ic()]
}

proptest! {
    #[test]
    fn nothing_panics(chunk in grammar_bytes(400), first in 0..u64::MAX / 2, odc in any::<bool>()) {
        for (_, line) in lines(&chunk, first) {
            if let LineKind::Record(record) = parse_line(line, odc) {
                for item in record.items() {
                    let _ = item;
                }
            }
            for item in items(line) {
                let _ = item;
            }
        }
    }

    #[test]
    fn lines_reassemble_the_chunk(chunk in grammar_bytes(400), first in 0..u64::MAX / 2) {
        let got: Vec<_> = lines(&chunk, first).collect();
        let mut rebuilt = Vec::with_capacity(chunk.len() + 1);
        for (i, (number, line)) in got.iter().enumerate() {
            prop_assert_eq!(*number, first + i as u64);
            prop_assert!(!line.contains(&b'\n'));
            rebuilt.extend_from_slice(line);
            rebuilt.push(b'\n');
        }
        // Only the last line may lack its terminator.
        if !chunk.ends_with(b"\n") && !chunk.is_empty() {
            prop_assert_eq!(rebuilt.pop(), Some(b'\n'));
        }
        prop_assert_eq!(rebuilt, chunk);
    }

    #[test]
    fn records_are_trimmed_and_tab_free(line in grammar_bytes(200), odc in any::<bool>()) {
        let line: Vec<u8> = line.into_iter().filter(|&b| b != b'\n').collect();
        if let LineKind::Record(record) = parse_line(&line, odc) {
            prop_assert!(!record.id.is_empty());
            prop_assert!(!record.id.starts_with(b" ") && !record.id.ends_with(b" "));
            prop_assert!(!record.id.contains(&b'\t') && !record.items.contains(&b'\t'));
            prop_assert_eq!(record.id_type.is_some(), odc);
            if let Some(id_type) = record.id_type {
                prop_assert!(!id_type.is_empty() && !id_type.contains(&b'\t'));
            }
        }
    }

    #[test]
    fn well_formed_items_parse_back(
        generated in prop::collection::vec((well_formed_item(), spaces(), spaces(), 0..3usize), 0..12),
        id in "[A-Za-z0-9]{1,20}",
        crlf in any::<bool>(),
    ) {
        let mut text = String::new();
        let mut want = Vec::new();
        for (i, ((item, expected), before, after, empties)) in generated.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            for _ in 0..empties {
                text.push_str(" ,");
            }
            text.push_str(&before);
            text.push_str(&item);
            text.push_str(&after);
            want.push(expected);
        }
        let line = format!("{id}\t{text}{}", if crlf { "\r" } else { "" });
        let LineKind::Record(record) = parse_line(line.as_bytes(), false) else {
            return Err(TestCaseError::fail(format!("not a record: {line:?}")));
        };
        prop_assert_eq!(record.id, id.as_bytes());
        let got: Vec<Option<Want>> = record.items().map(owned).collect();
        let want: Vec<Option<Want>> = want.into_iter().map(Some).collect();
        prop_assert_eq!(got, want, "line {:?}", line);
    }
}
